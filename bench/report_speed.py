"""Report generation time for large results: 10,000 trial rows, and a study with per-item scores to pair.

    .venv/bin/python bench/report_speed.py [--repeats 5]

Case 1: 10,000 finished trials (2,000 arms over two axes x 5 seeds, 40 metric columns), no per-item scores.
Case 2: 20 arms x 5 seeds with the evaluation's per-item scores (7 metrics x 140 items: 98,000 item rows), so the
report runs its paired comparisons, Holm correction and the paper-beside-us checks.
Prints the median and range of `write_report` wall time (HTML, Markdown and CSV) for each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dashboards.report import write_report

METRICS = [f"{k}shot/{t}" for k in (0, 4, 8) for t in ("avg", "cider", "vqa")] + [
    "textcore/avg",
    "heldout/loss",
]
METRICS += [
    f"{k}shot/vqa/{c}"
    for k in (0, 4, 8)
    for c in ("reading", "color", "shape", "size", "counting", "position", "relation")
]
METRICS += [f"time/{p}_s" for p in ("data", "train", "eval")] + [
    "textcore/arithmetic",
    "textcore/scene_qa",
    "time/final_eval_s",
]


def _study(root: Path, lrs: list[float], wds: list[float], seeds: int, items: int) -> Path:
    rng = np.random.default_rng(0)
    rows, item_rows = [], []
    for lr in lrs:
        for wd in wds:
            arm = f"train.lr={lr},train.weight_decay={wd}"
            for seed in range(seeds):
                trial_id = f"{lr}-{wd}-{seed}"
                rows.append(
                    {
                        "trial_id": trial_id,
                        "arm": arm,
                        "seed": seed,
                        "status": "finished",
                        "error": "",
                        "train.lr": lr,
                        "train.weight_decay": wd,
                        "num_params": 10**6,
                        "wall_time_s": 60.0,
                        **{m: float(rng.uniform()) for m in METRICS},
                    }
                )
                for metric in (
                    "0shot/cider",
                    "0shot/vqa",
                    "4shot/cider",
                    "4shot/vqa",
                    "8shot/cider",
                    "8shot/vqa",
                    "textcore/avg",
                ):
                    scores = rng.uniform(size=items)
                    item_rows += [
                        {
                            "trial_id": trial_id,
                            "arm": arm,
                            "seed": seed,
                            "metric": metric,
                            "item_id": i,
                            "category": "x",
                            "score": s,
                        }
                        for i, s in enumerate(scores)
                    ]
    study_dir = root / "bench"
    study_dir.mkdir()
    pd.DataFrame(rows).to_parquet(study_dir / "trials.parquet")
    if item_rows:
        pd.DataFrame(item_rows).to_parquet(study_dir / "items.parquet")
    spec = {
        "name": "bench",
        "axes": [{"name": "train.lr"}, {"name": "train.weight_decay"}],
        "reference_values": {"train.lr": lrs[0], "train.weight_decay": wds[0]},
    }
    (study_dir / "study.json").write_text(json.dumps(spec))
    return study_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = {
        "10,000 trial rows (2,000 arms x 5 seeds), no items": dict(
            lrs=list(np.geomspace(1e-4, 1e-2, 40)), wds=list(np.linspace(0, 0.2, 50)), seeds=5, items=0
        ),
        "20 arms x 5 seeds, 98,000 item rows (paired tests)": dict(
            lrs=list(np.geomspace(1e-4, 1e-2, 4)), wds=list(np.linspace(0, 0.2, 5)), seeds=5, items=140
        ),
    }
    print("| case | median | range | runs |\n|---|---|---|---|")
    for name, case in cases.items():
        with tempfile.TemporaryDirectory() as root:
            study_dir = _study(Path(root), **case)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                write_report(study_dir)
                times.append(time.perf_counter() - start)
        print(
            f"| {name} | {statistics.median(times):.2f} s | {min(times):.2f}-{max(times):.2f} s | {len(times)} |"
        )


if __name__ == "__main__":
    main()
