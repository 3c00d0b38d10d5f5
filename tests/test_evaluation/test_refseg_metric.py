# Copyright (c) mmrefseg contributors. All rights reserved.
"""RefSegMetric: hand-computed values, both resolutions, per-sample dump, 2-process gloo."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from mmrefseg.evaluation import RefSegMetric

KEYS = ['oIoU', 'mIoU', 'P@0.5', 'P@0.6', 'P@0.7', 'P@0.8', 'P@0.9']
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _mask(*pixels, shape=(4, 4)):
    m = np.zeros(shape, np.int64)
    for y, x in pixels:
        m[y, x] = 1
    return m


SQUARE = [(0, 0), (0, 1), (1, 0), (1, 1)]
# (pred pixels, gt pixels, I, U) on 4×4 images, one sentence each
CASES = [
    ([(0, 0), (0, 1), (0, 2), (0, 3)], SQUARE, 2, 6),  # IoU 1/3
    ([(y, x) for y in range(4) for x in range(4)],) * 2 + (16, 16),  # IoU 1
    ([], [(3, 3), (3, 2), (2, 3)], 0, 3),  # empty prediction: IoU 0
    ([], [], 0, 0),  # empty prediction and ground truth: U = 0 → IoU 0
    (SQUARE, [], 0, 4),  # empty ground truth
    (SQUARE[:3], SQUARE, 3, 4),  # IoU 0.75
    (SQUARE[:2], SQUARE, 2, 4),  # IoU exactly 0.5 counts for P@0.5
]
IOUS = [1 / 3, 1, 0, 0, 0, 0.75, 0.5]
EXPECTED = {
    'oIoU': 100 * 23 / 37,
    'mIoU': 100 * sum(IOUS) / 7,
    'P@0.5': 100 * 3 / 7, 'P@0.6': 100 * 2 / 7, 'P@0.7': 100 * 2 / 7,
    'P@0.8': 100 / 7, 'P@0.9': 100 / 7,
}


def _sample(pred, gt, logits=None, img_shape=None, idx=0, input_pred=None):
    """A predicted sample; ``input_pred`` defaults to ``pred`` when the input size is the
    original size (as RefEncoderDecoder's would be)."""
    s = SegDataSample()
    s.pred_sem_seg = PixelData(data=torch.as_tensor(pred)[None])
    s.gt_sem_seg = PixelData(data=torch.as_tensor(gt)[None])
    if logits is None:  # logits consistent with the prediction
        logits = torch.stack([torch.zeros(pred.shape), torch.as_tensor(pred) * 2. - 1])
    s.seg_logits = PixelData(data=torch.as_tensor(logits, dtype=torch.float32))
    if input_pred is None and (img_shape is None or tuple(img_shape) == pred.shape):
        input_pred = pred
    if input_pred is not None:
        s.input_pred_sem_seg = PixelData(data=torch.as_tensor(input_pred)[None])
    s.set_metainfo(dict(img_shape=img_shape or pred.shape, ori_shape=pred.shape,
                        ref_id=100 + idx, sent_id=200 + idx, ann_id=300 + idx,
                        image_id=400 + idx, text=f'sentence {idx}'))
    return s


def _case_samples():
    return [_sample(_mask(*p), _mask(*g), idx=i) for i, (p, g, _, _) in enumerate(CASES)]


def _evaluate(samples, as_dict=True, **kwargs):
    metric = RefSegMetric(**kwargs)
    metric.process({}, [s.to_dict() if as_dict else s for s in samples])
    return metric, metric.evaluate(len(samples))


@pytest.mark.parametrize('as_dict', [True, False])
def test_hand_computed_values(as_dict):
    metric, res = _evaluate(_case_samples(), as_dict=as_dict)
    assert [(r['I'], r['U']) for r in _records(_case_samples())] == [c[2:] for c in CASES]
    assert list(res) == KEYS + [f'resized/{k}' for k in KEYS]
    for k, v in EXPECTED.items():
        assert res[k] == pytest.approx(v)
        assert res[f'resized/{k}'] == pytest.approx(v)  # img_shape = original size here


def _records(samples):
    metric = RefSegMetric()
    metric.process({}, [s.to_dict() for s in samples])
    return metric.results


def test_resized_gt_resize_modes():
    # 4×4 original, 2×2 model input; the prediction at the input is pixel (0, 0)
    pred = _mask((0, 0), (0, 1), (1, 0))
    gt = _mask((0, 0))
    s = _sample(pred, gt, img_shape=(2, 2), input_pred=_mask((0, 0), shape=(2, 2)))
    _, res = _evaluate([s])
    assert res['oIoU'] == pytest.approx(100 / 3)  # I 1, U 3 at 4×4
    # the GT resized at pixel centres (PIL / LAVT, default) takes pixel (1, 1) = 0 → I 0, U 1
    assert res['resized/oIoU'] == 0.0
    # floor(i * scale) (cv2 / mmcv) keeps pixel (0, 0) → I 1, U 1
    _, res = _evaluate([s], gt_resize_mode='nearest')
    assert res['resized/oIoU'] == pytest.approx(100.)
    _, res = _evaluate([s], resized_eval=False)
    assert list(res) == KEYS


def _tiny_model():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import mmrefseg  # noqa: F401
    init_default_scope('mmseg')
    cfg = Config.fromfile(osp.join(REPO, 'configs/_base_/models/mpg_lqgnet_tiny.py'))
    return MODELS.build(cfg.model).eval()


def test_resized_protocol_hand_computed_where_the_protocols_differ():
    """Logits at a 2×2 input, a 4×4 original image, GT = the top-left 2×2 block.

    Foreground margin m = y1 − y0 at the input: [[1, −4], [−4, −4]].
    - original (bilinear, align_corners=False: output pixel i samples the input at
      (i + 0.5)/2 − 0.5 = −0.25, 0.25, 0.75, 1.25, clamped): m(0,0) = 1,
      m(0,1) = m(1,0) = 0.75·1 + 0.25·(−4) = −0.25, m(1,1) = 0.5625 − 1.75 = −1.1875,
      so the prediction is pixel (0, 0) only: I 1, U 4 → 25 %.
    - resized, at the input: argmax → pixel (0, 0); GT nearest at pixel centres:
      GT_r(i, j) = GT(2i + 1, 2j + 1) → pixel (0, 0): I 1, U 1 → 100 %.
    - the former protocol (original-size logits resized back to 2×2 and argmaxed):
      m'(0,0) = mean(1, −0.25, −0.25, −1.1875) < 0 → background: I 0, U 1 → 0 %.
    """
    model = _tiny_model()
    logits = torch.stack([torch.zeros(2, 2), torch.tensor([[1., -4.], [-4., -4.]])])[None]
    s = SegDataSample(metainfo=dict(img_shape=(2, 2), ori_shape=(4, 4), pad_shape=(2, 2),
                                    ref_id=1, sent_id=2, ann_id=3, image_id=4, text='x'))
    s.gt_sem_seg = PixelData(data=torch.as_tensor(_mask(*SQUARE))[None])
    out = model.postprocess_result(logits, [s])[0]
    assert out.pred_sem_seg.data[0].tolist() == _mask((0, 0)).tolist()
    assert out.input_pred_sem_seg.data[0].tolist() == [[1, 0], [0, 0]]
    expect_m = torch.tensor([[1., -.25], [-.25, -1.1875]])
    torch.testing.assert_close(out.seg_logits.data[1, :2, :2], expect_m)
    _, res = _evaluate([out])
    assert res['oIoU'] == pytest.approx(25.) and res['resized/oIoU'] == pytest.approx(100.)
    # the former protocol, from the original-size logits (the fallback for other models)
    del out.input_pred_sem_seg
    with pytest.warns(UserWarning, match='no "input_pred_sem_seg"'):
        metric, res = _evaluate([out])
    assert res['resized/oIoU'] == 0.0
    assert 'approximation' in metric.last_protocol['resized']


def test_without_input_prediction_falls_back_to_logits_then_prediction():
    s = _case_samples()[0]
    del s.input_pred_sem_seg
    with pytest.warns(UserWarning, match='resizes "seg_logits"'):
        _, res = _evaluate([s])
    assert res['resized/oIoU'] == pytest.approx(100 / 3)
    del s.seg_logits
    with pytest.warns(UserWarning, match='resizes "pred_sem_seg"'):
        _, res = _evaluate([s])
    assert res['resized/oIoU'] == pytest.approx(100 / 3)


def test_protocol_and_records_for_reports():
    metric, _ = _evaluate(_case_samples())
    assert metric.last_protocol['input_size'] == '4×4'
    assert "argmax of the logits at the network input" in metric.last_protocol['resized']
    assert 'nearest-exact' in metric.last_protocol['resized']
    assert [r['sent_id'] for r in metric.last_records] == list(range(200, 207))
    assert set(metric.last_records[0]) == {'ref_id', 'sent_id', 'ann_id', 'image_id', 'text',
                                           'I', 'U', 'IoU', 'I_r', 'U_r', 'IoU_r'}


def test_out_file(tmp_path):
    out = str(tmp_path / 'sub' / 'per_sample.json')
    _, res = _evaluate(_case_samples(), out_file=out)
    with open(out) as f:
        dump = json.load(f)
    assert set(dump) == {'metrics', 'protocol', 'samples'}
    assert dump['metrics'] == pytest.approx(res)
    first = dump['samples'][0]
    assert first == dict(ref_id=100, sent_id=200, ann_id=300, image_id=400,
                         text='sentence 0', I=2, U=6, IoU=pytest.approx(1 / 3), I_r=2,
                         U_r=6, IoU_r=pytest.approx(1 / 3))
    assert [d['IoU'] for d in dump['samples']] == pytest.approx(IOUS)


def test_errors():
    with pytest.raises(ValueError, match=r'iou_thrs must lie in \(0, 1\]'):
        RefSegMetric(iou_thrs=(50,))
    s = _sample(_mask(), np.zeros((5, 4), np.int64))
    with pytest.raises(ValueError, match=r'prediction \(4, 4\) and ground truth \(5, 4\).*'
                                         r'after Resize'):
        RefSegMetric().process({}, [s.to_dict()])
    with pytest.raises(KeyError, match='needs "pred_sem_seg" and "gt_sem_seg"'):
        RefSegMetric().process({}, [dict(gt_sem_seg=dict(data=torch.zeros(1, 2, 2)))])


def test_log_table(capsys):
    metric = RefSegMetric()
    metric.process({}, [s.to_dict() for s in _case_samples()])
    table = metric._table(*[metric.compute_metrics(metric.results)] * 2, n=7)
    assert 'resized (input 4×4)' in table and '62.16' in table


# ---------------------------------------------------------------- distributed
def _dist_worker(rank, port, out_dir):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=2)
    try:
        samples = _case_samples()
        # mmengine's DefaultSampler: pad 7 → 8 by repeating index 0, rank r takes r::2
        indices = (list(range(7)) + [0])[rank::2]
        metric = RefSegMetric(out_file=osp.join(out_dir, 'per_sample.json'))
        for i in indices:  # one sample per batch
            metric.process({}, [samples[i].to_dict()])
        res = metric.evaluate(7)
        with open(osp.join(out_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(res, f)
        # torch 2.1's gloo: destroy_process_group on the broadcast's source rank hangs once
        # the other rank has left (evaluate() ends in broadcast_object_list); leave together
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_two_process_gloo_equals_one_process(tmp_path, free_port):
    mp.spawn(_dist_worker, args=(free_port, str(tmp_path)), nprocs=2, join=True)
    _, single = _evaluate(_case_samples())
    for rank in (0, 1):  # evaluate() broadcasts the metrics to every rank
        with open(tmp_path / f'rank{rank}.json') as f:
            assert json.load(f) == pytest.approx(single)
    with open(tmp_path / 'per_sample.json') as f:
        assert [d['sent_id'] for d in json.load(f)['samples']] == list(range(200, 207))


def test_with_tiny_refer_samples():
    """Samples straight from the tiny_refer pipeline, predictions = ground truth."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmrefseg.datasets import RefCOCODataset
    init_default_scope('mmseg')
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    cfg = Config.fromfile(osp.join(repo, 'configs/_base_/datasets/tiny_refer.py'))
    kwargs = {k: v for k, v in cfg.test_dataloader.dataset.items() if k != 'type'}
    kwargs['data_root'] = osp.join(repo, kwargs['data_root'])  # relative to the repository
    kwargs['pipeline'][1]['scale'] = (64, 64)
    ds = RefCOCODataset(**kwargs)
    samples = []
    for i in range(len(ds)):
        s = ds[i]['data_samples']
        gt = s.gt_sem_seg.data[0]
        s.pred_sem_seg = PixelData(data=gt[None].clone())
        s.seg_logits = PixelData(data=torch.stack([1. - gt, gt.float()]).float())
        samples.append(s)
    _, res = _evaluate(samples)
    assert res['oIoU'] == 100. and res['P@0.9'] == 100.
    assert 90. < res['resized/oIoU'] <= 100.
    records = _records(samples)
    assert [r['sent_id'] for r in records] == [6, 7, 8, 9]
    assert records[0]['text'] == 'man with the black hat'
