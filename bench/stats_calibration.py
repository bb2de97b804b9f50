"""Calibration of the report's verdicts: false-positive rate on null studies and power, by simulation.

Studies are simulated in the shape of a real one, with its noise taken from that study's `items.parquet`: each
item's difficulty is its mean score over the reference arm's seeds, and the run-to-run spread is the standard
deviation of the reference arm's per-seed mean (item sampling included, so it errs large). A simulated run of arm a
under seed s scores item i with probability clip(difficulty_i + shift_as + effect_a), shift_as ~ N(0, spread): every
run differs from every other by its own randomness, as training runs do, and arms differ only by `effect`.
Each simulated study goes through `dashboards.stats.compare_to_reference`, the function the report calls.

    python bench/stats_calibration.py results/reference/items.parquet --metric 0shot/vqa --studies 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from dashboards.stats import compare_to_reference


def noise_of(items: pd.DataFrame, metric: str, arm: str | None) -> tuple[np.ndarray, float]:
    """(item difficulties, run-to-run spread) of one arm's metric in a real study."""
    rows = items[items["metric"] == metric]
    arm = arm or rows["arm"].iloc[0]
    rows = rows[rows["arm"] == arm]
    if rows["seed"].nunique() < 2:
        raise SystemExit(
            f"{arm} has {rows['seed'].nunique()} seed(s) of {metric}: the spread needs two or more"
        )
    difficulty = rows.groupby("item_id")["score"].mean().to_numpy()
    spread = float(rows.groupby("seed")["score"].mean().std(ddof=1))
    return difficulty, spread


def simulate(
    difficulty: np.ndarray, spread: float, effects: list[float], seeds: int, rng: np.random.Generator
) -> pd.DataFrame:
    """One study: arm k has the given effect; the long items table the evaluation writes."""
    frames = []
    for k, effect in enumerate(effects):
        for seed in range(seeds):
            p = np.clip(difficulty + rng.normal(0, spread) + effect, 0, 1)
            scores = (rng.uniform(size=len(difficulty)) < p).astype(float)
            frames.append(
                pd.DataFrame(
                    {"arm": f"arm{k}", "seed": seed, "item_id": np.arange(len(difficulty)), "score": scores}
                )
            )
    table = pd.concat(frames, ignore_index=True)
    table["metric"] = "m"
    return table


def rates(
    difficulty: np.ndarray, spread: float, effects: list[float], seeds: int, studies: int, seed: int
) -> tuple[float, float]:
    """(share of comparisons called better or worse, share of studies with at least one such call)."""
    rng = np.random.default_rng(seed)
    calls, any_call = 0, 0
    for _ in range(studies):
        table = compare_to_reference(simulate(difficulty, spread, effects, seeds, rng), "arm0", ["m"])
        called = table["verdict"].isin(["better", "worse"])
        calls += int(called.sum())
        any_call += bool(called.any())
    return calls / (studies * (len(effects) - 1)), any_call / studies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("items", type=Path, help="a real study's items.parquet")
    parser.add_argument("--metric", default="0shot/vqa")
    parser.add_argument("--arm", default=None, help="the arm whose noise to take (default: the first)")
    parser.add_argument("--studies", type=int, default=1000)
    args = parser.parse_args()
    difficulty, spread = noise_of(pd.read_parquet(args.items), args.metric, args.arm)
    print(f"{args.items} {args.metric}: {len(difficulty)} items, run-to-run spread {spread:.4f}")
    print("null studies (3 identical arms):")
    for seeds in (2, 3, 5):
        per_comparison, per_study = rates(difficulty, spread, [0.0, 0.0, 0.0], seeds, args.studies, seeds)
        print(
            f"  {seeds} seeds: false-positive rate {per_comparison:.3f} per comparison, {per_study:.3f} per study"
        )
    print("power (2 arms, the second better by k x the run-to-run spread):")
    for k in (1, 2, 3, 5):
        line = []
        for seeds in (2, 3, 5):
            power, _ = rates(difficulty, spread, [0.0, k * spread], seeds, args.studies, 100 + seeds)
            line.append(f"{seeds} seeds {power:.2f}")
        print(f"  effect {k} x spread ({k * spread:.3f}): " + ", ".join(line))


if __name__ == "__main__":
    main()
