"""A suite's wall time with its studies one after another against two at a time, on the same machine and trials.

    .venv/bin/python bench/suite_side_by_side.py [--steps 150] [--studies 3]

The suite is shaped like the findings suite where it idles: each study holds the reference arm (shared, trained once)
and three trials to train, so that on 2 slots one after another each study's last trial runs alone. The
trials are the `small` preset's (64 px, fp32 or bf16 as this CPU trains) with short budgets, one seed. The same suite
runs twice, each time from a fresh results folder with the CLI a user runs: `mm1ablate run SUITE --drivers 1`, then
`--drivers 2`. The trial shapes are calibrated before either clock starts, so each plan's estimate is printed beside
its measurement. Figures are recorded in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

STUDY = """
name: {name}
reference:
  preset: small
  overrides:
    eval.num_items: 140
axes:
  - name: {axis}
    values: {values}
seeds: [0]
resources: {{cpu: 1}}
budget:
  encoder: {{steps: 60}}
  multimodal: {{steps: {steps}}}
"""

# Each with three trials to train: the reference (64 px, 5:5:1, lr 2e-3) trains in the first and counts
# in the others.
AXES = [
    ("bench-resolution", "resolution", "[32, 64, 96]"),
    ("bench-data", "data_ratio", '["5:5:1", "1:0:0", "0:1:0", "1:1:0"]'),
    ("bench-lr", "train.lr", "[0.002, 0.001, 0.004, 0.008]"),
]


def write_suite(folder: Path, steps: int, studies: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, axis, values in AXES[:studies]:
        (folder / f"{name}.yaml").write_text(STUDY.format(name=name, axis=axis, values=values, steps=steps))
        names.append(f"{name}.yaml")
    (folder / "suite.yaml").write_text(f"suite: bench-side-by-side\nstudies: [{', '.join(names)}]\n")
    return folder


def run(cli: str, suite: Path, results: Path, drivers: int) -> dict:
    env = os.environ | {"MM1ABLATE_RESULTS": str(results)}
    started = time.monotonic()
    done = subprocess.run(
        [cli, "run", str(suite), "--drivers", str(drivers)], env=env, capture_output=True, text=True
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"--drivers {drivers} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    plan = re.search(r"about ([^;]+?) of wall time on (\d+) slots, ([^\n]+)", done.stdout)
    trials = pd.concat(pd.read_parquet(p) for p in results.glob("*/trials.parquet"))
    trained = trials[trials.adopted_from.isna()]
    return {
        "drivers": drivers,
        "wall_s": wall,
        "plan": plan.group(0) if plan else "-",
        "trained": len(trained),
        "trial_work_s": float(trained.wall_time_s.sum()),
        "parts": json.loads((results / "suites" / "bench-side-by-side.json").read_text())["runs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--studies", type=int, default=3)
    args = parser.parse_args()
    cli = str(Path(sys.executable).with_name("mm1ablate"))
    with tempfile.TemporaryDirectory() as tmp:
        suite = write_suite(Path(tmp) / "suite", args.steps, args.studies)
        # Calibrate the shapes (cached per machine) before either clock starts.
        subprocess.run(
            [cli, "plan", str(suite)], env=os.environ | {"MM1ABLATE_RESULTS": f"{tmp}/plan"}, check=True
        )
        rows = [run(cli, suite, Path(tmp) / f"results-{d}", d) for d in (1, 2)]
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    print(f"CPU: {model}, {os.cpu_count()} cores")
    for r in rows:
        print(
            f"--drivers {r['drivers']}: {r['wall_s']:.0f} s wall, {r['trained']} trials trained "
            f"({r['trial_work_s']:.0f} s of trial work, {r['trial_work_s'] / 2:.0f} s on 2 slots at best); "
            f"plan: {r['plan']}"
        )
    print(f"two at a time / one after another: {rows[1]['wall_s'] / rows[0]['wall_s']:.2f}")


if __name__ == "__main__":
    main()
