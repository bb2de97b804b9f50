"""How local a trained attention pooler's queries are: the diagnosis of docs/studies/long-connector.md, on any
trial's checkpoint.

    .venv/bin/python bench/connector_locality.py results/<study>/checkpoints/<trial>.pt [...]

For each checkpoint (a multimodal stage's, as a trial leaves it until `mm1ablate clean`): the model as trained,
200 held-out scenes of its world through its own encoder and feature standardisation, and for its connector's
queries the largest share of a query's attention that falls on one of the world's cells, averaged over queries,
heads and images (uniform: 1 / cells), and how many distinct cells are some query's favourite. Average pooling and
the C-Abstractor have no queries: their tokens keep the grid's layout by construction.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from connector_lookup import cell_attention

from mm1core.config import config_from_dict
from mm1core.data.render import render_scene
from mm1core.data.sources import build_tokenizer, images_to_tensor
from mm1core.data.world import sample_scene
from mm1core.mm1 import build_mm1
from mm1core.storage import load_checked

HELD_OUT_BASE = 10**12  # scene seeds far from any a trial trains on


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for path in args.checkpoints:
        saved = load_checked(path)
        cfg = config_from_dict(saved["config"])
        model = build_mm1(cfg, build_tokenizer(cfg.data))
        model.load_state_dict(saved["model"])
        model.eval()
        world = cfg.data.world
        rng = random.Random(HELD_OUT_BASE)
        scenes = [sample_scene(world, rng.getrandbits(60) + HELD_OUT_BASE) for _ in range(args.images)]
        resolution = cfg.encoder.resolution
        images = images_to_tensor([render_scene(s, world, resolution) for s in scenes], resolution)
        with torch.no_grad():
            features = model.image_features(images)
            grid = int(features.shape[1] ** 0.5)
            per_cell = cell_attention(model.connector, features, grid, world.grid_size)  # (B, H, K, cells)
        if per_cell is None:
            print(f"{path}: connector {cfg.connector.name} has no queries")
            continue
        share = per_cell.amax(-1).mean().item()
        # Each query's favourite cell, its attention averaged over heads and images.
        favourites = len(set(per_cell.mean((0, 1)).argmax(-1).tolist()))
        print(
            f"{path}: connector {cfg.connector.name}, step {saved['step']}: a query's largest share on one cell "
            f"{share:.3f} (uniform {1 / world.grid_size**2:.4f}); {favourites} of {world.grid_size**2} cells are "
            "some query's favourite"
        )


if __name__ == "__main__":
    main()
