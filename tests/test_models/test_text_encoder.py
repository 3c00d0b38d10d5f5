# Copyright (c) mmrefseg contributors. All rights reserved.
"""BertTextEncoder: building from a config / a saved folder, outputs, masking, freezing."""
import json
import os.path as osp

import pytest
import torch

import mmrefseg  # noqa: F401
from mmrefseg.models.text_encoders import BertTextEncoder
from mmseg.registry import MODELS

TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, vocab_size=200, max_position_embeddings=64)
DATA = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'data')
IDS = torch.tensor([[101, 7, 8, 102, 0, 0], [101, 9, 10, 11, 12, 102]])
MASK = (IDS != 0).long()


def tiny(**kwargs):
    torch.manual_seed(0)
    return BertTextEncoder(config=TINY_BERT, pretrained=False, **kwargs)


def test_forward_shapes_and_registry():
    enc = MODELS.build(dict(type='BertTextEncoder', config=TINY_BERT, pretrained=False)).eval()
    feats, mask = enc(IDS, MASK)
    assert enc.embed_dims == 32
    assert feats.shape == (2, 6, 32) and feats.dtype == torch.float32
    assert mask is MASK
    assert not hasattr(enc.bert, 'pooler') or enc.bert.pooler is None  # no pooling layer


def test_padding_does_not_change_real_words():
    enc = tiny().eval()
    feats, _ = enc(IDS, MASK)
    ids2 = IDS.clone()
    ids2[0, 4:] = 55  # different ids under the padding mask
    feats2, _ = enc(ids2, MASK)
    torch.testing.assert_close(feats[0, :4], feats2[0, :4], atol=1e-5, rtol=1e-5)


def test_save_pretrained_round_trip(tmp_path):
    enc = tiny().eval()
    enc.bert.save_pretrained(str(tmp_path))
    loaded = BertTextEncoder(name_or_path=str(tmp_path)).eval()  # pretrained=True, offline
    assert not torch.equal(loaded.bert.embeddings.word_embeddings.weight,
                           enc.bert.embeddings.word_embeddings.weight)  # not loaded yet
    param = loaded.bert.embeddings.word_embeddings.weight
    loaded.init_weights()  # the Runner calls this when training starts
    assert loaded.bert.embeddings.word_embeddings.weight is param  # in place (optimizer)
    for a, b in zip(enc(IDS, MASK)[0], loaded(IDS, MASK)[0]):
        torch.testing.assert_close(a, b)
    # a dict config with pretrained=True overrides single fields of the saved config
    drop = BertTextEncoder(name_or_path=str(tmp_path), config=dict(hidden_dropout_prob=0.0))
    drop.init_weights()
    assert drop.bert.config.hidden_dropout_prob == 0.0 and drop.embed_dims == 32
    torch.testing.assert_close(drop.bert.embeddings.word_embeddings.weight,
                               enc.bert.embeddings.word_embeddings.weight)
    # pretrained=False with a folder: its config, random weights
    fresh = BertTextEncoder(name_or_path=str(tmp_path), pretrained=False)
    assert fresh.embed_dims == 32
    assert not torch.equal(fresh.bert.embeddings.word_embeddings.weight,
                           enc.bert.embeddings.word_embeddings.weight)


def test_bert_base_architecture_offline_without_weights():
    """A checkpoint of ours holds the BERT weights: building for test needs no download."""
    from mmrefseg.models.text_encoders.bert import _build_config
    enc = BertTextEncoder(name_or_path='bert-base-uncased')  # no network here
    ref = _build_config(osp.join(DATA, 'bert-base-uncased', 'config.json'))
    for key in ('hidden_size', 'num_hidden_layers', 'num_attention_heads',
                'intermediate_size', 'vocab_size', 'max_position_embeddings',
                'type_vocab_size', 'hidden_act', 'layer_norm_eps'):
        assert getattr(enc.bert.config, key) == getattr(ref, key), key
    with pytest.raises(OSError, match='bert-base-uncased'):
        BertTextEncoder(name_or_path='bert-base-uncased',
                        hf_kwargs=dict(local_files_only=True)).init_weights()


