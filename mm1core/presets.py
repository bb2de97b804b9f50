"""Named model sizes. A preset pins sizes and a step budget only; studies override any field."""

from __future__ import annotations

from collections.abc import Callable

from mm1core.config import (
    ConnectorConfig,
    DataConfig,
    EncoderPretrainConfig,
    EvalConfig,
    LMConfig,
    MM1Config,
    TrainConfig,
    ViTConfig,
)

__all__ = ["PRESETS", "ENCODER_SIZES", "get_preset"]

# The paper's encoder ladder (ViT-L -> ViT-H, F2) as named sizes that differ only in width and depth: the `-cpu`
# rungs keep the ladder's proportions at a scale that trains in minutes; the `/14` rungs are the paper's own shapes.
ENCODER_SIZES: dict[str, dict[str, int]] = {
    "vit-s-cpu": {"width": 64, "depth": 2, "num_heads": 4},
    "vit-l-cpu": {"width": 96, "depth": 3, "num_heads": 4},
    "vit-h-cpu": {"width": 128, "depth": 4, "num_heads": 4},
    "vit-l/14": {"width": 1024, "depth": 24, "num_heads": 16},
    "vit-h/14": {"width": 1280, "depth": 32, "num_heads": 16},
}


def tiny() -> MM1Config:
    """Seconds on one CPU core: for tests."""
    return MM1Config(
        encoder=ViTConfig(resolution=32, patch_size=8, width=32, depth=1, num_heads=2),
        encoder_pretrain=EncoderPretrainConfig(steps=10, batch_size=8, warmup_steps=2, text_width=32),
        connector=ConnectorConfig(name="avg-pool", num_image_tokens=4),
        lm=LMConfig(width=32, depth=1, num_heads=2),
        data=DataConfig(max_seq_len=264),
        train=TrainConfig(steps=20, batch_size=8, lr=3e-3, warmup_steps=5, log_every=5, checkpoint_every=10),
        eval=EvalConfig(num_items=14, batch_size=14),
    )


def small() -> MM1Config:
    """Minutes on one CPU core: the size of CPU studies, and the reference recipe of the shipped studies.

    Why it is built so (docs/reference-recipe.md has the measurements): the encoder patchifies like the paper's
    ViTs (after CLIP, the conv stem's features give up a cell's colour and shape to a learned readout far more
    slowly than a random encoder's; the patchify stem's keep them), and its features enter the connector
    standardised per channel (raw, a large shared mean hides what varies between places); the LM's attention convolves q, k and v over 8
    positions (so that the answer's position sees both the attribute asked, 6 tokens back, and the place named, 2
    back) and uses rotary positions, and each image token carries a learned embedding of its place, so that "the
    object at r1c2" can be looked up in a few hundred steps rather than never; the encoder stays frozen (trained at
    the LM's rate it loses its per-cell features); half the caption data is synthetic re-captions, which name every
    object at its place (the paper's reference data includes VeCap captions too).
    """
    return MM1Config(
        encoder=ViTConfig(resolution=64, patch_size=8, width=96, depth=2, num_heads=4, stem="patchify"),
        encoder_pretrain=EncoderPretrainConfig(loss="clip", steps=300, recaption_share=0.5),
        connector=ConnectorConfig(name="avg-pool", num_image_tokens=16, feature_norm="standardize"),
        lm=LMConfig(width=128, depth=2, num_heads=4, positions="rope", qkv_conv_width=8),
        data=DataConfig(ratio="5:5:1", recaption_share=0.5, max_seq_len=384),
        train=TrainConfig(
            steps=1500,
            batch_size=16,
            lr=2e-3,
            warmup_steps=50,
            log_every=25,
            eval_every=500,
            freeze="frozen-encoder",
            precision="auto",
        ),
        # 100 VQA items per category in the final round; intermediate rounds score the first 140 items.
        eval=EvalConfig(num_items=700, intermediate_items=140, batch_size=100),
    )


def base() -> MM1Config:
    """One GPU: a ViT-S/14-sized encoder at 224 px and an ~85M-parameter LM (GPT-2 small's shape), with the `small`
    recipe's standardised features, attention convolution, image-token places, frozen encoder and re-captions."""
    return MM1Config(
        encoder=ViTConfig(resolution=224, patch_size=14, width=384, depth=6, num_heads=6, stem="patchify"),
        encoder_pretrain=EncoderPretrainConfig(
            loss="clip", steps=2000, batch_size=256, lr=1e-3, warmup_steps=200, text_width=256, text_depth=2
        ),
        connector=ConnectorConfig(name="c-abstractor", num_image_tokens=64, feature_norm="standardize"),
        lm=LMConfig(width=768, depth=12, num_heads=12, positions="rope", qkv_conv_width=8),
        data=DataConfig(ratio="5:5:1", recaption_share=0.5, max_seq_len=1024),
        train=TrainConfig(
            steps=5000,
            batch_size=64,
            lr="auto",
            warmup_steps=200,
            precision="auto",
            eval_every=1000,
            freeze="frozen-encoder",
        ),
        eval=EvalConfig(num_items=1400, intermediate_items=280, batch_size=200),
    )


def paper_1_2b() -> MM1Config:
    """The paper's ablation shape: ViT-L/14 at 336 px, C-Abstractor with 144 tokens, a 1.2B LM, 45:45:10 data.

    For clusters; on a CPU machine, plan studies with it and keep their runs for GPU nodes.
    """
    return MM1Config(
        encoder=ViTConfig(resolution=336, patch_size=14, width=1024, depth=24, num_heads=16, stem="patchify"),
        encoder_pretrain=EncoderPretrainConfig(
            loss="clip",
            steps=20000,
            batch_size=1024,
            lr=5e-4,
            warmup_steps=2000,
            text_width=512,
            text_depth=6,
        ),
        connector=ConnectorConfig(name="c-abstractor", num_image_tokens=144),
        lm=LMConfig(width=2048, depth=24, num_heads=16, positions="rope"),
        data=DataConfig(ratio="5:5:1", max_seq_len=2048),
        train=TrainConfig(
            steps=100000,
            batch_size=512,
            lr="auto",
            warmup_steps=2000,
            precision="bf16",
            eval_every=5000,
            checkpoint_every=1000,
        ),
        eval=EvalConfig(num_items=2000, batch_size=250),
    )


PRESETS: dict[str, Callable[[], MM1Config]] = {
    "tiny": tiny,
    "small": small,
    "base": base,
    "paper-1.2b": paper_1_2b,
}


def get_preset(name: str) -> MM1Config:
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is not supported; known: {', '.join(PRESETS)}")
    return PRESETS[name]()
