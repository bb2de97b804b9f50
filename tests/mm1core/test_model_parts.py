"""Parity and contract tests for attention, rotary positions, the AIM loss and the learning-rate law."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mm1core.blocks import Attention, apply_rotary, rotary_tables
from mm1core.config import apply_overrides, config_from_dict, config_to_dict
from mm1core.losses import LOSSES
from mm1core.losses.aim import normalised_patches
from mm1core.lr_law import law_weight_decay, optimal_peak_lr
from mm1core.pipeline import run_trial
from mm1core.presets import get_preset


def _naive_attention(attn: Attention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    B, T, D = x.shape
    H = attn.num_heads
    q, k, v = attn.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D))


def _prefix_mask(T: int, prefix: int) -> torch.Tensor:
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    mask[:, :prefix] = True
    return mask


@pytest.mark.parametrize("kind", ["causal", "prefix", "full"])
def test_fused_attention_matches_naive_forward_and_gradient(kind):
    torch.manual_seed(0)
    T = 7
    attn = Attention(16, 4)
    x = torch.randn(2, T, 16, requires_grad=True)
    allowed = {
        "causal": torch.ones(T, T, dtype=torch.bool).tril(),
        "prefix": _prefix_mask(T, 3),
        "full": torch.ones(T, T, dtype=torch.bool),
    }[kind]
    if kind == "causal":
        fused = attn(x, causal=True)
    elif kind == "prefix":
        fused = attn(x, causal=False, attn_mask=allowed)
    else:
        fused = attn(x, causal=False)
    naive = _naive_attention(attn, x, allowed)
    torch.testing.assert_close(fused, naive, atol=1e-5, rtol=1e-5)
    (grad_fused,) = torch.autograd.grad(fused.square().sum(), x)
    (grad_naive,) = torch.autograd.grad(naive.square().sum(), x)
    torch.testing.assert_close(grad_fused, grad_naive, atol=1e-5, rtol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    cos, sin = rotary_tables(32, 8, device=torch.device("cpu"))

    def score(m: int, n: int) -> float:
        qm = apply_rotary(q, cos[m : m + 1], sin[m : m + 1])
        kn = apply_rotary(k, cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum().item()

    assert score(3, 1) == pytest.approx(score(13, 11), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_aim_loss_scores_only_non_prefix_patches():
    torch.manual_seed(0)
    targets = torch.randn(2, 6, 12)
    predictions = torch.zeros(2, 6, 12)
    predictions[:, :-1] = targets[:, 1:]  # position i predicts patch i + 1 perfectly
    prefix = 3
    predictions[:, : prefix - 1] = 99.0  # garbage where the predicted patch lies inside the prefix
    assert LOSSES["aim"](predictions, targets, prefix)["pixel_loss"].item() == pytest.approx(0.0)
    predictions[:, prefix] += 1.0  # now a scored prediction is off by 1 in every pixel
    scored = 6 - prefix
    expected = 1.0 / scored
    assert LOSSES["aim"](predictions, targets, prefix)["pixel_loss"].item() == pytest.approx(expected)


def test_aim_targets_are_normalised_patches_in_raster_order():
    images = torch.rand(1, 3, 8, 8)
    patches = normalised_patches(images, 4)
    assert patches.shape == (1, 4, 48)
    torch.testing.assert_close(patches.mean(-1), torch.zeros(1, 4), atol=1e-5, rtol=0)
    top_right = images[0, :, :4, 4:].reshape(-1)
    expected = (top_right - top_right.mean()) / top_right.std(unbiased=False)
    torch.testing.assert_close(patches[0, 1], expected, atol=1e-4, rtol=1e-4)  # up to the 1e-6 epsilon


def test_lr_law_at_the_papers_sizes():
    assert optimal_peak_lr(3e9) == pytest.approx(5.8e-5, rel=0.01)
    assert optimal_peak_lr(30e9) == pytest.approx(2.2e-5, rel=0.01)
    assert law_weight_decay(3e9) == pytest.approx(0.1 * optimal_peak_lr(3e9))
    with pytest.raises(ValueError):
        optimal_peak_lr(0)


def test_lr_auto_uses_the_law_and_reports_it(tmp_path):
    cfg = config_from_dict(apply_overrides(config_to_dict(get_preset("tiny")), {"train.lr": "auto"}))
    seen = {}
    outcome = run_trial(cfg, cache_dir=tmp_path, on_metrics=lambda stage, step, m: seen.update(m))
    assert (
        seen["lr_law/chosen_peak_lr"] == seen["lr_law/optimal_peak_lr"] == optimal_peak_lr(outcome.num_params)
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"lm.positions": "rope"},
        {"encoder_pretrain.loss": "aim", "encoder.stem": "patchify"},
        {"encoder_pretrain.loss": "clip"},
        {"connector.feature_norm": "standardize"},
    ],
)
def test_variants_train(overrides, tmp_path):
    cfg = config_from_dict(apply_overrides(config_to_dict(get_preset("tiny")), overrides))
    losses = []
    run_trial(
        cfg,
        cache_dir=tmp_path,
        on_metrics=lambda stage, step, m: "train/loss" in m and losses.append(m["train/loss"]),
    )
    assert losses[-1] < losses[0]


def test_encoder_weights_load_at_another_resolution():
    from mm1core.config import ViTConfig
    from mm1core.vit import ViT

    low = ViT(ViTConfig(resolution=32, patch_size=8, width=16, depth=1, num_heads=2))
    high = ViT(ViTConfig(resolution=64, patch_size=8, width=16, depth=1, num_heads=2))
    high.load_pretrained(low.state_dict())
    assert high(torch.rand(1, 3, 64, 64)).shape == (1, 64, 16)
    torch.testing.assert_close(high.blocks[0].attn.qkv.weight, low.blocks[0].attn.qkv.weight)
    # The resized grid keeps the old one's layout: its corners are the old corners.
    old = low.pos_embed.reshape(4, 4, 16)
    new = high.pos_embed.reshape(8, 8, 16)
    assert torch.linalg.norm(new[0, 0] - old[0, 0]) < torch.linalg.norm(new[0, 0] - old[3, 3])


def test_moe_load_balance_loss_on_a_known_routing():
    from mm1core.moe import load_balance_loss

    # 4 tokens, 2 experts, top-1. All four go to expert 0, whose mean probability is 0.75: 2 * (1 * 0.75 + 0 * 0.25).
    probs = torch.tensor([[0.75, 0.25]] * 4)
    index = torch.zeros(4, 1, dtype=torch.long)
    assert load_balance_loss(probs, index, 2).item() == pytest.approx(1.5)
    # Even routing with uniform probabilities is the minimum, 1.
    even = torch.tensor([[0], [1], [0], [1]])
    assert load_balance_loss(torch.full((4, 2), 0.5), even, 2).item() == pytest.approx(1.0)


def test_moe_layer_routes_top_k_and_matches_a_dense_expert_sum():
    from mm1core.moe import MoEFeedForward

    torch.manual_seed(0)
    moe = MoEFeedForward(8, num_experts=4, top_k=2)
    x = torch.randn(1, 3, 8)
    out = moe(x)
    tokens = x.reshape(3, 8)
    probs = moe.router(tokens).softmax(-1)
    weights, index = probs.topk(2, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    expected = torch.stack(
        [
            sum(weights[s, j] * moe.experts[int(index[s, j])](tokens[s : s + 1])[0] for j in range(2))
            for s in range(3)
        ]
    )
    torch.testing.assert_close(out.reshape(3, 8), expected, atol=1e-5, rtol=1e-5)
    assert set(moe.aux) == {"balance", "router_z"}


def test_moe_lm_trains_with_its_auxiliary_losses(tmp_path):
    cfg = config_from_dict(
        apply_overrides(
            config_to_dict(get_preset("tiny")), {"lm.depth": 2, "lm.num_experts": 4, "lm.moe_every": 2}
        )
    )
    seen = []
    run_trial(cfg, cache_dir=tmp_path, on_metrics=lambda stage, step, m: "train/loss" in m and seen.append(m))
    assert seen[-1]["train/loss"] < seen[0]["train/loss"]
    assert 0 < seen[-1]["train/moe_balance_loss"] and 0 < seen[-1]["train/router_z_loss"]


def test_standardised_features_enter_the_connector_at_zero_mean_and_unit_scale(tmp_path):
    from conftest import tiny_model

    from mm1core.config import config_problems

    cfg = config_from_dict(
        apply_overrides(config_to_dict(get_preset("tiny")), {"connector.feature_norm": "standardize"})
    )
    model, _ = tiny_model(cfg)
    images = torch.rand(64, 3, 32, 32)
    model.fit_feature_norm(images)
    raw = model.image_encoder(images)
    standardised = (raw - model.feature_mean) / model.feature_std
    torch.testing.assert_close(standardised.mean((0, 1)), torch.zeros(raw.shape[-1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.std((0, 1)), torch.ones(raw.shape[-1]), atol=1e-3, rtol=0)
    # The connector sees the standardised features, and a checkpoint carries the statistics.
    torch.testing.assert_close(
        model.encode_images(images), model.connector(standardised) + model.image_token_pos
    )
    assert {"feature_mean", "feature_std"} <= set(model.state_dict())
    plain, _ = tiny_model(get_preset("tiny"))
    with pytest.raises(ValueError, match="does not standardise"):
        plain.fit_feature_norm(images)
    # What a trial measures them on: its own first training images, the same ones on every run of the trial.
    from mm1core.data.sources import build_tokenizer
    from mm1core.pipeline import _FEATURE_NORM_IMAGES, _first_images

    tokenizer = build_tokenizer(cfg.data)
    first = _first_images(cfg, tokenizer, tmp_path)
    assert first.shape[0] >= min(_FEATURE_NORM_IMAGES, cfg.train.steps * cfg.train.batch_size)
    assert torch.equal(first, _first_images(cfg, tokenizer, tmp_path))
    text_only = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, ratio="0:0:1"))
    assert _first_images(text_only, build_tokenizer(text_only.data), tmp_path).shape[0] == 0
    bad = config_from_dict(
        apply_overrides(config_to_dict(get_preset("tiny")), {"connector.feature_norm": "whiten"})
    )
    assert any("unknown feature normalisation 'whiten'" in str(p) for p in config_problems(bad))
