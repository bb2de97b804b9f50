"""The training loop: the learning-rate schedule, learning, resuming, and refusing a non-finite loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_model

from mm1core.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
)
from mm1core.data.shards import trial_batch
from mm1core.data.sources import build_tokenizer
from mm1core.losses import LOSSES
from mm1core.pipeline import run_trial
from mm1core.presets import get_preset
from mm1core.train import get_lr, train


def _lm_terms(model, batch, cfg):
    logits = model(batch.tokens, batch.images)
    return LOSSES["lm"](logits, batch.targets, z_loss_coef=cfg.train.z_loss_coef)


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    cfg = get_preset("small").train
    assert get_lr(0, cfg) == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert get_lr(cfg.warmup_steps - 1, cfg) == pytest.approx(cfg.lr)
    assert get_lr(cfg.steps - 1, cfg) == pytest.approx(0.1 * cfg.lr, rel=1e-3)


def test_loss_decreases_on_a_fixed_batch():
    cfg = get_preset("tiny")
    model, tokenizer = tiny_model(cfg)
    batch = trial_batch(cfg, tokenizer, 0)
    losses = []
    train_cfg = dataclasses.replace(cfg.train, steps=40, warmup_steps=1, log_every=10)
    train(
        model,
        lambda step: _lm_terms(model, batch, cfg),
        train_cfg,
        device=torch.device("cpu"),
        on_log=lambda step, m: losses.append(m["train/loss"]),
    )
    assert losses[-1] < 0.6 * losses[0]


class _Killed(Exception):
    pass


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    cfg = get_preset("tiny")  # 20 steps, checkpoint every 10, log every 5
    tokenizer = build_tokenizer(cfg.data)

    def run(checkpoint, kill_at=None):
        model, _ = tiny_model(cfg)
        log = {}

        def on_log(step, metrics):
            if step == kill_at:
                raise _Killed
            log[step] = metrics["train/loss"]

        try:
            train(
                model,
                lambda step: _lm_terms(model, trial_batch(cfg, tokenizer, step), cfg),
                cfg.train,
                device=torch.device("cpu"),
                on_log=on_log,
                checkpoint_path=checkpoint,
            )
        except _Killed:
            pass
        return model, log

    straight, straight_log = run(None)
    run(tmp_path / "ckpt.pt", kill_at=15)  # dies after step 15; its last checkpoint is step 10's
    resumed, resumed_log = run(tmp_path / "ckpt.pt")
    assert sorted(resumed_log) == [15, 20]  # it really resumed rather than starting over
    for step, loss in resumed_log.items():
        assert loss == straight_log[step]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=False):
        assert torch.equal(a, b), name


def test_non_finite_loss_aborts_with_a_clear_error(tmp_path):
    cfg = config_from_dict(
        apply_overrides(config_to_dict(get_preset("tiny")), {"train.lr": 100.0, "train.steps": 20})
    )
    with pytest.raises(FloatingPointError, match="non-finite (training loss|gradient norm)"):
        run_trial(cfg, cache_dir=tmp_path)
