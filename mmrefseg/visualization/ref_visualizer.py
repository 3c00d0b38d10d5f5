# Copyright (c) mmrefseg contributors. All rights reserved.
"""``RefSegLocalVisualizer``: the picture of one referring prediction.

One row per sentence, panels of the image's own size side by side (the view of the
paper's Figs. 5-7)::

    [ ground truth ] [ prediction + sentence ] [ prior 1 ] ... [ prior N_l ]

- *ground truth* (only with ``draw_gt`` and a ``gt_sem_seg``): GT mask in green.
- *prediction*: ``pred_sem_seg`` in red over the image, the sentence written on top.
- *prior l*: ``mask_priors[l]`` (foreground probability of the LQPG layer-l mask prior,
  already at the original resolution, docs/interfaces.md "Model") as a JET heat map
  blended with the image. Probabilities are drawn on the absolute [0, 1] scale, so the
  layers are comparable (``normalize_priors=True`` stretches each to its own min-max).
  The model computes the priors only on request (``draw_priors`` says that this
  visualizer wants them; see its docstring for who asks the model).

So a row is ``H × (n_panels·W) × 3`` with ``n_panels = [1] + 1 + N_l``; rows stack
vertically. Used by mmseg's ``SegVisualizationHook`` (``tools/test.py --show-dir``) through
:meth:`add_datasample`, and by ``tools/demo.py`` through :meth:`draw_samples`.
"""
import logging
from typing import List, Optional, Sequence

import cv2
import mmcv
import numpy as np
import torch
from mmengine.dist import master_only
from mmengine.logging import print_log
from mmseg.registry import VISUALIZERS
from mmseg.visualization import SegLocalVisualizer

__all__ = ['RefSegLocalVisualizer']


def _to_numpy(data) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        data = data.detach().float().cpu().numpy()
    return np.asarray(data)


