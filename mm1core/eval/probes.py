"""Encoder probes: what a linear read-out finds of each grid cell's content in the image encoder's patch features.

Held-out probe scenes are rendered at the encoder's resolution and encoded; the patch features are average-pooled to
the world's grid, one feature vector per cell. For each cell holding an object, ridge-regularised linear classifiers
(closed-form least squares to one-hot targets on standardised features) read its `color`, `shape` and `size`; for
each cell holding a sign, its middle `digit`. Fitted on `_NUM_FIT` scenes, scored on `_NUM_TEST` others, reported as
`probe/<when>/<attribute>` beside the best constant answer on the same test cells, `floor/chance/probe/<when>/
<attribute>`. A probe at chance says the encoder's features do not carry the attribute (in linearly readable form)
where the connector looks, so the language model cannot learn to answer questions about it from them.

Shape suffixes: B images, N patches, D feature width, G world grid side, E probed cells, C classes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mm1core.config import WorldConfig
from mm1core.data.render import render_scene
from mm1core.data.sources import EVAL_SEED_OFFSET, images_to_tensor
from mm1core.data.world import Scene, sample_scene
from mm1core.mm1 import eval_mode
from mm1core.vit import ViT

__all__ = [
    "PROBE_ATTRIBUTES",
    "cell_features",
    "linear_probes",
    "probe_encoder",
    "probe_scenes",
    "ridge_accuracy",
]

PROBE_ATTRIBUTES = ("color", "shape", "size", "digit")
# Probe scenes sit beyond every evaluation seed (EVAL_SEED_OFFSET + set_seed * 1_000_003 + item, demonstrations at
# + 5e8) for any set_seed below ~2000; training scenes draw 62-bit seeds at random, so they do not meet either.
_PROBE_SEED_OFFSET = 3 * EVAL_SEED_OFFSET
_NUM_FIT = 600
_NUM_TEST = 300
# On standardised features X^T X has a diagonal of E, the probed cells (~2400 objects, ~900 signs in 600 scenes):
# a ridge of 1 barely shrinks what a probe can read; it keeps the solve well-posed for constant or collinear features.
_RIDGE = 1.0
_BATCH = 64  # images per encoder call: bounds activation memory for the large presets' encoders


def probe_scenes(world: WorldConfig, count: int, *, start: int = 0) -> list[Scene]:
    """Probe scenes `start` .. `start + count - 1`: fixed by the world alone, the same for every trial."""
    return [sample_scene(world, _PROBE_SEED_OFFSET + start + i) for i in range(count)]


def _labels(scene: Scene, attribute: str) -> list[tuple[int, str]]:
    """(cell, label) of every cell the attribute is defined on."""
    if attribute == "digit":
        return [(s.cell, s.text[len(s.text) // 2]) for s in scene.signs]
    return [(o.cell, getattr(o, attribute)) for o in scene.objects]


def cell_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    scenes: list[Scene],
    world: WorldConfig,
    *,
    resolution: int,
    device: torch.device,
) -> torch.Tensor:
    """(S, G * G, D) float64: `encode`'s patch features of each scene, average-pooled to the world's grid cells.

    encode maps images (B, 3, R, R) in [0, 1] to patch features (B, N, D) in row-major order, N a square.
    """
    out = []
    for start in range(0, len(scenes), _BATCH):
        chunk = scenes[start : start + _BATCH]
        pixels = images_to_tensor([render_scene(s, world, resolution) for s in chunk], resolution)
        patches = encode(pixels.to(device))  # (B, N, D)
        B, N, D = patches.shape
        side = math.isqrt(N)
        grid = patches.transpose(1, 2).reshape(B, D, side, side)  # (B, D, sqrt N, sqrt N)
        cells = F.adaptive_avg_pool2d(grid.float(), world.grid_size)  # (B, D, G, G)
        out.append(cells.flatten(2).transpose(1, 2).double().cpu())  # (B, G * G, D)
    return torch.cat(out)


def ridge_accuracy(
    fit_x: torch.Tensor, fit_y: list[str], test_x: torch.Tensor, test_y: list[str], *, ridge: float = _RIDGE
) -> float:
    """Test accuracy of a ridge least-squares classifier fitted to one-hot targets of fit_y.

    fit_x (E, D), test_x (E', D). Features are standardised with the fit set's statistics; the intercept is the
    targets' mean (unpenalised, since standardised features are centred). A test label never seen in fitting
    counts as wrong.
    """
    classes = sorted(set(fit_y))
    index = {c: i for i, c in enumerate(classes)}
    mean, std = fit_x.mean(0), fit_x.std(0).clamp_min(1e-8)  # (D,)
    x = (fit_x - mean) / std  # (E, D)
    targets = F.one_hot(torch.tensor([index[y] for y in fit_y]), len(classes)).double()  # (E, C)
    offset = targets.mean(0)  # (C,)
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype)  # (D, D)
    weights = torch.linalg.solve(gram, x.T @ (targets - offset))  # (D, C)
    scores = ((test_x - mean) / std) @ weights + offset  # (E', C)
    predicted = [classes[i] for i in scores.argmax(1).tolist()]
    return sum(p == y for p, y in zip(predicted, test_y, strict=True)) / len(test_y)


def _examples(features: torch.Tensor, scenes: list[Scene], attribute: str) -> tuple[torch.Tensor, list[str]]:
    pairs = [(s, cell, label) for s, scene in enumerate(scenes) for cell, label in _labels(scene, attribute)]
    rows = torch.stack([features[s, cell] for s, cell, _ in pairs])  # (E, D)
    return rows, [label for _, _, label in pairs]


def linear_probes(
    encode: Callable[[torch.Tensor], torch.Tensor],
    world: WorldConfig,
    *,
    resolution: int,
    when: str,
    device: torch.device,
    num_fit: int = _NUM_FIT,
    num_test: int = _NUM_TEST,
) -> dict[str, float]:
    """`probe/<when>/<attribute>` and `floor/chance/probe/<when>/<attribute>` for every probed attribute."""
    fit_scenes = probe_scenes(world, num_fit)
    test_scenes = probe_scenes(world, num_test, start=num_fit)
    fit_features = cell_features(encode, fit_scenes, world, resolution=resolution, device=device)
    test_features = cell_features(encode, test_scenes, world, resolution=resolution, device=device)
    metrics: dict[str, float] = {}
    for attribute in PROBE_ATTRIBUTES:
        fit_x, fit_y = _examples(fit_features, fit_scenes, attribute)
        test_x, test_y = _examples(test_features, test_scenes, attribute)
        metrics[f"probe/{when}/{attribute}"] = ridge_accuracy(fit_x, fit_y, test_x, test_y)
        # The best constant answer on the very cells scored, as the VQA floors are.
        metrics[f"floor/chance/probe/{when}/{attribute}"] = max(Counter(test_y).values()) / len(test_y)
    return metrics


def probe_encoder(encoder: ViT, world: WorldConfig, *, when: str, device: torch.device) -> dict[str, float]:
    """linear_probes of an image encoder at its own resolution, in eval mode and without gradients."""
    with eval_mode(encoder), torch.no_grad():
        return linear_probes(encoder, world, resolution=encoder.cfg.resolution, when=when, device=device)
