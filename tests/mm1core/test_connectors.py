"""Connector registry contracts: shapes per allowed token count, gradients, bf16, trainability, what each output
token depends on, and a full model forward with each connector."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_model

from mm1core.config import CONNECTORS, ConnectorConfig, connector_problem
from mm1core.connectors import build_connector
from mm1core.data.shards import trial_batch
from mm1core.presets import get_preset


def _connector(name: str, *, num_image_tokens: int = 4, grid_size: int = 4):
    torch.manual_seed(0)
    cfg = ConnectorConfig(name=name, num_image_tokens=num_image_tokens)
    return build_connector(cfg, vision_dim=24, grid_size=grid_size, lm_dim=40)


@pytest.mark.parametrize("name", sorted(CONNECTORS))
@pytest.mark.parametrize("grid_size", [4, 6])
@pytest.mark.parametrize("num_image_tokens", [1, 4, 5, 9, 16])
def test_shapes_for_every_allowed_token_count(name, grid_size, num_image_tokens):
    cfg = ConnectorConfig(name=name, num_image_tokens=num_image_tokens)
    if connector_problem(cfg, grid_size=grid_size):
        with pytest.raises(ValueError):
            _connector(name, num_image_tokens=num_image_tokens, grid_size=grid_size)
        return
    connector = _connector(name, num_image_tokens=num_image_tokens, grid_size=grid_size)
    assert connector(torch.randn(3, grid_size**2, 24)).shape == (3, num_image_tokens, 40)


@pytest.mark.parametrize("name", sorted(CONNECTORS))
def test_gradient_reaches_every_parameter(name):
    connector = _connector(name)
    connector(torch.randn(2, 16, 24)).square().mean().backward()
    missing = [n for n, p in connector.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", sorted(CONNECTORS))
def test_bf16_autocast_backward(name):
    connector = _connector(name)
    patches = torch.randn(2, 16, 24, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = connector(patches)
    out.float().square().mean().backward()
    assert torch.isfinite(out).all()
    assert patches.grad is not None and torch.isfinite(patches.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in connector.parameters())


@pytest.mark.parametrize("name", sorted(CONNECTORS))
def test_loss_decreases_on_a_fixed_batch(name):
    connector = _connector(name)
    patches, target = torch.randn(4, 16, 24), torch.randn(4, 4, 40)
    optimizer = torch.optim.Adam(connector.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = (connector(patches) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_every_attention_pool_token_reads_every_patch():
    connector = _connector("attn-pool", num_image_tokens=4).eval()
    patches = torch.randn(2, 16, 24)
    for patch in (0, 15):
        changed = patches.clone()
        changed[:, patch] += 1.0
        with torch.no_grad():
            moved = (connector(patches) - connector(changed)).abs().amax(dim=-1)  # (B, K)
        assert (moved > 1e-4).all()


def _reach(connector, grid_size: int) -> torch.Tensor:
    """How much each output token moves when the top-left patch changes: (K,), the mean over a batch."""
    patches = torch.randn(8, grid_size**2, 24)
    changed = patches.clone()
    changed[:, 0] += 3.0
    with torch.no_grad():
        return (connector(patches) - connector(changed)).abs().mean(dim=(0, 2))


def test_local_attention_pool_queries_start_on_their_own_cell():
    """attn-pool's queries start as copies of a global average: a corner patch moves every token alike. Those of
    attn-pool-local start on their cells: it moves the token of its own corner, and the far corner's hardly."""
    grid_size = 8  # 16 tokens over 8x8 patches: cells of 2x2, as `small` at 64 px
    plain = _reach(_connector("attn-pool", num_image_tokens=16, grid_size=grid_size).eval(), grid_size)
    local = _reach(_connector("attn-pool-local", num_image_tokens=16, grid_size=grid_size).eval(), grid_size)
    assert plain.max() / plain.min() < 1.5
    assert local[0] > 20 * local[-1] and local[0] > 3 * plain[0]


def test_the_locality_is_learned_and_never_decayed():
    """Its strength per head is trained (the loss may take it towards content alone) and 1-D, so the optimizer's
    weight decay, which pulls 2-D parameters towards zero, leaves it alone."""
    connector = _connector("attn-pool-local", num_image_tokens=16, grid_size=8)
    strength = dict(connector.named_parameters())["log_strength"]
    assert strength.ndim == 1 and strength.shape == (connector.num_heads,)
    assert "distance" not in connector.state_dict()  # a function of the shape, not a learned or saved value


@pytest.mark.parametrize("name", ["avg-pool", "c-abstractor"])
def test_grid_connectors_keep_spatial_layout(name):
    # 12x12 pooled to 4x4: a corner patch reaches 2 patches further before pooling (still inside the top-left
    # 3x3 pool window) and 2 cells further after, so it moves the top-left token but not the bottom-right one.
    connector = _connector(name, num_image_tokens=16, grid_size=12).eval()
    patches = torch.randn(2, 144, 24)
    changed = patches.clone()
    changed[:, 0] += 3.0
    with torch.no_grad():
        before, after = connector(patches), connector(changed)
    assert not torch.allclose(before[:, 0], after[:, 0])
    torch.testing.assert_close(before[:, -1], after[:, -1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CONNECTORS))
def test_full_model_forward(name):
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(
        cfg,
        connector=dataclasses.replace(cfg.connector, name=name),
        train=dataclasses.replace(cfg.train, batch_size=2),
    )
    model, tokenizer = tiny_model(cfg)
    batch = trial_batch(cfg, tokenizer, 0)
    logits = model(batch.tokens, batch.images)
    assert logits.shape == (*batch.tokens.shape, tokenizer.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(CONNECTORS))
@pytest.mark.parametrize("num_image_tokens", [1, 4, 16])
def test_connector_shapes(name, num_image_tokens):
    connector = build_connector(
        ConnectorConfig(name=name, num_image_tokens=num_image_tokens), vision_dim=24, grid_size=4, lm_dim=40
    )
    assert connector(torch.randn(2, 16, 24)).shape == (2, num_image_tokens, 40)


def test_connector_refuses_more_tokens_than_patches():
    with pytest.raises(ValueError, match="exceed the 4x4=16 patches"):
        build_connector(
            ConnectorConfig(name="avg-pool", num_image_tokens=64), vision_dim=8, grid_size=4, lm_dim=8
        )