@VISUALIZERS.register_module()
class RefSegLocalVisualizer(SegLocalVisualizer):
    """Visualizer for referring segmentation: mask, sentence and mask priors.

    Args:
        name (str): instance name. Defaults to ``'visualizer'``.
        image (np.ndarray, optional): RGB image to start with.
        vis_backends (list[dict], optional): storage backends (e.g. ``LocalVisBackend``).
        save_dir (str, optional): where the backends write.
        alpha (float): opacity of the mask overlays, in (0, 1]. Defaults to 0.5.
        prior_alpha (float): opacity of the prior heat maps over the image. Defaults to 0.6.
        pred_color / gt_color (tuple[int]): RGB colours of the predicted / GT mask.
        normalize_priors (bool): stretch every prior map to its own [min, max] instead of
            the absolute probability scale. Defaults to False.
        draw_priors (bool): draw the prior panels. The model computes the priors only on
            request, so whoever runs it asks for them when this is True:
            ``tools/test.py --show-dir`` sets ``model.test_cfg.return_priors``,
            ``tools/demo.py`` calls ``inference_model(..., return_priors=True)``.
            Defaults to True.
        draw_text (bool): write the sentence and the panel titles. Defaults to True.
        **kwargs: passed to :class:`mmseg.visualization.SegLocalVisualizer`.
    """

    def __init__(self,
                 name: str = 'visualizer',
                 image: Optional[np.ndarray] = None,
                 vis_backends: Optional[List[dict]] = None,
                 save_dir: Optional[str] = None,
                 alpha: float = 0.5,
                 prior_alpha: float = 0.6,
                 pred_color: Sequence[int] = (230, 40, 40),
                 gt_color: Sequence[int] = (40, 200, 40),
                 normalize_priors: bool = False,
                 draw_priors: bool = True,
                 draw_text: bool = True,
                 **kwargs):
        if not 0 < alpha <= 1 or not 0 <= prior_alpha <= 1:
            raise ValueError(f'RefSegLocalVisualizer: alpha={alpha} must be in (0, 1] and '
                             f'prior_alpha={prior_alpha} in [0, 1].')
        super().__init__(name=name, image=image, vis_backends=vis_backends,
                         save_dir=save_dir, alpha=alpha, **kwargs)
        self.prior_alpha = prior_alpha
        self.pred_color = np.array(pred_color, dtype=np.float32)
        self.gt_color = np.array(gt_color, dtype=np.float32)
        self.normalize_priors = normalize_priors
        self.draw_priors = draw_priors
        self.draw_text = draw_text
        self._warned_no_priors = False

    # ------------------------------------------------------------------ panels
    def _overlay(self, image: np.ndarray, mask, color: np.ndarray) -> np.ndarray:
        """Blend ``color`` into ``image`` (H×W×3 uint8 RGB) where ``mask`` (H×W) is 1."""
        mask = _to_numpy(mask)
        mask = mask.reshape(mask.shape[-2:]) > 0
        if mask.shape != image.shape[:2]:  # e.g. a GT kept at the resized input size
            mask = cv2.resize(mask.astype(np.uint8), image.shape[1::-1],
                              interpolation=cv2.INTER_NEAREST) > 0
        out = image.astype(np.float32)
        out[mask] = out[mask] * (1 - self.alpha) + color * self.alpha
        out = out.astype(np.uint8)
        # outline, so the mask border stays visible on similar colours
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color),
                         max(1, min(image.shape[:2]) // 200))
        return out

    def _heatmap(self, image: np.ndarray, prob) -> np.ndarray:
        """JET heat map of a probability map ``prob`` (H×W in [0, 1]) over ``image``."""
        prob = _to_numpy(prob).astype(np.float32)
        if prob.shape != image.shape[:2]:
            prob = cv2.resize(prob, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        if self.normalize_priors:
            lo, hi = float(prob.min()), float(prob.max())
            prob = (prob - lo) / (hi - lo) if hi > lo else np.zeros_like(prob)
        heat = cv2.applyColorMap(np.clip(prob * 255, 0, 255).astype(np.uint8),
                                 cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
        out = image.astype(np.float32) * (1 - self.prior_alpha) + heat * self.prior_alpha
        return out.astype(np.uint8)

    def _caption(self, panel: np.ndarray, text: str, max_rows: Optional[int] = None):
        """Write ``text`` (word-wrapped) on a dark band at the top of ``panel``."""
        if not self.draw_text or not text:
            return panel
        h, w = panel.shape[:2]
        font = cv2.FONT_HERSHEY_SIMPLEX
        scale = max(0.35, min(w, h) / 700)
        thick = 1 if scale < 0.8 else 2
        line_h = cv2.getTextSize('Ag', font, scale, thick)[0][1] + int(10 * scale) + 4
        lines, cur = [], ''
        for word in text.split():
            cand = f'{cur} {word}'.strip()
            if cur and cv2.getTextSize(cand, font, scale, thick)[0][0] > w - 8:
                lines.append(cur)
                cur = word
            else:
                cur = cand
        if cur:
            lines.append(cur)
        max_rows = max_rows or max(1, (h // 2) // line_h)
        if len(lines) > max_rows:
            lines = lines[:max_rows]
            lines[-1] = lines[-1] + ' ...'
        band = min(h, len(lines) * line_h + 4)
        panel[:band] = (panel[:band].astype(np.float32) * 0.35).astype(np.uint8)
        for i, line in enumerate(lines):
            cv2.putText(panel, line, (4, (i + 1) * line_h - 4), font, scale,
                        (255, 255, 255), thick, cv2.LINE_AA)
        return panel

    def draw_ref_sample(self,
                        image: np.ndarray,
                        data_sample,
                        draw_gt: bool = True,
                        draw_pred: bool = True,
                        text: Optional[str] = None) -> np.ndarray:
        """Draw one row for one sentence.

        Args:
            image (np.ndarray): H×W×3 uint8 RGB image at the original resolution.
            data_sample (SegDataSample): with ``pred_sem_seg`` (1×H×W), optionally
                ``gt_sem_seg`` and ``mask_priors`` (N_l×H×W), and ``text`` in its metainfo.
            draw_gt / draw_pred (bool): draw the GT / prediction (+ prior) panels.
            text (str, optional): the sentence; defaults to ``data_sample.text``.

        Returns:
            np.ndarray: H × (n_panels·W) × 3 uint8 RGB.
        """
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError('RefSegLocalVisualizer: image must be an H×W×3 uint8 RGB array, '
                             f'got {type(image).__name__} of shape '
                             f'{getattr(image, "shape", None)}.')
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if text is None:
            text = data_sample.metainfo.get('text', '') if data_sample is not None else ''
        panels = []
        if data_sample is not None and draw_gt and 'gt_sem_seg' in data_sample:
            panels.append(self._caption(
                self._overlay(image, data_sample.gt_sem_seg.data, self.gt_color),
                'ground truth'))
        if data_sample is not None and draw_pred and 'pred_sem_seg' in data_sample:
            panels.append(self._caption(
                self._overlay(image, data_sample.pred_sem_seg.data, self.pred_color), text))
            if self.draw_priors and 'mask_priors' not in data_sample:
                self._warn_no_priors()
            if self.draw_priors and 'mask_priors' in data_sample:
                priors = data_sample.mask_priors.data
                for layer in range(priors.shape[0]):
                    panels.append(self._caption(
                        self._heatmap(image, priors[layer]), f'prior {layer + 1}',
                        max_rows=1))
        if not panels:  # nothing to draw: the image with its sentence
            panels.append(self._caption(image.copy(), text))
        return np.concatenate(panels, axis=1)

    def _warn_no_priors(self) -> None:
        if not self._warned_no_priors:
            print_log('RefSegLocalVisualizer(draw_priors=True): the data samples carry no '
                      '`mask_priors`. The model computes them only on request: set '
                      'model.test_cfg.return_priors=True (tools/test.py --show-dir does) or '
                      'call inference_model(..., return_priors=True); a head without priors '
                      '(use_lqpg=False) never makes them. Drawing the masks only.',
                      logger='current', level=logging.WARNING)
            self._warned_no_priors = True

    def draw_samples(self, image: np.ndarray, data_samples, draw_gt: bool = True,
                     draw_pred: bool = True) -> np.ndarray:
        """Rows of :meth:`draw_ref_sample` for several sentences of one image, stacked."""
        rows = [self.draw_ref_sample(image, s, draw_gt, draw_pred) for s in data_samples]
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
        drawn = np.concatenate(rows, axis=0)
        self.set_image(drawn)
        return drawn

    @master_only
    def add_datasample(self,
                       name: str,
                       image: np.ndarray,
                       data_sample=None,
                       draw_gt: bool = True,
                       draw_pred: bool = True,
                       show: bool = False,
                       wait_time: float = 0,
                       out_file: Optional[str] = None,
                       step: int = 0,
                       with_labels: Optional[bool] = True) -> None:
        """Draw one sample and save it to the backends (``SegVisualizationHook`` API).

        The sentence id is appended to ``name`` (several sentences share one image, so
        the hook's ``<split>_<image file>`` name alone would overwrite them).
        """
        drawn = self.draw_ref_sample(image, data_sample, draw_gt, draw_pred)
        self.set_image(drawn)
        if data_sample is not None and 'sent_id' in data_sample.metainfo:
            name = f'{name}_sent{data_sample.sent_id}'
        if show:
            self.show(drawn, win_name=name, wait_time=wait_time)
        if out_file is not None:
            mmcv.imwrite(mmcv.rgb2bgr(drawn), out_file)
        else:
            self.add_image(name, drawn, step)
