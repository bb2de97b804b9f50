"""Diagnosis for the reference recipe (docs/reference-recipe.md, item 13): how fast a *learned* readout, trained the
way the LM trains (AdamW at the LM's peak rate, batches of 32), reads an object's colour and shape off an encoder's
frozen features, by encoder. A convex probe (mm1core.eval.probes) says whether the attribute is there; this says
how many steps a network needs to get it out, which is what a minutes-long multimodal stage can afford.

Scenes of one object (so no lookup is needed); the features of the object's own cell, pooled to the world's grid as
the avg-pool connector pools them; the same readout shared by every cell, as the LM's is. Sources:
    pretrained  the preset's encoder after its cached pre-training (override e.g. '{"encoder.stem": "conv"}')
    random      the same encoder at initialisation
    pixels      the cell's mean RGB

    .venv/bin/python bench/feature_readout.py pretrained --override '{"encoder.stem": "conv"}'
    .venv/bin/python bench/feature_readout.py random --head linear
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from mm1core.config import apply_overrides, config_from_dict, config_to_dict
from mm1core.data.documents import IMAGE_PLACEHOLDER, Document
from mm1core.data.sources import batch_from_documents, build_tokenizer
from mm1core.data.world import COLORS, SHAPES, sample_scene
from mm1core.encoder_pretrain import pretrain_encoder
from mm1core.hardware import cpu_model_name
from mm1core.mm1 import build_mm1
from mm1core.presets import get_preset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", choices=("pretrained", "random", "pixels"))
    parser.add_argument("--head", choices=("linear", "mlp"), default="mlp")
    parser.add_argument("--override", default="{}", help="JSON config overrides of the small preset")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--cache", type=Path, default=Path("results/cache"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = config_from_dict(apply_overrides(config_to_dict(get_preset("small")), json.loads(args.override)))
    world = dataclasses.replace(cfg.data.world, min_objects=1, max_objects=1)
    tokenizer = build_tokenizer(cfg.data)
    torch.manual_seed(0)
    model = build_mm1(cfg, tokenizer)
    if args.source == "pretrained":
        state, _ = pretrain_encoder(cfg, device=torch.device("cpu"), cache_dir=args.cache)
        model.image_encoder.load_pretrained(state)
    model.eval()
    side = int(cfg.connector.num_image_tokens**0.5)

    def cells(n: int, base: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rng = random.Random(base)
        scenes = [sample_scene(world, rng.getrandbits(60) + base) for _ in range(n)]
        batch = batch_from_documents(
            [Document(f"{IMAGE_PLACEHOLDER} question", (s,), "i") for s in scenes],
            tokenizer,
            world,
            resolution=cfg.encoder.resolution,
            num_image_tokens=cfg.connector.num_image_tokens,
            max_seq_len=cfg.data.max_seq_len,
        )
        with torch.no_grad():
            if args.source == "pixels":
                grid = batch.images
            else:
                features = model.image_encoder(batch.images)  # (n, N, D)
                g = int(features.shape[1] ** 0.5)
                grid = features.transpose(1, 2).reshape(n, -1, g, g)
            pooled = F.adaptive_avg_pool2d(grid, side).flatten(2).transpose(1, 2)  # (n, K, D)
        own = pooled[torch.arange(n), torch.tensor([s.objects[0].cell for s in scenes])]  # (n, D)
        labels = {
            "color": torch.tensor([sorted(COLORS).index(s.objects[0].color) for s in scenes]),
            "shape": torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes]),
        }
        return own, labels

    x_train, y_train = cells(6000, 1)
    x_test, y_test = cells(600, 10**12)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    found = {}
    for target, classes in (("color", len(COLORS)), ("shape", len(SHAPES))):
        torch.manual_seed(0)
        width = x_train.shape[1]
        head = (
            torch.nn.Linear(width, classes)
            if args.head == "linear"
            else torch.nn.Sequential(
                torch.nn.Linear(width, 128), torch.nn.GELU(), torch.nn.Linear(128, classes)
            )
        )
        optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=0.0)
        for step in range(1, args.steps + 1):
            idx = torch.randint(0, len(x_train), (32,))
            loss = F.cross_entropy(head(x_train[idx]), y_train[target][idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step in (args.steps // 4, args.steps):
                with torch.no_grad():
                    accuracy = (head(x_test).argmax(-1) == y_test[target]).float().mean().item()
                found[f"{target}@{step}"] = round(accuracy, 3)
    print(
        json.dumps(
            {"source": args.source, "head": args.head, "override": args.override, "cpu": cpu_model_name()}
            | found
        )
    )


if __name__ == "__main__":
    main()
