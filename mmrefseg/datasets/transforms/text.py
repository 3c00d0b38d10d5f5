# Copyright (c) mmrefseg contributors. All rights reserved.
"""Sentence → BERT WordPiece ids (``[CLS] … [SEP]``, truncated and zero-padded).

The paper (§4.1) caps sentences at 30 tokens. We truncate with the tokenizer (``[SEP]``
stays the last real token); LAVT instead cuts the encoded ids at ``max_length``, which
drops ``[SEP]`` from sentences longer than ``max_length - 2`` word pieces.

The sentence is first NFKC-normalised (``normalization='NFKC'``): full-width Latin
(``'ＴＨＥ　ＣＡＴ'``, typed with a CJK input method) becomes ``'the cat'`` instead of
``[UNK] [UNK]``, ligatures are split (``'ﬁ'`` → ``'fi'``), ``'…'`` becomes ``'...'``. BERT's
own basic tokenizer does not fold these. On ASCII text (the RefCOCO sentences) it changes
nothing.
"""
import logging
import os.path as osp
import unicodedata
from typing import Dict, Optional

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.logging import print_log

from mmseg.registry import TRANSFORMS

#: vocabularies shipped with the package, usable offline by name.
BUNDLED_VOCABS = {
    'bert-base-uncased': osp.join(osp.dirname(__file__), 'vocab', 'bert-base-uncased.txt'),
}
_CACHE: Dict[tuple, object] = {}


def build_tokenizer(tokenizer: str = 'bert-base-uncased',
                    do_lower_case: Optional[bool] = None):
    """A HF BERT tokenizer from a name, a local directory or a ``vocab.txt`` file.

    Resolution order: an existing file (a WordPiece vocab) → an existing directory
    (``AutoTokenizer.from_pretrained(dir)``) → a bundled name (``'bert-base-uncased'``,
    offline) → a name in the local HF cache (``local_files_only=True``; nothing is
    downloaded). Instances are cached per process.

    ``do_lower_case``: None keeps the tokenizer's own setting (a directory's or cached
    tokenizer's saved config; lower-casing for a vocab file or the bundled uncased vocab);
    True / False is applied in every case (a tokenizer without the option raises).
    """
    key = (tokenizer, do_lower_case)
    if key in _CACHE:
        return _CACHE[key]
    from transformers import AutoTokenizer
    try:
        from transformers import BertTokenizerFast as Bert
    except ImportError:  # pragma: no cover - tokenizers missing
        from transformers import BertTokenizer as Bert
    path = osp.expanduser(str(tokenizer))
    lower = {} if do_lower_case is None else dict(do_lower_case=bool(do_lower_case))
    if osp.isfile(path):
        tok = Bert(vocab_file=path, **(lower or dict(do_lower_case=True)))
    elif osp.isdir(path):
        tok = AutoTokenizer.from_pretrained(path, **lower)
    elif tokenizer in BUNDLED_VOCABS:
        tok = Bert(vocab_file=BUNDLED_VOCABS[tokenizer], **(lower or dict(do_lower_case=True)))
    else:
        try:
            tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True, **lower)
        except (OSError, ValueError) as e:  # not in the cache / not a tokenizer name
            raise ValueError(
                f'TokenizeText: cannot load tokenizer {tokenizer!r}: it is not a file, not a '
                f'directory, not bundled ({", ".join(BUNDLED_VOCABS)}) and not in the local '
                'HuggingFace cache. Pass a local vocab.txt / tokenizer directory.') from e
    if lower and getattr(tok, 'do_lower_case', None) != lower['do_lower_case']:
        raise ValueError(f'TokenizeText: do_lower_case={do_lower_case} cannot be applied to '
                         f'the {type(tok).__name__} of {tokenizer!r} (it has no such '
                         'option); leave do_lower_case=None.')
    _CACHE[key] = tok
    return tok


@TRANSFORMS.register_module()
class TokenizeText(BaseTransform):
    """Tokenize ``results['text']`` for the BERT text encoder.

    Required keys: ``text``. Added keys: ``text_ids``, ``text_mask`` (int64 arrays of
    length ``max_length``: ``[CLS] … [SEP]`` then ``[PAD]`` = 0; mask 1 on real tokens).

    Args:
        tokenizer (str): ``'bert-base-uncased'`` (bundled vocab, offline), a local
            ``vocab.txt``, a tokenizer directory or a name in the local HF cache.
        max_length (int): token budget including ``[CLS]``/``[SEP]``. Defaults to 30
            (paper §4.1).
        do_lower_case (bool, optional): lower-case (and strip accents) before WordPiece.
            Defaults to None: the tokenizer's own setting (True for a vocab file and the
            bundled uncased vocab, the saved config for a directory). True / False is
            applied to a vocab file, the bundled vocab and a BERT tokenizer directory.
        normalization (str, optional): Unicode normal form applied to the sentence first
            (``'NFKC'``, default; ``'NFC'``, ``'NFD'``, ``'NFKD'``), None = off.
    """

    def __init__(self, tokenizer: str = 'bert-base-uncased', max_length: int = 30,
                 do_lower_case: Optional[bool] = None,
                 normalization: Optional[str] = 'NFKC') -> None:
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f'TokenizeText: max_length must be an int >= 2 ([CLS] and '
                             f'[SEP]), got {max_length!r}.')
        if normalization not in (None, 'NFC', 'NFD', 'NFKC', 'NFKD'):
            raise ValueError(f'TokenizeText: normalization must be None or one of NFC, NFD, '
                             f'NFKC, NFKD; got {normalization!r}.')
        self.tokenizer = tokenizer
        self.normalization = normalization
        self.max_length = max_length
        self.do_lower_case = do_lower_case
        self.num_truncated = 0  # sentences cut to max_length (in this process)
        self._tok = build_tokenizer(tokenizer, do_lower_case)

    def transform(self, results: dict) -> dict:
        text = results.get('text')
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f'TokenizeText: empty or missing sentence {text!r} '
                             f'(ref_id {results.get("ref_id")}, sent_id '
                             f'{results.get("sent_id")}). Every item needs a non-empty "text".')
        if self.normalization:
            text = unicodedata.normalize(self.normalization, text)
        enc = self._tok(text, max_length=self.max_length, padding='max_length',
                        truncation=True)
        if enc['attention_mask'][-1] == 1 and self._too_long(text):
            self.num_truncated += 1
            if self.num_truncated == 1:
                print_log(
                    f'TokenizeText: a sentence longer than max_length={self.max_length} '
                    f'tokens was truncated (ref_id {results.get("ref_id")}, sent_id '
                    f'{results.get("sent_id")}: {text!r}); later ones are only counted.',
                    logger='current', level=logging.WARNING)
        results['text_ids'] = np.asarray(enc['input_ids'], dtype=np.int64)
        results['text_mask'] = np.asarray(enc['attention_mask'], dtype=np.int64)
        return results

    def _too_long(self, text: str) -> bool:
        """Whether ``text`` needs more than ``max_length`` tokens with [CLS]/[SEP]."""
        return len(self._tok(text, truncation=False)['input_ids']) > self.max_length

    def __getstate__(self):  # the HF tokenizer is rebuilt (from the cache) after pickling
        state = self.__dict__.copy()
        state.pop('_tok', None)
        return state

    def __setstate__(self, state):
        state.setdefault('normalization', None)  # pickled before the option existed
        self.__dict__.update(state)
        self._tok = build_tokenizer(self.tokenizer, self.do_lower_case)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(tokenizer={self.tokenizer!r}, '
                f'max_length={self.max_length}, do_lower_case={self.do_lower_case})')
