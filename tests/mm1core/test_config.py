"""Config validation."""

from __future__ import annotations

from mm1core.config import (
    apply_overrides,
    config_from_dict,
    config_problems,
    config_to_dict,
)
from mm1core.presets import get_preset


def test_unknown_freeze_stage_is_a_config_problem():
    cfg = config_from_dict(
        apply_overrides(config_to_dict(get_preset("tiny")), {"train.freeze": "encoder-only"})
    )
    assert [p.path for p in config_problems(cfg)] == ["train.freeze"]


def test_every_stage_declares_one_schedule_and_the_loop_reads_it():
    import dataclasses

    from mm1core.config import Schedule, TrainConfig, stage_loop
    from mm1core.presets import get_preset

    cfg = get_preset("small")
    assert all(isinstance(stage, Schedule) for stage in (cfg.encoder_pretrain, cfg.train, cfg.sft))
    sft = stage_loop(dataclasses.replace(cfg.sft, steps=40), cfg.train, eval_every=0)
    # SFT's own schedule, the multimodal stage's loop settings (precision, weight decay, clipping, z-loss).
    assert (sft.steps, sft.batch_size, sft.lr, sft.warmup_steps) == (40, cfg.sft.batch_size, cfg.sft.lr, 20)
    assert (sft.precision, sft.weight_decay, sft.z_loss_coef, sft.eval_every) == ("auto", 0.1, 1e-4, 0)
    # The encoder stage takes the loop's defaults, never the multimodal stage's precision: a cached encoder
    # depends on its own config alone.
    encoder = stage_loop(cfg.encoder_pretrain, z_loss_coef=0.0)
    assert encoder.precision == TrainConfig(steps=1, batch_size=1, lr=1.0, warmup_steps=0).precision == "fp32"
    assert (encoder.steps, encoder.lr) == (cfg.encoder_pretrain.steps, cfg.encoder_pretrain.lr)
