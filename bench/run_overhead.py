"""What running a study costs beyond its trials' own work: a study of many short `tiny` trials on 2 slots.

    .venv/bin/python bench/run_overhead.py [--trials 16] [--steps 200] [--repeats 3]

Runs `mm1ablate run` on a fresh results folder (the real CLI: Ray, MLflow, Parquet, the report; the machine's
calibration of the trial shape, once per machine, is done before the clock starts), and compares its
wall time with the ideal: the trials' own recorded work (each trial's wall time inside its worker) spread over the
slots. The ratio is the overhead a search or ASHA multiplies.
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


def one_run(trials: int, steps: int) -> tuple[float, float, int]:
    """(wall seconds of the CLI, ideal seconds, slots)."""
    lrs = ", ".join(f"{1e-3 * (1 + i / trials):.6f}" for i in range(trials))
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "study.yaml").write_text(STUDY.format(steps=steps, lrs=lrs))
        cli = str(Path(sys.executable).with_name("mm1ablate"))
        # The machine's calibration of the trial shape happens once per machine, not per study: done before timing.
        subprocess.run([cli, "plan", "study.yaml"], cwd=root, check=True, capture_output=True)
        started = time.perf_counter()
        subprocess.run([cli, "run", "study.yaml"], cwd=root, check=True, capture_output=True)
        wall = time.perf_counter() - started
        rows = pd.read_parquet(Path(root) / "results" / "overhead" / "trials.parquet")
    slots = os.cpu_count() or 1
    return wall, rows["wall_time_s"].sum() / slots, slots


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run(args.trials, args.steps) for _ in range(args.repeats)]
    ratios = [wall / ideal for wall, ideal, _ in runs]
    for wall, ideal, slots in runs:
        print(f"wall {wall:.1f} s, ideal {ideal:.1f} s on {slots} slots: {wall / ideal:.2f}x")
    print(f"median {statistics.median(ratios):.2f}x over {len(runs)} runs")


if __name__ == "__main__":
    main()
