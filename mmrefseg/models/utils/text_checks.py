# Copyright (c) mmrefseg contributors. All rights reserved.
"""Value checks of token ids and word masks that never stall a GPU.

Reading a tensor's values on the host (``int(t.max())``, ``bool(mask.any())``) makes the
host wait for everything queued on the device: a host–device sync. So the VALUES of the
text inputs are checked only where they are in host memory:

* in :class:`~mmrefseg.models.data_preprocessors.RefSegDataPreProcessor`, on the
  dataloader's CPU tensors, **before** they move to the device (every training, validation,
  test and ``inference_model`` batch goes through it);
* in ``BertTextEncoder`` / ``BSAMSwinTransformer`` themselves, only when they are called
  with CPU tensors (a direct call on a CPU model).

Tensors on an accelerator are not read (shapes are still checked everywhere). A direct
call of those modules on the GPU with bad values therefore gets torch's own error
(``index out of range`` as a CUDA device-side assert for an id ≥ vocab_size) or NaN
features (a sentence without any valid token), which ``NonFiniteLossHook`` stops in
training.

The reads go through NumPy: ``Tensor.numpy()`` refuses device tensors, so these checks
cannot become a device read by accident.
"""
import torch

__all__ = ['check_text_values', 'is_host_tensor']


def _compiling() -> bool:
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and hasattr(compiler, 'is_compiling'):
        return compiler.is_compiling()
    dynamo = getattr(torch, '_dynamo', None)  # torch 2.1
    return bool(dynamo is not None and getattr(dynamo, 'is_compiling', lambda: False)())


def is_host_tensor(t) -> bool:
    """True for a CPU tensor whose values can be read for free (and not while
    ``torch.compile`` traces: a data-dependent ``raise`` would break the graph)."""
    return isinstance(t, torch.Tensor) and t.device.type == 'cpu' and not _compiling()


def check_text_values(ids, mask, vocab_size=None, owner='', what=''):
    """Raise ``ValueError`` for token ids outside ``[0, vocab_size)`` or a sentence whose
    mask has no valid token. Host tensors only; a no-op for device tensors.

    Args:
        ids (Tensor): token ids, Nt or B×Nt (long).
        mask (Tensor): word mask of the same shape (1 = real token).
        vocab_size (int | None): the text encoder's vocabulary size; None = no range check.
        owner (str): who checks (starts the message). Default ''.
        what (str): the sample(s) checked, e.g. ``'data sample 3 (img.jpg, "the man")'``;
            default: the rows of the batch.
    """
    if not (is_host_tensor(ids) and is_host_tensor(mask)):
        return
    ids_np = ids.detach().reshape(-1, ids.shape[-1] if ids.dim() else 1).numpy()
    mask_np = mask.detach().reshape(ids_np.shape).numpy()
    if vocab_size is not None and ids_np.size:
        lo, hi = int(ids_np.min()), int(ids_np.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f'{owner}: token ids must be in [0, {vocab_size}) (vocab_size of the BERT '
                f'config), got [{lo}, {hi}]{" in " + what if what else ""}. The tokenizer '
                f'(TokenizeText) and text_encoder must use the same vocabulary.')
    empty = [i for i, row in enumerate(mask_np) if not row.any()]
    if empty:
        where = what or f'row(s) {empty} of the batch'
        raise ValueError(
            f'{owner}: every sentence needs at least one valid token (text_mask is all zero '
            f'for {where}). Check the sentence and the TokenizeText step of the pipeline.')
