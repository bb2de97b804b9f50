"""What passes between the parts of a study beside the results files: the keys of the reports a trial sends the driver
through `tune.report` (the words the trainable, the driver and the searcher agree on), and the call that has
`dashboards` report on the results files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mm1core.schema import last_line

__all__ = [
    "DIVERGED_KEY",
    "FINAL_KEY",
    "OBJECTIVE",
    "OBJECTIVE_FINAL",
    "RUN_KEY",
    "write_report",
]

FINAL_KEY = "final"  # set on the last report of a run, which also carries its per-item scores
RUN_KEY = "run"  # the trial id of the training run a report is about
OBJECTIVE = "objective"  # the searcher's and the scheduler's metric: the mean over a Tune trial's runs
OBJECTIVE_FINAL = "objective_final"  # set on the report of the objective from the runs' final evaluations
DIVERGED_KEY = "diverged"  # the last report of a run whose loss or gradient became non-finite: why, in words


def write_report(study_dir: Path, results_root: Path, *, tracking_uri: str | None) -> Path:
    """The study's report and the results index, written by `python -m dashboards` from the results files alone
    (ablations never imports dashboards). Raises RuntimeError with the reporter's last words when it fails."""
    command = [sys.executable, "-m", "dashboards", str(study_dir), "--index", str(results_root)]
    if tracking_uri:
        command += ["--tracking-uri", tracking_uri]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(last_line(done.stderr) or f"python -m dashboards exited with {done.returncode}")
    return Path(done.stdout.splitlines()[0])
