"""Encoder pre-training: the CLIP loss, hard negatives, and the stage built once then cached."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mm1core.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
)
from mm1core.data.world import sample_scene
from mm1core.losses import LOSSES
from mm1core.pipeline import run_trial
from mm1core.presets import get_preset


def test_clip_loss_matches_a_hand_computation():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # two captions, then one hard negative
    scale = torch.tensor(0.0)  # exp(0) = 1
    sims = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    i2t = (-sims[0, 0] + sims[0].logsumexp(0) - sims[1, 1] + sims[1].logsumexp(0)) / 2
    t2i = (-sims[0, 0] + sims[:, 0].logsumexp(0) - sims[1, 1] + sims[:, 1].logsumexp(0)) / 2
    terms = LOSSES["clip"](image, text, scale)
    assert terms["contrastive_loss"].item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-6)


def test_hard_negative_changes_exactly_one_detail():
    import random

    from mm1core.encoder_pretrain import hard_negative

    world = get_preset("tiny").data.world
    rng = random.Random(0)
    for seed in range(100):
        scene = sample_scene(world, seed)
        negative = hard_negative(scene, rng)
        digits = sum(
            a != b
            for s, n in zip(scene.signs, negative.signs, strict=True)
            for a, b in zip(s.text, n.text, strict=True)
        )
        if len(negative.objects) == len(scene.objects) - 1:
            assert digits == 0 and set(negative.objects) < set(scene.objects)
            continue
        attributes = sum(
            (a.color != b.color) + (a.shape != b.shape) + (a.size != b.size)
            for a, b in zip(scene.objects, negative.objects, strict=True)
        )
        assert digits + attributes == 1


def test_encoder_stage_is_built_once_then_served_from_the_cache(tmp_path):
    cfg = config_from_dict(
        apply_overrides(config_to_dict(get_preset("tiny")), {"encoder_pretrain.loss": "clip"})
    )
    first = run_trial(cfg, cache_dir=tmp_path)
    second = run_trial(cfg, cache_dir=tmp_path)
    assert first.built_encoder and not second.built_encoder

    def scores(outcome):
        return {k: v for k, v in outcome.metrics.items() if not k.startswith("time/")}

    assert scores(first) == scores(second)  # the cached encoder is the one that was built
    # By default every trial seed pre-trains its own encoder, so a study's seeds sample the encoder's randomness.
    assert run_trial(dataclasses.replace(cfg, seed=1), cache_dir=tmp_path).built_encoder
    # With seed_from "stage", trial seeds share one encoder; the stage's own seed still makes another.
    shared = dataclasses.replace(
        cfg, encoder_pretrain=dataclasses.replace(cfg.encoder_pretrain, seed_from="stage")
    )
    assert run_trial(shared, cache_dir=tmp_path).built_encoder
    assert not run_trial(dataclasses.replace(shared, seed=1), cache_dir=tmp_path).built_encoder
    other_encoder = dataclasses.replace(
        shared, encoder_pretrain=dataclasses.replace(shared.encoder_pretrain, seed=1)
    )
    assert run_trial(other_encoder, cache_dir=tmp_path).built_encoder
    assert len(list(tmp_path.glob("encoder-clip-*.pt"))) == 4