def test_init_weights_keeps_loaded_weights(tmp_path):
    enc = tiny()
    before = enc.bert.encoder.layer[0].attention.self.query.weight.clone()
    enc.init_weights()  # what a segmentor's init_weights calls
    torch.testing.assert_close(enc.bert.encoder.layer[0].attention.self.query.weight, before)


def test_config_from_json_and_default_is_bert_base(tmp_path):
    path = tmp_path / 'config.json'
    path.write_text(json.dumps(dict(TINY_BERT, model_type='bert')))
    assert BertTextEncoder(config=str(path), pretrained=False).embed_dims == 32
    assert BertTextEncoder(config=str(tmp_path), pretrained=False).embed_dims == 32
    # the fixture's bert-base-uncased config.json parses to 768 / 12 layers (not built here)
    from mmrefseg.models.text_encoders.bert import _build_config
    cfg = _build_config(osp.join(DATA, 'bert-base-uncased', 'config.json'))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (768, 12, 30522)


def test_gradients_reach_every_parameter():
    enc = tiny().train()
    feats, _ = enc(IDS, MASK)
    feats.square().mean().backward()
    no_grad = [n for n, p in enc.named_parameters() if p.grad is None]
    assert no_grad == []


def test_freeze_whole_encoder():
    enc = tiny(freeze=True)
    enc.train()
    assert not any(p.requires_grad for p in enc.parameters())
    assert not enc.bert.training  # dropout off even in train mode
    a, _ = enc(IDS, MASK)
    b, _ = enc(IDS, MASK)
    torch.testing.assert_close(a, b)


def test_frozen_layers():
    enc = tiny(frozen_layers=1)
    enc.train()
    assert not any(p.requires_grad for p in enc.bert.embeddings.parameters())
    assert not any(p.requires_grad for p in enc.bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in enc.bert.encoder.layer[1].parameters())
    assert not enc.bert.encoder.layer[0].training and enc.bert.encoder.layer[1].training
    with pytest.raises(ValueError, match='frozen_layers=3'):
        tiny(frozen_layers=3)


def test_clear_errors(tmp_path):
    missing = str(tmp_path / 'no_bert_here')
    with pytest.raises(OSError, match='pretrained=False'):
        BertTextEncoder(name_or_path=missing, hf_kwargs=dict(local_files_only=True))
    with pytest.raises(OSError, match='pretrained=False'):  # the weights, at init_weights
        folder = tmp_path / 'config_only'
        folder.mkdir()
        (folder / 'config.json').write_text(json.dumps(dict(TINY_BERT, model_type='bert')))
        BertTextEncoder(name_or_path=str(folder)).init_weights()
    with pytest.raises(FileNotFoundError, match='config.json'):
        BertTextEncoder(config=missing, pretrained=False)
    enc = tiny()
    with pytest.raises(ValueError, match='vocab_size'):
        enc(torch.tensor([[101, 500]]), torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match='B×Nt'):
        enc(IDS, MASK[:, :3])


def test_init_cfg_is_refused_with_the_way_to_load_weights():
    """An init_cfg did nothing (init_weights loads from name_or_path): it must not pass."""
    with pytest.raises(ValueError, match='init_cfg.*name_or_path with pretrained=True'):
        tiny(init_cfg=dict(type='Pretrained', checkpoint='bert.pth'))
    assert tiny(init_cfg=None).init_cfg is None


def _sdpa_eager_pair():
    enc = {}
    for impl in ('eager', 'sdpa'):  # no dropout: the two paths draw different masks
        torch.manual_seed(0)
        enc[impl] = BertTextEncoder(
            config=dict(TINY_BERT, hidden_dropout_prob=0., attention_probs_dropout_prob=0.),
            pretrained=False, attn_implementation=impl)
    enc['sdpa'].load_state_dict(enc['eager'].state_dict())
    return enc


