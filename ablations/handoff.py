"""What passes between the parts of a study beside the results files: the keys of the reports a trial sends the driver
through `tune.report` (the words the trainable, the driver and the searcher agree on), and the call that has
`dashboards` report on the results files."""

from __future__ import annotations

import shutil
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
    "Reporter",
    "checkpoint_path",
    "machines_log",
    "reports_log",
    "write_index",
    "write_report",
]

FINAL_KEY = "final"  # set on the last report of a run, which also carries its per-item scores
RUN_KEY = "run"  # the trial id of the training run a report is about
OBJECTIVE = "objective"  # the searcher's and the scheduler's metric: the mean over a Tune trial's runs
OBJECTIVE_FINAL = "objective_final"  # set on the report of the objective from the runs' final evaluations
DIVERGED_KEY = "diverged"  # the last report of a run whose loss or gradient became non-finite: why, in words
REPORTS_LOG_SUFFIX = ".reports.jsonl"
MACHINES_LOG_SUFFIX = ".machines.jsonl"


def checkpoint_path(checkpoint_dir: Path, trial_id: str) -> Path:
    """Where a run's multimodal stage keeps its checkpoint; the core keeps the fine-tuning stage's beside it, with
    the suffix `.sft.pt`."""
    return checkpoint_dir / f"{trial_id}.pt"


def reports_log(checkpoint_dir: Path, trial_id: str) -> Path:
    """Every report of a run, one JSON line each, beside its checkpoint: what a resumed run replays to its new driver
    and what `status` reads a running trial's progress from."""
    return checkpoint_dir / f"{trial_id}{REPORTS_LOG_SUFFIX}"


def machines_log(checkpoint_dir: Path, trial_id: str) -> Path:
    """Each go at a run, one JSON line each, beside its checkpoint: the machine it trained on and whether it resumed
    from the checkpoint, so that a run trained in parts names every machine that trained it."""
    return checkpoint_dir / f"{trial_id}{MACHINES_LOG_SUFFIX}"


def write_report(study_dir: Path, results_root: Path, *, tracking_uri: str | None, nice: int = 0) -> Path:
    """The study's report and the results index, written by `python -m dashboards` from the results files alone
    (ablations never imports dashboards): by the reporter `prestart_reporter` started for it, if there is one. Raises
    RuntimeError with the reporter's last words when it fails."""
    return Reporter.started(study_dir, results_root, tracking_uri=tracking_uri, nice=nice).write()


def write_index(results_root: Path) -> Path:
    """results/index.html alone, by `python -m dashboards --index`: after a suite's run has recorded its end, which
    its studies' reports came before. Raises RuntimeError with its last words when it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "dashboards", "--index", str(results_root)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(last_line(done.stderr) or f"python -m dashboards exited with {done.returncode}")
    return results_root / "index.html"


# A run's reporter waits at low priority: it must not slow the driver, which hands the trials their work.
REPORTER_NICE = 10

_prestarted: dict[tuple[str, str, str | None, int], Reporter] = {}


def _reporter_key(
    study_dir: Path, results_root: Path, tracking_uri: str | None, nice: int
) -> tuple[str, str, str | None, int]:
    """What a reporter's process was started with: a prestarted one serves only a run that would start the same."""
    return (str(study_dir), str(results_root), tracking_uri, nice)


def prestart_reporter(
    study_dir: Path, results_root: Path, *, tracking_uri: str | None, nice: int = 0
) -> Reporter:
    """Start the reporter of a study about to run now, before its driver imports Ray and Tune: its own imports (2
    CPU-s) then take the core that the driver's leave idle, and not one that the first trials' workers need while
    they start (bench/README.md, run overhead). `Reporter.started` takes it; one never taken ends with its driver."""
    key = _reporter_key(study_dir, results_root, tracking_uri, nice)
    if key not in _prestarted:
        _prestarted[key] = Reporter(study_dir, results_root, tracking_uri=tracking_uri, nice=nice)
    return _prestarted[key]


class Reporter:
    """`python -m dashboards` started before its report is due, so that a run ends with the report to make and not
    also a second of imports (pandas, scipy, plotly) to pay: they load at low priority, beside the driver's own
    imports where `mm1ablate run` starts it (`prestart_reporter`), otherwise while Ray and the trials start
    (bench/README.md, run overhead). It writes when told to (`write`); closed untold, it ends having written nothing.
    """

    def __init__(
        self, study_dir: Path, results_root: Path, *, tracking_uri: str | None, nice: int = 0
    ) -> None:
        # `nice` rather than a preexec_fn: the driver has threads by now, and a child must not run Python before exec.
        lower = ["nice", "-n", str(nice)] if nice and shutil.which("nice") else []
        command = [
            *lower,
            sys.executable,
            "-m",
            "dashboards",
            str(study_dir),
            "--index",
            str(results_root),
            "--when-told",
        ]
        if tracking_uri:
            command += ["--tracking-uri", tracking_uri]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Not in the terminal's process group: a Ctrl-C meant for the run must not take its report with it.
            start_new_session=True,
        )

    @classmethod
    def started(
        cls, study_dir: Path, results_root: Path, *, tracking_uri: str | None, nice: int = 0
    ) -> Reporter:
        """The one `prestart_reporter` started for this study, or a new one."""
        key = _reporter_key(study_dir, results_root, tracking_uri, nice)
        return _prestarted.pop(key, None) or cls(
            study_dir, results_root, tracking_uri=tracking_uri, nice=nice
        )

    def write(self) -> Path:
        """The report's path, once written. Raises RuntimeError with the reporter's last words when it fails."""
        stdout, stderr = self.process.communicate("write\n")
        if self.process.returncode != 0:
            raise RuntimeError(
                last_line(stderr) or f"python -m dashboards exited with {self.process.returncode}"
            )
        return Path(stdout.splitlines()[0])

    def close(self) -> None:
        """No report after all: the reporter reads the end of its input and ends."""
        if self.process.poll() is None:
            self.process.communicate("")
