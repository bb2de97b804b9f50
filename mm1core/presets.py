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

__all__ = ["PRESETS", "get_preset"]


def tiny() -> MM1Config:
    """Seconds on one CPU core: for tests."""
    return MM1Config(
        encoder=ViTConfig(resolution=32, patch_size=8, width=32, depth=1, num_heads=2),
        encoder_pretrain=EncoderPretrainConfig(steps=10, batch_size=8, warmup_steps=2, text_width=32),
        connector=ConnectorConfig(name="avg-pool", num_image_tokens=4),
        lm=LMConfig(width=32, depth=1, num_heads=2),
        data=DataConfig(max_seq_len=80),
        train=TrainConfig(steps=20, batch_size=8, lr=3e-3, warmup_steps=5, log_every=5, checkpoint_every=10),
        eval=EvalConfig(num_items=20, batch_size=20),
    )


def small() -> MM1Config:
    """Minutes on one CPU core: the size of CPU studies."""
    return MM1Config(
        encoder=ViTConfig(resolution=64, patch_size=8, width=96, depth=2, num_heads=4),
        encoder_pretrain=EncoderPretrainConfig(loss="clip", steps=300),
        connector=ConnectorConfig(name="avg-pool", num_image_tokens=16),
        lm=LMConfig(width=128, depth=2, num_heads=4),
        data=DataConfig(max_seq_len=112),
        train=TrainConfig(steps=1000, batch_size=32, lr=2e-3, warmup_steps=50, log_every=25, eval_every=250),
        eval=EvalConfig(num_items=300, batch_size=100),
    )


PRESETS: dict[str, Callable[[], MM1Config]] = {"tiny": tiny, "small": small}


def get_preset(name: str) -> MM1Config:
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is not supported; known: {', '.join(PRESETS)}")
    return PRESETS[name]()
