"""Encoder probes: a linear read-out finds colour in raw pixels, finds nothing in constant features, and reports chance."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from mm1core.config import EvalConfig
from mm1core.data.world import COLORS
from mm1core.eval.probes import PROBE_ATTRIBUTES, linear_probes, probe_encoder, probe_scenes, ridge_accuracy
from mm1core.pipeline import run_trial
from mm1core.presets import get_preset
from mm1core.vit import ViT

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")
WORLD = get_preset("tiny").data.world


def _pixel_patches(images: torch.Tensor, patch: int = 8) -> torch.Tensor:
    """(B, 3, R, R) -> (B, N, 3 * patch^2): the raw pixels of each patch, an encoder that learned nothing."""
    B, _, R, _ = images.shape
    side = R // patch
    grid = images.reshape(B, 3, side, patch, side, patch)  # (B, 3, side, p, side, p)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(B, side * side, 3 * patch * patch)  # (B, N, 3 p^2)


def test_ridge_probe_separates_linearly_separable_classes_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(3, dtype=torch.float64) * 4  # (C, D)
    labels = [str(i % 3) for i in range(300)]
    points = centres[[int(y) for y in labels]] + torch.randn(300, 3, generator=generator, dtype=torch.float64)
    assert ridge_accuracy(points[:200], labels[:200], points[200:], labels[200:]) > 0.95
    noise = torch.randn(300, 3, generator=generator, dtype=torch.float64)
    assert ridge_accuracy(noise[:200], labels[:200], noise[200:], labels[200:]) < 0.55


def test_raw_pixels_read_colour_far_above_chance_and_chance_is_the_majority_class():
    metrics = linear_probes(
        _pixel_patches, WORLD, resolution=32, when="pixels", device=CPU, num_fit=200, num_test=100
    )
    assert set(metrics) == {
        f"{k}/{a}" for k in ("probe/pixels", "floor/chance/probe/pixels") for a in PROBE_ATTRIBUTES
    }
    colors = Counter(o.color for s in probe_scenes(WORLD, 100, start=200) for o in s.objects)
    chance = max(colors.values()) / sum(colors.values())
    assert metrics["floor/chance/probe/pixels/color"] == pytest.approx(chance)
    assert chance < 0.3 and len(colors) == len(COLORS)
    assert metrics["probe/pixels/color"] > chance + 0.3
    assert metrics["probe/pixels/size"] > metrics["floor/chance/probe/pixels/size"] + 0.2


def test_features_that_carry_nothing_read_at_most_chance():
    def constant(images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], 16, 8)  # (B, N, D)

    metrics = linear_probes(
        constant, WORLD, resolution=32, when="nothing", device=CPU, num_fit=100, num_test=60
    )
    for attribute in PROBE_ATTRIBUTES:
        assert (
            metrics[f"probe/nothing/{attribute}"] <= metrics[f"floor/chance/probe/nothing/{attribute}"] + 1e-9
        )


def test_probe_encoder_reads_a_random_conv_vit_and_leaves_its_mode_alone():
    cfg = get_preset("tiny").encoder
    torch.manual_seed(0)
    encoder = ViT(cfg).train()
    metrics = probe_encoder(encoder, WORLD, when="pretrained", device=CPU)
    assert encoder.training
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["probe/pretrained/color"] > metrics["floor/chance/probe/pretrained/color"] + 0.2


def test_a_trial_reports_probes_of_the_encoder_it_starts_from_and_ends_with(tmp_path):
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, steps=4, warmup_steps=1),
        eval=EvalConfig(num_items=14, batch_size=14, shots=(0,)),
    )
    seen: list[tuple[int, dict]] = []
    outcome = run_trial(cfg, on_metrics=lambda stage, step, m: seen.append((step, m)), cache_dir=tmp_path)
    assert any(step == 0 and "probe/pretrained/color" in m for step, m in seen)
    for when in ("pretrained", "final"):
        for attribute in PROBE_ATTRIBUTES:
            assert 0.0 <= outcome.metrics[f"probe/{when}/{attribute}"] <= 1.0
            assert f"floor/chance/probe/{when}/{attribute}" in outcome.metrics
    assert "heldout/image_reliance" in outcome.metrics and "floor/chance/0shot/vqa/color" in outcome.metrics
