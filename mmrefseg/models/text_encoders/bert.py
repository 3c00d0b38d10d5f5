# Copyright (c) mmrefseg contributors. All rights reserved.
"""The language encoder of §3.2.1: BERT without its pooling layer.

``L = BERT(text_ids, text_mask)``: word features B×Nt×C_t (the last hidden state) and the
word mask, as in LAVT. The segmentor builds it from a ``text_encoder=dict(...)`` key (mmseg's
``neck`` slot runs after the backbone, so it cannot hold a language model).

The architecture is built in ``__init__`` and the pretrained weights are loaded in
``init_weights`` — mmseg's convention, which mmengine's Runner follows: it calls
``init_weights`` when **training** starts, while ``tools/test.py``, ``init_model`` and the
demo load an mmrefseg checkpoint that already holds every BERT weight. So testing a trained
model never needs the BERT download.

* ``name_or_path='bert-base-uncased'`` (or a local directory written by
  ``save_pretrained``) and ``pretrained=True``: the architecture from that config
  (bert-base-uncased's is built in, offline), and ``init_weights`` copies the weights of
  ``BertModel.from_pretrained(..., add_pooling_layer=False)`` into it. A local directory works
  offline; a hub name needs network access or the HF cache at training start.
* ``pretrained=False``: random weights from ``config`` (a dict of ``BertConfig`` kwargs, or
  a path to a ``config.json`` / a directory holding one), else from ``name_or_path``'s
  config, else bert-base-uncased's (``BertConfig()`` defaults). Fully offline.
* ``name_or_path=None`` with ``pretrained=True``: random weights too, with a warning.

With ``pretrained=False`` ``init_weights`` leaves transformers' initialisation alone, so a
segmentor's ``init_weights`` never re-draws the text encoder.

Speed and memory: ``attn_implementation='sdpa'`` (default) runs BERT's self-attention through
``F.scaled_dot_product_attention`` (transformers' ``BertSdpaSelfAttention``; ``'eager'`` is
the explicit softmax(QKᵀ)V, same weights, same function). The padding mask is handed to
BERT as B×1×Nt, which transformers turns into an additive mask (0 / dtype min) without the
``torch.all(mask == 1)`` test - a host-device sync - that it runs on a B×Nt mask.
On a torch whose SDPA refuses a float mask of another dtype than the query (torch 2.1:
under autocast the additive mask is fp32, the queries bf16/fp16) ``'sdpa'`` falls back to
``'eager'`` with a warning (:func:`sdpa_accepts_mask_of_another_dtype`).
``with_cp=True`` checkpoints every encoder layer (non-reentrant; transformers'
``gradient_checkpointing_enable``).
"""
import functools
import logging
import os.path as osp

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from transformers import BertConfig, BertModel

from mmseg.registry import MODELS

from ..utils import check_text_values


@functools.lru_cache(maxsize=None)
def sdpa_accepts_mask_of_another_dtype() -> bool:
    """True when ``F.scaled_dot_product_attention`` takes a float mask whose dtype is not the
    query's (what transformers' BERT hands it under autocast: an fp32 additive mask, bf16
    queries). torch 2.1 refuses it ("Expected attn_mask dtype to be bool or to match query
    dtype"); later versions take it."""
    q = torch.zeros(1, 1, 1, 8, dtype=torch.bfloat16)
    try:
        F.scaled_dot_product_attention(q, q, q, attn_mask=torch.zeros(1, 1, 1, 1))
    except RuntimeError:
        return False
    return True

__all__ = ['BertTextEncoder', 'BUILTIN_CONFIGS']

#: configs known offline; ``BertConfig()``'s defaults are bert-base-uncased's config.json
BUILTIN_CONFIGS = {'bert-base-uncased': {}, 'google-bert/bert-base-uncased': {}}
#: ``hf_kwargs`` that ``BertConfig.from_pretrained`` understands
_CONFIG_KWARGS = ('cache_dir', 'local_files_only', 'revision', 'token', 'force_download',
                  'proxies')


