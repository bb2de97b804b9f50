"""Diagnosis for reading (docs/reference-recipe.md, item 21): where a sign's digits are lost between the pixels and
the language model. For each encoder and resolution, ridge probes (the evaluation's `ridge_accuracy`) read each of a
sign's three digits from the features of the sign's cell, pooled as a connector would pool them: one vector per cell
(the `small` preset's 16 tokens), or the cell split into k x k sub-cells whose vectors are concatenated (k*k tokens
per cell, as 64 or 144 tokens would give). The same probes on the cell's raw pixels say what a linear read-out can
get at all at that resolution.

    .venv/bin/python bench/reading_probe.py --resolutions 64,96 --splits 1,2,3
    .venv/bin/python bench/reading_probe.py --override '{"encoder_pretrain.loss": "aim"}'
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from mm1core.config import apply_overrides, config_from_dict, config_to_dict
from mm1core.data.render import render_scene
from mm1core.data.sources import images_to_tensor
from mm1core.encoder_pretrain import pretrain_encoder
from mm1core.eval.probes import probe_scenes, ridge_accuracy
from mm1core.presets import get_preset
from mm1core.vit import ViT


def sub_cell_features(patches: torch.Tensor, grid: int, split: int) -> torch.Tensor:
    """(B, G*G, split*split*D): patch features (B, N, D) pooled to a (G*split)^2 grid, each cell's sub-cells
    concatenated in row-major order."""
    B, N, D = patches.shape
    side = math.isqrt(N)
    fine = F.adaptive_avg_pool2d(patches.transpose(1, 2).reshape(B, D, side, side), grid * split)
    fine = fine.reshape(B, D, grid, split, grid, split).permute(0, 2, 4, 3, 5, 1)  # (B, G, G, s, s, D)
    return fine.reshape(B, grid * grid, split * split * D)


def digit_probes(encode, world, resolution: int, split: int, fit: int, test: int) -> list[float]:
    """Held-out accuracy of reading each digit position of every sign from its cell's features."""
    scenes = probe_scenes(world, fit + test)
    features = []
    for start in range(0, len(scenes), 64):
        chunk = scenes[start : start + 64]
        pixels = images_to_tensor([render_scene(s, world, resolution) for s in chunk], resolution)
        with torch.no_grad():
            features.append(sub_cell_features(encode(pixels).float(), world.grid_size, split).double())
    cells = torch.cat(features)  # (S, G*G, F)
    accuracies = []
    for position in range(world.sign_length):
        rows = {"fit": ([], []), "test": ([], [])}
        for s, scene in enumerate(scenes):
            part = rows["fit" if s < fit else "test"]
            for sign in scene.signs:
                part[0].append(cells[s, sign.cell])
                part[1].append(sign.text[position])
        accuracies.append(
            ridge_accuracy(
                torch.stack(rows["fit"][0]), rows["fit"][1], torch.stack(rows["test"][0]), rows["test"][1]
            )
        )
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolutions", default="64,96")
    parser.add_argument("--splits", default="1,2")
    parser.add_argument("--fit", type=int, default=2000, help="probe-fitting scenes (~1.5 signs each)")
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--override", default="{}", help="JSON config overrides of the small preset")
    parser.add_argument("--cache", type=Path, default=Path("results/cache"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for resolution in map(int, args.resolutions.split(",")):
        overrides = {"encoder.resolution": resolution, **json.loads(args.override)}
        cfg = config_from_dict(apply_overrides(config_to_dict(get_preset("small")), overrides))
        world, patch = cfg.data.world, cfg.encoder.patch_size
        trained = ViT(cfg.encoder).eval()
        state, _ = pretrain_encoder(cfg, device=torch.device("cpu"), cache_dir=args.cache)
        trained.load_pretrained(state)
        torch.manual_seed(0)
        encoders = {
            # each patch's raw pixels, as the patchify stem sees them
            "pixels": lambda x, patch=patch: F.unfold(x, patch, stride=patch).transpose(1, 2),
            "random init": ViT(cfg.encoder).eval(),
            f"{cfg.encoder_pretrain.loss} {cfg.encoder_pretrain.steps} steps": trained,
        }
        for split in map(int, args.splits.split(",")):
            for name, encode in encoders.items():
                accuracies = digit_probes(encode, world, resolution, split, args.fit, args.test)
                print(
                    f"{resolution} px, {split}x{split} per cell, {name}: digits "
                    + " / ".join(f"{a:.2f}" for a in accuracies),
                    flush=True,
                )


if __name__ == "__main__":
    main()
