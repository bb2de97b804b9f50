"""What running a study costs beyond its trials' own work: a study of many short `tiny` trials on 2 slots.

    .venv/bin/python bench/run_overhead.py [--trials 16 48] [--steps 200] [--repeats 3]

Runs `mm1ablate run` on a fresh results folder (the real CLI: Ray, MLflow, Parquet, the report; the machine's
calibration of the trial shape, once per machine, and the folder's MLflow store, made by the first study run in it,
are made before the clock starts; `--fresh-store` leaves the store to the study), and compares its wall time with
the ideal: the trials' own recorded work (each trial's wall time inside its worker) spread over the
slots. With two study sizes it splits what is left into a fixed cost per study (Ray's and Tune's start, the first
worker's imports, the report) and a cost per trial (what a search or ASHA multiplies): overhead = fixed + per trial
x trials / slots.

Each run also says where its overhead went: before the first trial's clock started (Python, Ray's and Tune's start,
the first workers' imports), between the trials (a slot idle between two trials, or while the last trial finishes
alone) and after the last trial (Tune's end, the report, MLflow's last calls).

The trials' wall time counts as work whatever slowed it, the driver's own use of the CPU included; their CPU time
(one thread each) does not, so it is printed beside as a stricter ideal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

STUDY = """
name: overhead
reference:
  preset: tiny
  overrides:
    train.steps: {steps}
axes:
  - name: train.lr
    values: [{lrs}]
seeds: [0]
resources: {{cpu: 1}}
"""


def one_run(trials: int, steps: int, fresh_store: bool) -> tuple[float, float, int, float, str]:
    """(wall seconds of the CLI, ideal seconds, slots, ideal seconds from the trials' CPU time, where the rest went)."""
    lrs = ", ".join(f"{1e-3 * (1 + i / trials):.6f}" for i in range(trials))
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "study.yaml").write_text(STUDY.format(steps=steps, lrs=lrs))
        cli = str(Path(sys.executable).with_name("mm1ablate"))
        # The machine's calibration of the trial shape happens once per machine, not per study: done before timing.
        subprocess.run([cli, "plan", "study.yaml"], cwd=root, check=True, capture_output=True)
        if not fresh_store:  # as an earlier study in the folder leaves it
            (Path(root) / "results").mkdir(exist_ok=True)
            store = f"sqlite:///{Path(root) / 'results' / 'mlflow.db'}"
            subprocess.run(
                [sys.executable, "-c", f"import mlflow; mlflow.MlflowClient({store!r}).search_experiments()"],
                check=True,
                capture_output=True,
            )
        started, started_at = time.perf_counter(), time.time()
        subprocess.run([cli, "run", "study.yaml"], cwd=root, check=True, capture_output=True)
        wall, ended_at = time.perf_counter() - started, time.time()
        rows = pd.read_parquet(Path(root) / "results" / "overhead" / "trials.parquet")
    slots = os.cpu_count() or 1
    return (
        wall,
        rows["wall_time_s"].sum() / slots,
        slots,
        rows["cost/cpu_s"].sum() / slots,
        _breakdown(rows, started_at, ended_at, slots),
    )


def _breakdown(rows: pd.DataFrame, started_at: float, ended_at: float, slots: int) -> str:
    """Where the overhead went: before the first trial's clock started, between the trials (the slots' idle time
    while trials ran: the gaps between two trials on a slot, and the last trial's slot working alone), and after
    the last trial's result reached the driver. A trial's start is taken as its recorded end less its wall time."""
    ends = rows["finished_at"]
    starts = ends - rows["wall_time_s"]
    between = (slots * (ends.max() - starts.min()) - rows["wall_time_s"].sum()) / slots
    return f"start {starts.min() - started_at:.1f} s, between trials {between:.1f} s, end {ended_at - ends.max():.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, nargs="+", default=[16])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fresh-store", action="store_true", help="the study creates the folder's MLflow store"
    )
    args = parser.parse_args()
    overheads: dict[int, float] = {}
    slots = 1
    for trials in args.trials:
        runs = [one_run(trials, args.steps, args.fresh_store) for _ in range(args.repeats)]
        for wall, ideal, slots, cpu, breakdown in runs:
            print(
                f"{trials} trials of {args.steps} steps: wall {wall:.1f} s, ideal {ideal:.1f} s on {slots} slots: "
                f"{wall / ideal:.2f}x (from their CPU time: {cpu:.1f} s, {wall / cpu:.2f}x); overhead "
                f"{wall - ideal:.1f} s: {breakdown}"
            )
        print(
            f"{trials} trials: median {statistics.median(r[0] / r[1] for r in runs):.2f}x over {len(runs)} runs"
            f" (from their CPU time: {statistics.median(r[0] / r[3] for r in runs):.2f}x)"
        )
        overheads[trials] = statistics.median(r[0] - r[1] for r in runs)
    if len(overheads) >= 2:
        (few, o_few), (many, o_many) = min(overheads.items()), max(overheads.items())
        per_slot_trial = (o_many - o_few) / (many - few) * slots
        fixed = o_few - per_slot_trial * few / slots
        print(f"overhead: {fixed:.1f} s fixed per study, {per_slot_trial:+.2f} s per trial on its slot")


if __name__ == "__main__":
    main()
