"""Calibration of the report's verdicts: false-positive rate on null studies and power, by simulation.

Studies are simulated in the shape of a real one, with its noise taken from that study's `items.parquet`: each
item's difficulty is its mean score over the first arm's seeds; where the study has two or more arms, the additive
model arm + seed of the report (`dashboards.stats.fit_runs`) splits the runs' spread into a seed effect shared by
every arm and the run-to-run residual, and a one-arm study gives the spread of its per-seed means as residual alone.
A simulated run of arm a under seed s scores item i with probability clip(difficulty_i + seed_s + shift_as +
effect_a), seed_s ~ N(0, seed spread), shift_as ~ N(0, sd): every run differs from every other by its own
randomness, as training runs do, and arms differ only by `effect`. The run spread the report states (the SD of a
run's mean, seed effects removed) holds both the shift and the item sample's own noise, so the shift's sd is what
the spread leaves after the item sampling, and effects are given in units of the whole spread. Each simulated
study goes through `dashboards.stats.compare_to_reference`, the function the report calls.

Arms that are equal on average can still differ item by item (two connectors that answer different questions): with
`--interaction-from` a second study's arm x item component (its arms differ) gives each simulated arm its own item
profile, drawn afresh per study, g_ai ~ N(0, that component's SD), added to p; the null studies are then run again.

    python bench/stats_calibration.py results/aa/items.parquet --metric 0shot/vqa --studies 1000 \
        --interaction-from results/long-connector-local/items.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from dashboards.stats import compare_to_reference, fit_runs


def noise_of(items: pd.DataFrame, metric: str) -> tuple[np.ndarray, float, float]:
    """(item difficulties, run-to-run spread, seed spread) of one metric in a real study."""
    rows = items[items["metric"] == metric]
    first = rows[rows["arm"] == rows["arm"].iloc[0]]
    if first["seed"].nunique() < 2:
        raise SystemExit(f"{metric} has {first['seed'].nunique()} seed(s): the spread needs two or more")
    difficulty = first.groupby("item_id")["score"].mean().to_numpy()
    model = fit_runs(rows, metric)
    if model.components is None:  # one arm: its runs' spread, seed effects and run noise together
        return difficulty, float(model.run_means.iloc[:, 0].std(ddof=1)), 0.0
    run_var = model.components.run + model.components.noise / model.items
    arms = model.run_means.shape[1]
    seed_var = max(float(model.run_means.mean(axis=1).var(ddof=1)) - run_var / arms, 0.0)
    return difficulty, float(np.sqrt(run_var)), float(np.sqrt(seed_var))


def interaction_of(items: pd.DataFrame, metric: str) -> float:
    """The SD of a study's arm x item component: how far its arms differ item by item beyond their means."""
    model = fit_runs(items, metric)
    if model.components is None:
        raise SystemExit(f"{metric}: the arm x item component needs two or more arms and seeds")
    return float(np.sqrt(model.components.arm_item))


def simulate(
    difficulty: np.ndarray,
    run_sd: float,
    seed_sd: float,
    effects: list[float],
    seeds: int,
    rng: np.random.Generator,
    interaction_sd: float = 0.0,
) -> pd.DataFrame:
    """One study: arm k has the given effect; the long items table the evaluation writes."""
    seed_effects = rng.normal(0, seed_sd, size=seeds)
    item_sampling = float((difficulty * (1 - difficulty)).mean() / len(difficulty))
    shift_sd = float(np.sqrt(max(run_sd**2 - item_sampling, 0.0)))
    frames = []
    for k, effect in enumerate(effects):
        profile = rng.normal(0, interaction_sd, size=len(difficulty)) if interaction_sd else 0.0
        for seed in range(seeds):
            p = np.clip(difficulty + profile + seed_effects[seed] + rng.normal(0, shift_sd) + effect, 0, 1)
            scores = (rng.uniform(size=len(difficulty)) < p).astype(float)
            frames.append(
                pd.DataFrame(
                    {"arm": f"arm{k}", "seed": seed, "item_id": np.arange(len(difficulty)), "score": scores}
                )
            )
    table = pd.concat(frames, ignore_index=True)
    table["metric"] = "m"
    return table


def calls(
    difficulty: np.ndarray,
    run_sd: float,
    seed_sd: float,
    effects: list[float],
    seeds: int,
    studies: int,
    seed: int,
    interaction_sd: float = 0.0,
) -> tuple[pd.Series, float]:
    """(share of studies in which each arm is called better or worse, share with at least one such call)."""
    rng = np.random.default_rng(seed)
    per_arm = pd.Series(0.0, index=[f"arm{k}" for k in range(1, len(effects))])
    any_call = 0
    for _ in range(studies):
        table = compare_to_reference(
            simulate(difficulty, run_sd, seed_sd, effects, seeds, rng, interaction_sd), "arm0", ["m"]
        ).set_index("arm")
        called = table["verdict"].isin(["better", "worse"])
        per_arm += called.reindex(per_arm.index, fill_value=False).astype(float)
        any_call += bool(called.any())
    return per_arm / studies, any_call / studies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("items", type=Path, help="a real study's items.parquet")
    parser.add_argument("--metric", default="0shot/vqa")
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument(
        "--interaction-from",
        type=Path,
        help="a study whose arms differ: its arm x item component for the nulls",
    )
    args = parser.parse_args()
    difficulty, run_sd, seed_sd = noise_of(pd.read_parquet(args.items), args.metric)
    print(
        f"{args.items} {args.metric}: {len(difficulty)} items, run-to-run spread {run_sd:.4f}, "
        f"seed spread {seed_sd:.4f}"
    )
    print("null studies (3 identical arms):")
    for seeds in (2, 3, 5):
        per_arm, per_study = calls(difficulty, run_sd, seed_sd, [0.0] * 3, seeds, args.studies, seeds)
        print(
            f"  {seeds} seeds: false-positive rate {per_arm.mean():.3f} per comparison, {per_study:.3f} per study"
        )
    if args.interaction_from:
        interaction_sd = interaction_of(pd.read_parquet(args.interaction_from), args.metric)
        print(
            f"null studies with arm x item interaction (SD {interaction_sd:.3f}, from {args.interaction_from}):"
        )
        for arms in (2, 3):
            for seeds in (2, 3, 5):
                per_arm, per_study = calls(
                    difficulty,
                    run_sd,
                    seed_sd,
                    [0.0] * arms,
                    seeds,
                    args.studies,
                    200 + seeds,
                    interaction_sd,
                )
                print(
                    f"  {arms} arms, {seeds} seeds: false-positive rate {per_arm.mean():.3f} per comparison, "
                    f"{per_study:.3f} per study"
                )
    for arms in (2, 3):
        print(f"power ({arms} arms, the last better by k x the run-to-run spread):")
        for k in (1, 2, 3, 5):
            line = []
            for seeds in (2, 3, 5):
                effects = [0.0] * (arms - 1) + [k * run_sd]
                per_arm, _ = calls(difficulty, run_sd, seed_sd, effects, seeds, args.studies, 100 + seeds)
                line.append(f"{seeds} seeds {per_arm.iloc[-1]:.2f}")
            print(f"  effect {k} x spread ({k * run_sd:.3f}): " + ", ".join(line))


if __name__ == "__main__":
    main()
