"""Diagnosis for F6 (docs/studies/long-connector.md): can a connector's image tokens say what is at a named place,
when that is all they are trained for? A small controlled run in place of the 6,000-step study that tests the
explanation (studies/long/connector_local.yaml): minutes on a CPU.

The `small` preset's encoder after its cached pre-training, frozen, and its features standardised as the preset
does; on top, the connector under test, its image-token positions as the model adds them, and a readout that does
what the LM must do for "what colour is the object at r1c2?": a learned query per cell attends over the image tokens,
and an MLP names the colour. Scenes are the world's (several objects, each in a cell of the 4x4 grid); each example
asks for one of its objects. Trained as the LM trains (AdamW at the preset's peak rate, batches of 32); accuracy on
held-out scenes, against chance (1/8 colours). For the attention poolers, also how local their queries are: the mean
over queries of the largest share of a query's attention that falls on one cell (uniform: 1/16).

    .venv/bin/python bench/connector_lookup.py [--steps 1500] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mm1core.data.render import render_scene
from mm1core.data.sources import build_tokenizer, images_to_tensor
from mm1core.data.world import COLORS, sample_scene
from mm1core.encoder_pretrain import pretrain_encoder
from mm1core.hardware import cpu_model_name
from mm1core.mm1 import build_mm1
from mm1core.presets import get_preset

CONNECTORS = ("avg-pool", "attn-pool", "attn-pool-local")


class CellReadout(nn.Module):
    """ "What is at cell c": a learned query per cell attends over the image tokens; an MLP names the colour."""

    def __init__(self, width: int, cells: int, classes: int) -> None:
        super().__init__()
        self.queries = nn.Embedding(cells, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.head = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 128), nn.GELU(), nn.Linear(128, classes)
        )

    def forward(self, tokens: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """tokens (B, K, D), cells (B,) -> logits (B, classes)."""
        scores = torch.einsum("bkd,bd->bk", self.key(tokens), self.queries(cells)) / tokens.shape[-1] ** 0.5
        return self.head(torch.einsum("bk,bkd->bd", scores.softmax(-1), self.value(tokens)))


def cell_attention(
    connector: nn.Module, features: torch.Tensor, grid: int, cells_side: int
) -> torch.Tensor | None:
    """How much of each query's attention falls on each of the world's cells, (B, H, K, cells); None: no queries."""
    if not hasattr(connector, "queries"):
        return None
    B, N, _ = features.shape
    K, D = connector.queries.shape
    H = connector.num_heads
    k = connector.kv(features).view(B, N, 2, H, D // H)[:, :, 0].transpose(1, 2)  # (B, H, N, Dh)
    q = connector.queries.view(K, H, D // H).transpose(0, 1)  # (H, K, Dh)
    logits = torch.einsum("hkd,bhnd->bhkn", q, k) / (D // H) ** 0.5
    bias = connector.attention_bias(logits.dtype)
    attention = (logits if bias is None else logits + bias).softmax(-1)  # (B, H, K, N)
    patch_cell = torch.tensor(
        [
            (r * cells_side // grid) * cells_side + c * cells_side // grid
            for r in range(grid)
            for c in range(grid)
        ]
    )
    return torch.zeros(*attention.shape[:3], cells_side**2).index_add_(3, patch_cell, attention)


def locality(connector: nn.Module, features: torch.Tensor, grid: int, cells_side: int) -> float | None:
    """Mean over queries of the largest share of its attention on one cell (uniform 1/cells); None: no queries."""
    per_cell = cell_attention(connector, features, grid, cells_side)
    return None if per_cell is None else per_cell.amax(-1).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cache", type=Path, default=Path("results/cache"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = get_preset("small")
    world = cfg.data.world
    tokenizer = build_tokenizer(cfg.data)
    encoder_state, _ = pretrain_encoder(cfg, device=torch.device("cpu"), cache_dir=args.cache)

    def examples(n: int, base: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each scene's images (n, 3, R, R), one of its objects' cell and colour."""
        rng = random.Random(base)
        scenes = [sample_scene(world, rng.getrandbits(60) + base) for _ in range(n)]
        asked = [rng.choice(s.objects) for s in scenes]
        resolution = cfg.encoder.resolution
        colours = sorted(COLORS)
        return (
            images_to_tensor([render_scene(s, world, resolution) for s in scenes], resolution),
            torch.tensor([o.cell for o in asked]),
            torch.tensor([colours.index(o.color) for o in asked]),
        )

    train_images, train_cells, train_colours = examples(6000, 1)
    test_images, test_cells, test_colours = examples(600, 10**12)
    base = build_mm1(
        cfg, tokenizer
    )  # the encoder is frozen and the same for every connector: its features once
    base.image_encoder.load_pretrained(encoder_state)
    base.eval()
    with torch.no_grad():
        if base.standardize:
            base.fit_feature_norm(train_images[:512])
        features, test_features = base.image_features(train_images), base.image_features(test_images)
    grid = int(features.shape[1] ** 0.5)
    for name in CONNECTORS:
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = build_mm1(
                dataclasses.replace(cfg, connector=dataclasses.replace(cfg.connector, name=name)), tokenizer
            )

            connector, positions = model.connector, model.image_token_pos

            def tokens(f: torch.Tensor, connector=connector, positions=positions) -> torch.Tensor:
                out = connector(f)
                return out if positions is None else out + positions

            readout = CellReadout(model.lm.embed_dim, world.grid_size**2, len(COLORS))
            trained = [*model.connector.parameters(), *readout.parameters()]
            if model.image_token_pos is not None:
                trained.append(model.image_token_pos)
            optimizer = torch.optim.AdamW(trained, lr=cfg.train.lr, betas=(0.9, 0.95), weight_decay=0.0)
            row = {"connector": name, "seed": seed}
            with torch.no_grad():
                share = locality(model.connector, test_features[:200], grid, world.grid_size)
            if share is not None:
                row["locality@0"] = round(share, 3)
            generator = torch.Generator().manual_seed(seed)
            for step in range(1, args.steps + 1):
                idx = torch.randint(0, len(features), (32,), generator=generator)
                loss = F.cross_entropy(readout(tokens(features[idx]), train_cells[idx]), train_colours[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if step in (args.steps // 3, args.steps):
                    with torch.no_grad():
                        predicted = readout(tokens(test_features), test_cells).argmax(-1)
                        row[f"acc@{step}"] = round((predicted == test_colours).float().mean().item(), 3)
                        share = locality(model.connector, test_features[:200], grid, world.grid_size)
                        if share is not None:
                            row[f"locality@{step}"] = round(share, 3)
            print(json.dumps(row), flush=True)
    print(json.dumps({"cpu": cpu_model_name(), "steps": args.steps, "chance": round(1 / len(COLORS), 3)}))


if __name__ == "__main__":
    main()
