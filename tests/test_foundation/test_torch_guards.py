"""The guards that keep the package working on torch 2.1 (the oldest supported torch),
exercised here by switching the newer behaviour off. The weights-only / safe-globals guards
are in test_compat.py."""
import torch

from mmrefseg.models.text_encoders import bert as bert_mod

TINY_BERT = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                 intermediate_size=64, vocab_size=200)


def _encoder(monkeypatch, sdpa_ok):
    monkeypatch.setattr(bert_mod, 'sdpa_accepts_mask_of_another_dtype', lambda: sdpa_ok)
    torch.manual_seed(0)
    return bert_mod.BertTextEncoder(pretrained=False, config=dict(TINY_BERT)).eval()


def test_bert_runs_under_cpu_bf16_autocast():
    """What `tools/train.py --amp` does on a CPU; on torch 2.1 HF's SDPA path raised."""
    enc = bert_mod.BertTextEncoder(pretrained=False, config=dict(TINY_BERT)).eval()
    ids, mask = torch.tensor([[101, 20, 102, 0]]), torch.tensor([[1, 1, 1, 0]])
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out, _ = enc(ids, mask)
    assert out.shape == (1, 4, 32) and torch.isfinite(out.float()).all()


def test_bert_eager_fallback_matches_sdpa(monkeypatch):
    """The torch-2.1 path (eager attention) computes what the SDPA path computes."""
    eager, sdpa = _encoder(monkeypatch, False), _encoder(monkeypatch, True)
    assert eager.bert.config._attn_implementation == 'eager'
    sdpa.load_state_dict(eager.state_dict())
    ids, mask = torch.tensor([[101, 20, 33, 102, 0, 0]]), torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        a, b = eager(ids, mask)[0], sdpa(ids, mask)[0]
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=1e-5, rtol=1e-5)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.isfinite(eager(ids, mask)[0].float()).all()
