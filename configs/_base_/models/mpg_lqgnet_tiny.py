# Tiny MPG-LQGNet for tests and quick starts (docs/interfaces.md): Swin embed_dims 32,
# depths (2, 2, 2, 2), heads (1, 2, 4, 8), window 7; BERT built from a config (hidden 64,
# 2 layers, 2 heads, intermediate 128, bert-base-uncased's 30522-token vocabulary; random
# weights, offline); C_q 64, decoder width 64, N_l 2. One process with a few images: the
# CAFG gates use a per-sample norm (GN with 1 group = LayerNorm over the pooled channels),
# the pixel decoder BN (docs/model.md).
_base_ = './mpg_lqgnet_swinb.py'
gate_norm_cfg = dict(type='GN', num_groups=1, requires_grad=True)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    text_encoder=dict(
        _delete_=True,
        type='BertTextEncoder',
        name_or_path=None,
        pretrained=False,
        config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128, vocab_size=30522)),
    backbone=dict(
        pretrain_img_size=224,
        embed_dims=32,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 4, 8],
        window_size=7,
        drop_path_rate=0.1,
        text_dims=64,
        query_dims=64,
        norm_cfg=gate_norm_cfg,
        init_cfg=None),
    decode_head=dict(
        in_channels=[32, 64, 128, 256],
        channels=64,
        decoder_channels=64,
        num_layers=2,
        ffn_channels=128,
        norm_cfg=norm_cfg))