def _build_config(config):
    """``None`` | dict of BertConfig kwargs | path to config.json / its folder → BertConfig."""
    if config is None or isinstance(config, BertConfig):
        return config
    if isinstance(config, dict):
        return BertConfig(**config)
    if isinstance(config, str):
        path = osp.join(config, 'config.json') if osp.isdir(config) else config
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'BertTextEncoder: config={config!r} is neither a dict of BertConfig '
                f'arguments nor an existing config.json (or a folder holding one).')
        return BertConfig.from_json_file(path)
    raise TypeError(f'BertTextEncoder: config must be None, a dict or a path, got '
                    f'{type(config).__name__}.')


def _load_error(what, name_or_path, err):
    return OSError(
        f'BertTextEncoder could not load the {what} of {name_or_path!r}: {err}\n'
        f'Fix: download it once where you have network access (e.g. `huggingface-cli '
        f'download {name_or_path} --local-dir ./pretrain/{osp.basename(str(name_or_path))}` '
        f'or `BertModel.from_pretrained({name_or_path!r}).save_pretrained(DIR)`) and set '
        f'text_encoder.name_or_path=DIR; or train from random weights with '
        f'text_encoder.pretrained=False and text_encoder.config=<dict | config.json>.')


@MODELS.register_module()
class BertTextEncoder(BaseModule):
    """BERT word encoder (no pooler) registered in mmseg's MODELS.

    Args:
        name_or_path (str | None): hub name or local directory of a BERT checkpoint.
        config (dict | str | None): BertConfig kwargs or path to a config.json. With
            ``pretrained=True`` a dict overrides single fields of the checkpoint's config
            (e.g. ``dict(hidden_dropout_prob=0.)``) and a path replaces it.
        pretrained (bool): load the weights of ``name_or_path``. Default True.
        freeze (bool): freeze the whole encoder (no grad, kept in eval mode). Default False.
        frozen_layers (int): freeze the embeddings and the first ``frozen_layers`` encoder
            layers (0 = train everything, the paper's recipe). Default 0.
        hf_kwargs (dict | None): extra kwargs for ``from_pretrained`` of the weights or
            of the config (e.g. ``local_files_only=True``, ``cache_dir=...``).
        attn_implementation (str): ``'sdpa'`` (fused) or ``'eager'``. Default ``'sdpa'``.
        with_cp (bool): activation checkpointing of every encoder layer (training only).
            Default False.
        init_cfg: must be None: the weights come from ``name_or_path`` with
            ``pretrained=True`` (a hub name or a ``save_pretrained`` folder), or from an
            mmrefseg checkpoint (``load_from`` / ``init_model``).

    Note:
        With ``pretrained=True`` the weights are loaded by :meth:`init_weights` (the Runner
        calls it when training starts); call it yourself when you use the module alone.

    Attributes:
        embed_dims (int): C_t, the hidden size.
        vocab_size (int): token ids must be below it (checked on host tensors only:
            :mod:`mmrefseg.models.utils.text_checks`).

    Shapes: forward(input_ids B×Nt, attention_mask B×Nt) → (L B×Nt×C_t float, mask B×Nt)
    """

    def __init__(self,
                 name_or_path=None,
                 config=None,
                 pretrained=True,
                 freeze=False,
                 frozen_layers=0,
                 hf_kwargs=None,
                 attn_implementation='sdpa',
                 with_cp=False,
                 init_cfg=None):
        if init_cfg is not None:
            raise ValueError(
                f'BertTextEncoder: init_cfg={init_cfg} is not supported; BERT weights come '
                'from name_or_path with pretrained=True (a hub name or a save_pretrained '
                'folder), or from an mmrefseg checkpoint (load_from / init_model).')
        super().__init__(init_cfg=init_cfg)
        if attn_implementation not in ('sdpa', 'eager'):
            raise ValueError(f"BertTextEncoder: attn_implementation must be 'sdpa' or 'eager', "
                             f'got {attn_implementation!r}.')
        self.name_or_path = name_or_path
        self.pretrained = bool(pretrained and name_or_path is not None)
        self.hf_kwargs = dict(hf_kwargs or {})
        if self.pretrained and isinstance(config, dict):
            # overrides of single fields of the checkpoint's own config
            bert_config = self._config_of(name_or_path, self.hf_kwargs)
            for key, value in config.items():
                setattr(bert_config, key, value)
        else:
            bert_config = _build_config(config)
            if bert_config is None and name_or_path is not None:
                bert_config = self._config_of(name_or_path, self.hf_kwargs)
        if bert_config is None:
            bert_config = BertConfig()  # bert-base-uncased
        if pretrained and name_or_path is None:
            print_log(
                'BertTextEncoder: pretrained=True but no name_or_path given; the text '
                'encoder starts from RANDOM weights. Set name_or_path (e.g. '
                '"bert-base-uncased" or a local folder) to load BERT weights.',
                logger='current', level=logging.WARNING)
        if attn_implementation == 'sdpa' and not sdpa_accepts_mask_of_another_dtype():
            print_log(
                f'BertTextEncoder: torch {torch.__version__} SDPA refuses the fp32 padding '
                'mask under autocast; using attn_implementation=\'eager\' (same function).',
                logger='current', level=logging.WARNING)
            attn_implementation = 'eager'
        self.attn_implementation = attn_implementation
        bert_config._attn_implementation = attn_implementation
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        self.with_cp = bool(with_cp)
        if self.with_cp:
            self.bert.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=dict(use_reentrant=False))
        self.embed_dims = self.bert.config.hidden_size
        self.vocab_size = self.bert.config.vocab_size
        num_layers = self.bert.config.num_hidden_layers
        if not 0 <= frozen_layers <= num_layers:
            raise ValueError(f'BertTextEncoder: frozen_layers={frozen_layers} must be in '
                             f'[0, {num_layers}] (the model has {num_layers} layers).')
        self.freeze = freeze
        self.frozen_layers = frozen_layers
        self._freeze()

    def _frozen_modules(self):
        if self.freeze:
            return [self.bert]
        if self.frozen_layers > 0:
            return [self.bert.embeddings] + list(self.bert.encoder.layer[:self.frozen_layers])
        return []

    def _freeze(self):
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        """Switch mode, keeping frozen parts in eval mode (no dropout)."""
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()
        return self

    @staticmethod
    def _config_of(name_or_path, hf_kwargs):
        """The BertConfig of a local folder, a built-in name, or a hub name (cache/network)."""
        if not osp.isdir(str(name_or_path)) and name_or_path in BUILTIN_CONFIGS:
            return BertConfig(**BUILTIN_CONFIGS[name_or_path])
        kwargs = {k: v for k, v in hf_kwargs.items() if k in _CONFIG_KWARGS}
        try:
            return BertConfig.from_pretrained(name_or_path, **kwargs)
        except (OSError, ValueError) as err:
            raise _load_error('config', name_or_path, err) from err

    def init_weights(self):
        """Load the pretrained weights (``pretrained=True``), in place, else keep
        transformers' initialisation. Called by the Runner when training starts."""
        if self.pretrained and not self._is_init:
            try:
                loaded = BertModel.from_pretrained(
                    self.name_or_path, config=self.bert.config, add_pooling_layer=False,
                    **self.hf_kwargs)
            except Exception as err:  # transformers raises OSError/ValueError/AttributeError
                # when files are missing, depending on the version and what is cached
                raise _load_error('weights', self.name_or_path, err) from err
            # in place: the optimizer may already hold these parameters
            self.bert.load_state_dict(loaded.state_dict())
            print_log(f'BertTextEncoder: loaded pretrained weights of {self.name_or_path}',
                      logger='current')
        self._is_init = True

    def forward(self, input_ids, attention_mask):
        """input_ids B×Nt (long), attention_mask B×Nt (1 = real token) → (B×Nt×C_t, B×Nt)."""
        if input_ids.dim() != 2 or tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f'BertTextEncoder: input_ids and attention_mask must both be B×Nt, got '
                f'{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}.')
        # values: read on the host only (RefSegDataPreProcessor checked them before the
        # move to the device; reading device values here would stall the GPU)
        check_text_values(input_ids, attention_mask, self.vocab_size, 'BertTextEncoder')
        # B×1×Nt: transformers' SDPA path turns a 2-D mask into the same additive mask,
        # but first asks `torch.all(mask == 1)` on the host (a sync every step); a 3-D
        # mask takes get_extended_attention_mask, which builds it on the device
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask[:, None, :])
        return out.last_hidden_state, attention_mask

