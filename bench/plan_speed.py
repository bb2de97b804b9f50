"""How fast a study of thousands of trials is validated and planned, in-process and through the CLI.

Usage: python bench/plan_speed.py [--repeats 7]. Prints medians; figures are recorded in bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = """
name: plan-bench
reference:
  preset: small
axes:
  - name: train.lr
    values: [{lrs}]
  - name: train.weight_decay
    values: [{wds}]
  - name: lm.width
    values: [64, 128, 192, 256]
  - name: data_ratio
    values: [5:5:1, 1:0:0, 0:1:0, 1:1:0, 1:1:1]
design: grid
seeds: [0, 1, 2]
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    lrs = ", ".join(f"{x:.1e}" for x in (1e-4 * 1.5**i for i in range(10)))
    wds = ", ".join(f"{x:.2f}" for x in (0.01 * (i + 1) for i in range(5)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan-bench.yaml"
        path.write_text(STUDY.format(lrs=lrs, wds=wds))
        from ablations import load_study, plan

        in_process = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            trials = plan(load_study(path))
            in_process.append(time.perf_counter() - start)
        cli = []
        mm1ablate = str(Path(sys.executable).with_name("mm1ablate"))
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([mm1ablate, "plan", str(path)], cwd=tmp, check=True, capture_output=True)
            cli.append(time.perf_counter() - start)
    print(f"{len(trials)} trials ({len(trials) // 3} arms x 3 seeds)")
    print(
        f"load + validate + plan, in process: median {statistics.median(in_process) * 1000:.0f} ms "
        f"(min {min(in_process) * 1000:.0f}, max {max(in_process) * 1000:.0f}) over {args.repeats} runs"
    )
    print(
        f"`mm1ablate plan` end to end (new process, table printed): median {statistics.median(cli) * 1000:.0f} ms "
        f"(min {min(cli) * 1000:.0f}, max {max(cli) * 1000:.0f})"
    )


if __name__ == "__main__":
    main()
