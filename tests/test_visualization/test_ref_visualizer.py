# Copyright (c) mmrefseg contributors. All rights reserved.
"""RefSegLocalVisualizer: panel layout, colours, names, and the SegVisualizationHook path."""
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

import mmrefseg  # noqa: F401
from mmrefseg.visualization import RefSegLocalVisualizer


def _sample(h=40, w=60, n_layers=3, with_gt=True, sent_id=7):
    s = SegDataSample(metainfo=dict(text='the cat on the left', sent_id=sent_id,
                                    ori_shape=(h, w), img_path='x/cat.jpg'))
    pred = torch.zeros(1, h, w, dtype=torch.long)
    pred[:, :h // 2, :w // 2] = 1  # top-left quarter
    s.pred_sem_seg = PixelData(data=pred)
    priors = torch.zeros(n_layers, h, w)
    priors[-1, h // 2:, w // 2:] = 1.0  # last prior: bottom-right quarter is foreground
    s.set_field(PixelData(data=priors), 'mask_priors')
    if with_gt:
        gt = torch.zeros(1, h, w, dtype=torch.long)
        gt[:, h // 2:, :] = 1
        s.gt_sem_seg = PixelData(data=gt)
    return s


def test_layout_pred_and_priors():
    h, w = 40, 60
    img = np.full((h, w, 3), 128, np.uint8)
    vis = RefSegLocalVisualizer(draw_text=False, alpha=1.0, prior_alpha=1.0)
    out = vis.draw_ref_sample(img, _sample(h, w, 3), draw_gt=False)
    assert out.shape == (h, w * (1 + 3), 3) and out.dtype == np.uint8
    # prediction panel: the mask (alpha 1) is the prediction colour, the rest the image
    assert tuple(out[h // 4, w // 4 - 5]) == (230, 40, 40)
    assert tuple(out[3 * h // 4, 3 * w // 4]) == (128, 128, 128)
    # prior panels, JET: probability 0 -> dark blue, 1 -> dark red
    last = out[:, 3 * w:]
    assert last[0, 0, 2] > 100 and last[0, 0, 0] < 50  # blue-ish where p = 0
    assert last[-1, -1, 0] > 100 and last[-1, -1, 2] < 50  # red-ish where p = 1


def test_layout_with_gt_and_text():
    h, w = 40, 60
    img = np.zeros((h, w, 3), np.uint8)
    vis = RefSegLocalVisualizer()
    out = vis.draw_ref_sample(img, _sample(h, w, 2), draw_gt=True)
    assert out.shape == (h, w * 4, 3)
    # the sentence is written (white pixels) at the top of the prediction panel
    assert (out[:15, w:2 * w].min(axis=2) > 180).any()  # white-ish text pixels
    plain = RefSegLocalVisualizer(draw_text=False).draw_ref_sample(img, _sample(h, w, 2))
    assert not (plain[:15, w:2 * w].min(axis=2) > 180).any()


def test_draw_samples_stacks_rows():
    img = np.zeros((30, 20, 3), np.uint8)
    vis = RefSegLocalVisualizer()
    out = vis.draw_samples(img, [_sample(30, 20, 2), _sample(30, 20, 2)], draw_gt=False)
    assert out.shape == (60, 60, 3)
    assert vis.get_image().shape == out.shape


def test_gt_at_other_size_is_resized():
    img = np.zeros((40, 60, 3), np.uint8)
    s = _sample(40, 60, 1, with_gt=False)
    s.gt_sem_seg = PixelData(data=torch.ones(1, 20, 30, dtype=torch.long))
    out = RefSegLocalVisualizer(draw_text=False).draw_ref_sample(img, s)
    assert out.shape == (40, 60 * 3, 3)


def test_no_priors_only_mask():
    img = np.zeros((10, 12, 3), np.uint8)
    s = SegDataSample(metainfo=dict(text='x'))
    s.pred_sem_seg = PixelData(data=torch.zeros(1, 10, 12, dtype=torch.long))
    assert RefSegLocalVisualizer().draw_ref_sample(img, s).shape == (10, 12, 3)


def test_draw_priors_off_and_missing_priors_warn(monkeypatch):
    h, w = 40, 60
    img = np.zeros((h, w, 3), np.uint8)
    vis = RefSegLocalVisualizer(draw_text=False, draw_priors=False)
    assert vis.draw_ref_sample(img, _sample(h, w, 3), draw_gt=False).shape == (h, w, 3)
    # draw_priors=True on a sample the model was not asked priors for: say how to ask, once
    from mmrefseg.visualization import ref_visualizer
    logged = []
    monkeypatch.setattr(ref_visualizer, 'print_log', lambda msg, *a, **k: logged.append(msg))
    vis = RefSegLocalVisualizer(name='vis_priors', draw_text=False)
    s = _sample(h, w, 3)
    del s.mask_priors
    assert vis.draw_ref_sample(img, s, draw_gt=False).shape == (h, w, 3)
    vis.draw_ref_sample(img, s, draw_gt=False)
    assert len(logged) == 1 and 'carry no `mask_priors`' in logged[0]
    assert 'return_priors=True' in logged[0]


def test_bad_inputs():
    with pytest.raises(ValueError, match='alpha'):
        RefSegLocalVisualizer(alpha=0)
    with pytest.raises(ValueError, match='H×W×3'):
        RefSegLocalVisualizer().draw_ref_sample(np.zeros((4, 4)), _sample())


def test_add_datasample_names_by_sentence(tmp_path):
    vis = RefSegLocalVisualizer(name='vis_names', vis_backends=[dict(type='LocalVisBackend')],
                                save_dir=str(tmp_path))
    img = np.zeros((40, 60, 3), np.uint8)
    vis.add_datasample('test_cat.jpg', img, _sample(sent_id=3), step=0)
    vis.add_datasample('test_cat.jpg', img, _sample(sent_id=4), step=0)
    saved = sorted(p.name for p in (tmp_path / 'vis_data' / 'vis_image').iterdir())
    assert saved == ['test_cat.jpg_sent3_0.png', 'test_cat.jpg_sent4_0.png']
    out_file = str(tmp_path / 'one.png')
    vis.add_datasample('x', img, _sample(), draw_gt=False, out_file=out_file)
    import mmcv
    assert mmcv.imread(out_file).shape == (40, 60 * 4, 3)
    assert osp.getsize(out_file) > 0
