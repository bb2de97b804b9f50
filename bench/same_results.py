"""Whether two results folders hold the same runs: for every trial both finished (the same trial id: the same
config and seed), its per-item scores side by side, and which model code (mm1core's code_version) and CPU each
folder's run trained on. The trial id does not hold the code: a run of another mm1core is the same trial, retrained.

What a suite measured from a clean clone is checked with against the working copy's results: the runs it re-trained
should be the working copy's to the last digit where both trained the same code on the same CPU model (training and
evaluation are deterministic), and may differ in rounding where the CPUs differ (bf16 kernels differ between CPUs);
where the code differs, identical scores say the change left the runs as they were.

Usage: python bench/same_results.py RESULTS_A RESULTS_B [--study NAME ...]. Prints one line per study and a total.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

KEY = ["trial_id", "metric", "item_id"]


def _finished(study_dir: Path) -> pd.DataFrame:
    trials = pd.read_parquet(study_dir / "trials.parquet")
    keep = [c for c in ("trial_id", "status", "cpu_model", "code_version", "adopted_from") if c in trials]
    return trials.loc[trials["status"] == "finished", keep].drop_duplicates("trial_id")


def compare(a: Path, b: Path, study: str) -> dict:
    left, right = a / study, b / study
    if not (left / "items.parquet").exists() or not (right / "items.parquet").exists():
        return {"study": study, "shared": 0}
    shared = _finished(left).merge(_finished(right), on="trial_id", suffixes=("_a", "_b"))
    if shared.empty:
        return {"study": study, "shared": 0}
    items = pd.read_parquet(left / "items.parquet", columns=[*KEY, "score"]).merge(
        pd.read_parquet(right / "items.parquet", columns=[*KEY, "score"]), on=KEY, suffixes=("_a", "_b")
    )
    items = items[items["trial_id"].isin(shared["trial_id"])]
    differs = (items["score_a"] - items["score_b"]).abs()
    same_cpu, same_code = (
        shared[f"{column}_a"] == shared[f"{column}_b"]
        if {f"{column}_a", f"{column}_b"} <= set(shared)
        else pd.Series(False, index=shared.index)
        for column in ("cpu_model", "code_version")
    )
    # Other code only where both folders say which: a folder from before code_version was recorded says nothing.
    other_code = (
        shared["code_version_a"].notna() & shared["code_version_b"].notna() & ~same_code
        if {"code_version_a", "code_version_b"} <= set(shared)
        else pd.Series(False, index=shared.index)
    )
    alike = same_cpu & same_code
    per_trial = items.assign(d=differs).groupby("trial_id")["d"].max()
    identical = set(per_trial[per_trial == 0].index)
    return {
        "study": study,
        "shared": len(shared),
        "alike": int(alike.sum()),
        "other_code": int(other_code.sum()),
        "identical": len(identical),
        "identical_alike": int(shared.loc[alike, "trial_id"].isin(identical).sum()),
        "items": len(items),
        "max_diff": float(differs.max()) if len(items) else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--study", action="append", help="only these studies (default: every study in both)")
    args = parser.parse_args()
    studies = args.study or sorted(
        p.parent.name
        for p in args.a.glob("*/trials.parquet")
        if (args.b / p.parent.name / "trials.parquet").exists()
    )
    rows = [compare(args.a, args.b, s) for s in studies]
    for r in rows:
        if not r["shared"]:
            print(f"{r['study']}: no finished trial in both")
            continue
        print(
            f"{r['study']}: {r['shared']} trials finished in both ({r['alike']} by the same model code on the same "
            f"CPU model, {r['other_code']} by other model code), {r['identical']} identical to the last digit "
            f"({r['identical_alike']} of the alike ones) over {r['items']} item scores; largest difference "
            f"{r['max_diff']:.3g}"
        )
    shared = sum(r["shared"] for r in rows)
    print(
        f"in all: {shared} trials in both, {sum(r.get('identical', 0) for r in rows)} identical, "
        f"{sum(r.get('alike', 0) for r in rows)} by the same model code on the same CPU model "
        f"({sum(r.get('identical_alike', 0) for r in rows)} of them identical), "
        f"{sum(r.get('other_code', 0) for r in rows)} by other model code"
    )


if __name__ == "__main__":
    main()
