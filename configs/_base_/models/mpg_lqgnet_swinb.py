# MPG-LQGNet (Zhou et al., CVIU 2025), paper §3 / §4.1: Swin-B (ImageNet-22K, window 12)
# + BERT-base, BSAM at every stage, CAFG at stages 1-3, pixel decoder (width 512),
# LQPG with N_l = 6 layers, 8 heads, C_q = 256, CoordConv mask head, λ = 0.1.
# Every open choice and its default: docs/model.md.
#
# Two separate norms (docs/model.md):
# - model.backbone.norm_cfg: the CAFG gates, which normalise GLOBALLY POOLED B×C×1×1
#   vectors: BN statistics there come from the batch alone, so SyncBN over the 8-GPU
#   recipe's 8 samples (the paper's); configs with fewer samples per process use
#   dict(type='GN', num_groups=1) (per sample; a BN over 2 pooled samples outputs ±γ+β).
# - model.decode_head.norm_cfg: the pixel-decoder convs (BN over 112×112 maps: fine with
#   2 images per process; SyncBN with 1 image per GPU).
gate_norm_cfg = dict(type='SyncBN', requires_grad=True)
norm_cfg = dict(type='SyncBN', requires_grad=True)
crop_size = (448, 448)
# Override on the command line, e.g. --cfg-options
#   model.backbone.init_cfg.checkpoint=/path/swin.pth model.text_encoder.name_or_path=/path/bert
swin_checkpoint = 'pretrain/swin_base_patch4_window12_384_22k.pth'
bert_name = 'bert-base-uncased'
data_preprocessor = dict(
    type='RefSegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],  # ImageNet, RGB
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='RefEncoderDecoder',
    data_preprocessor=data_preprocessor,
    text_encoder=dict(
        type='BertTextEncoder',
        name_or_path=bert_name,
        pretrained=True,  # trained at the same lr as the rest (LAVT)
        freeze=False,
        frozen_layers=0),
    backbone=dict(
        type='BSAMSwinTransformer',
        pretrain_img_size=384,
        embed_dims=128,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=12,
        mlp_ratio=4,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.3,
        patch_norm=True,
        text_dims=768,
        query_dims=256,
        fusion='bsam',
        gate='cafg',
        gate_stages=(0, 1, 2),
        query_stages=(0, 1, 2, 3),
        decoder_feats='fused',
        norm_cfg=gate_norm_cfg,
        init_cfg=dict(type='Pretrained', checkpoint=swin_checkpoint)),
    decode_head=dict(
        type='LQPGHead',
        in_channels=[128, 256, 512, 1024],
        in_index=[0, 1, 2, 3],
        channels=256,  # C_q
        decoder_channels=512,
        num_queries=4,
        query_source='all',
        num_layers=6,  # N_l
        num_heads=8,
        ffn_channels=2048,
        prior_loss_weight=0.1,  # λ (Eq 17)
        use_coord=True,
        use_lqpg=True,
        attn_maps='post_softmax',
        attn_scale='num_keys',
        num_classes=2,
        dropout_ratio=0.0,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True)),
    train_cfg=dict(),
    # validation / test keep only what RefSegMetric scores (the masks at the original and
    # at the input size); inference_model asks for seg_logits, the visualizer for priors
    test_cfg=dict(mode='whole', return_logits=False, return_priors=False))