def test_sdpa_attention_is_used_and_matches_eager_with_padding():
    enc = _sdpa_eager_pair()
    from mmrefseg.models.text_encoders.bert import sdpa_accepts_mask_of_another_dtype
    fused = sdpa_accepts_mask_of_another_dtype()  # False on torch 2.1: eager fallback
    assert type(enc['sdpa'].bert.encoder.layer[0].attention.self).__name__ == \
        ('BertSdpaSelfAttention' if fused else 'BertSelfAttention')
    assert type(enc['eager'].bert.encoder.layer[0].attention.self).__name__ == \
        'BertSelfAttention'
    outs, grads = [], []
    for impl in ('eager', 'sdpa'):
        e = enc[impl].train()
        feats, _ = e(IDS, MASK)
        (feats * MASK[..., None]).square().sum().backward()
        outs.append(feats.detach())
        grads.append([p.grad.clone() for p in e.parameters()])
    # padded positions differ (eager attends with a finite -3.4e38, both exact on real words)
    torch.testing.assert_close(outs[1][MASK.bool()], outs[0][MASK.bool()], atol=1e-5,
                               rtol=1e-5)
    scale = max(g.abs().max() for g in grads[0])  # some gradients are 0 up to rounding
    assert max((a - b).abs().max() for a, b in zip(grads[1], grads[0])) <= 1e-5 * scale
    # padding stays exact with SDPA: other ids under the mask change nothing
    ids2 = IDS.clone()
    ids2[0, 4:] = 55
    with torch.no_grad():
        a, _ = enc['sdpa'].eval()(IDS, MASK)
        b, _ = enc['sdpa'](ids2, MASK)
    torch.testing.assert_close(a[0, :4], b[0, :4], atol=1e-6, rtol=1e-6)


def test_sdpa_runs_under_autocast():
    """Under CPU (bf16) autocast the padding mask is fp32 and the queries are not: torch
    2.1's SDPA refused that (the encoder falls back to eager there); finite, close to fp32."""
    enc = _sdpa_eager_pair()['sdpa'].eval()
    with torch.no_grad():
        ref, _ = enc(IDS, MASK)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got, _ = enc(IDS, MASK)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float()[MASK.bool()], ref[MASK.bool()], atol=0.1, rtol=0.1)


def test_no_host_sync_on_the_padding_mask(monkeypatch):
    """transformers tests ``torch.all(mask == 1)`` (a host-device sync) on a B×Nt mask; the
    encoder hands it a B×1×Nt mask, which takes the sync-free path."""
    import transformers.modeling_attn_mask_utils as mask_utils
    import transformers.models.bert.modeling_bert as bert_mod

    def fail(*args, **kwargs):
        raise AssertionError('the 2-D padding-mask path (with its host sync) was taken')

    monkeypatch.setattr(mask_utils, '_prepare_4d_attention_mask_for_sdpa', fail)
    monkeypatch.setattr(bert_mod, '_prepare_4d_attention_mask_for_sdpa', fail)
    enc = tiny().eval()
    with torch.no_grad():
        enc(IDS, MASK)


def test_activation_checkpointing_same_gradients():
    plain = tiny()
    cp = tiny(with_cp=True)
    cp.load_state_dict(plain.state_dict())
    assert cp.bert.is_gradient_checkpointing and not plain.bert.is_gradient_checkpointing
    grads = []
    for e in (plain, cp):
        e.train()
        torch.manual_seed(3)  # same dropout masks (checkpointing replays the RNG state)
        feats, _ = e(IDS, MASK)
        feats.square().mean().backward()
        grads.append([p.grad.clone() for p in e.parameters()])
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_attn_implementation_is_checked():
    with pytest.raises(ValueError, match="attn_implementation must be 'sdpa' or 'eager'"):
        tiny(attn_implementation='flash')
