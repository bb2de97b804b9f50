"""What Ray Tune itself costs a study of many short trials: the floor under `bench/run_overhead.py`.

    .venv/bin/python bench/tune_floor.py [--trials 16] [--work 5] [--repeats 3] [--no-torch]

Bare Ray Tune, started as `mm1ablate run` starts it (the same embedded `ray.init`, `reuse_actors`, 1 CPU a trial,
no loggers), runs `--trials` function trials on the machine's slots; each imports torch, as every trial of a study
must, then works for exactly `--work` seconds of its own clock (one thread of Python arithmetic), and nothing else:
no MLflow, no Parquet, no report, no model. The ratio of the script's wall time to the trials' work over the slots is
what any study run through Ray Tune pays on this machine before a line of ours runs; `--no-torch` says how much of it
is the workers' torch import.
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

DRIVER = r"""
import os, sys, time
started = time.time()
from ablations.run import _without_unused_helpers  # first: it sets Tune's environment as a study's driver has it
import ray
from ray import tune

trials, work, with_torch, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "torch", sys.argv[4]


def trainable(config):
    if with_torch:
        import torch

        torch.set_num_threads(1)
    begun = time.time()
    total = 0
    while time.time() - begun < work:
        total += sum(range(1000))
    with open(os.path.join(out, str(config["i"])), "w") as f:
        f.write(f"{begun} {time.time() - begun}")
    tune.report({"done": 1})


with _without_unused_helpers():
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
             _system_config={"prestart_worker_first_driver": False})
tune.Tuner(
    tune.with_resources(trainable, {"cpu": 1}),
    param_space={"i": tune.grid_search(list(range(trials)))},
    tune_config=tune.TuneConfig(reuse_actors=True),
    run_config=tune.RunConfig(storage_path=os.path.join(out, "ray"), verbose=0),
).fit()
ray.shutdown()
print(started, time.time())
"""


def one_run(trials: int, work: float, with_torch: bool) -> tuple[float, float, float]:
    """(wall seconds from the driver's launch to Ray's shutdown, ideal seconds, seconds from its launch until the
    first trial's work began)."""
    with tempfile.TemporaryDirectory() as out:
        launched = time.time()
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, str(trials), str(work), "torch" if with_torch else "none", out],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        ended = float(done.stdout.split()[-1])
        begun, worked = zip(
            *(map(float, (Path(out) / str(i)).read_text().split()) for i in range(trials)), strict=True
        )
    slots = os.cpu_count() or 1
    return ended - launched, sum(worked) / slots, min(begun) - launched


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--work", type=float, default=5.0, help="seconds of work per trial")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="trials that do not import torch")
    args = parser.parse_args()
    ratios = []
    for _ in range(args.repeats):
        wall, ideal, start = one_run(args.trials, args.work, not args.no_torch)
        ratios.append(wall / ideal)
        print(
            f"{args.trials} trials of {args.work:g} s{' (no torch)' if args.no_torch else ''}: wall {wall:.1f} s, "
            f"ideal {ideal:.1f} s: {wall / ideal:.2f}x; overhead {wall - ideal:.1f} s, of which {start:.1f} s "
            "before the first trial's work",
            flush=True,
        )
    print(f"median {statistics.median(ratios):.2f}x over {len(ratios)} runs")


if __name__ == "__main__":
    main()
