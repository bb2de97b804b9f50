"""Why a trained model misses attribute questions: did it look at the wrong cell, or not read the right one?

    .venv/bin/python bench/vqa_errors.py results/reference [--items 700]

For each finished trial of the study with a checkpoint, asks the 0-shot questions "what color / shape / size is the
object at rXcY" of the evaluation set and sorts every answer: right; the attribute of another object in the scene
(the lookup went to the wrong cell); a value of that attribute that no object in the scene has (it did not read the
scene); or not a value of that attribute at all (the format). Beside it, what answering with a random object of the
scene would score: a model that reads objects but not places.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import torch

from mm1core.config import config_from_dict
from mm1core.data.sources import build_tokenizer
from mm1core.data.world import COLORS, SHAPES, SIZES
from mm1core.eval.suite import answer_prompts, fewshot_prompt
from mm1core.mm1 import build_mm1

VALUES = {"color": set(COLORS), "shape": set(SHAPES), "size": set(SIZES)}


def sort_answers(study_dir: Path, trial: pd.Series, items: int) -> dict[str, Counter]:
    config = json.loads(trial["config_json"])
    cfg = config_from_dict(config)
    tokenizer = build_tokenizer(cfg.data, study_dir.parent / "cache")
    model = build_mm1(cfg, tokenizer)
    state = torch.load(
        study_dir / "checkpoints" / f"{trial['trial_id']}.pt", map_location="cpu", weights_only=False
    )
    model.load_state_dict(state["model"])
    model.eval()
    prompts = [fewshot_prompt(cfg.data, cfg.eval, "vqa", 0, i) for i in range(items)]
    asked = [p for p in prompts if p.category in VALUES]
    with torch.no_grad():
        replies = answer_prompts(
            model,
            tokenizer,
            asked,
            cfg.data,
            cfg.eval,
            resolution=cfg.encoder.resolution,
            num_image_tokens=cfg.connector.num_image_tokens,
            max_words=3,
            device=torch.device("cpu"),
        )
    outcome: dict[str, Counter] = {}
    rng = random.Random(0)
    for prompt, reply in zip(asked, replies, strict=True):
        category, truth = prompt.category, prompt.references[0]
        scene = prompt.scenes[-1]
        present = {getattr(o, category) for o in scene.objects}
        word = reply.strip().split(" ")[0] if reply.strip() else ""
        if word == truth:
            kind = "right"
        elif word in present:
            kind = "another object's"
        elif word in VALUES[category]:
            kind = "not in the scene"
        else:
            kind = "not a " + category
        counts = outcome.setdefault(category, Counter())
        counts[kind] += 1
        counts["random object right"] += getattr(rng.choice(scene.objects), category) == truth
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--items", type=int, default=700)
    args = parser.parse_args()
    torch.set_num_threads(1)
    trials = pd.read_parquet(args.study_dir / "trials.parquet")
    trials = trials[trials["status"] == "finished"]
    rows = []
    for _, trial in trials.iterrows():
        if not (args.study_dir / "checkpoints" / f"{trial['trial_id']}.pt").exists():
            continue
        for category, counts in sort_answers(args.study_dir, trial, args.items).items():
            total = sum(v for k, v in counts.items() if k != "random object right")
            rows.append(
                {"arm": trial["arm"], "seed": trial["seed"], "category": category, "questions": total}
                | {k: round(v / total, 3) for k, v in counts.items()}
            )
    table = pd.DataFrame(rows).fillna(0.0)
    print(table.groupby(["arm", "category"]).mean(numeric_only=True).round(3).to_string())


if __name__ == "__main__":
    main()
