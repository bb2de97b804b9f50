"""results/<study>/: trials.parquet (one row per trial), curves.parquet (per step), items.parquet (per eval item).

Each ended trial (finished, stopped early or failed) is written at once as its own part files under parts/; the
study tables are rebuilt from the parts at most every CONSOLIDATE_EVERY_S seconds while a study runs (a study of many
short trials must not rewrite its tables after each) and whenever a run starts or ends. Every write goes to a
temporary file and is renamed into place, so a killed driver never leaves a torn table and never loses a trial that
had ended: the next run, `status` or `report` consolidates what it left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ablations.handoff import REPORTS_LOG_SUFFIX, checkpoint_path
from mm1core.storage import append_jsonl, atomic_write, atomic_write_text, quarantine, read_jsonl

__all__ = [
    "CONSOLIDATE_EVERY_S",
    "Progress",
    "RUN_LOCK",
    "ResultsStore",
    "axis_cell",
    "StudyBusy",
    "config_json",
    "checkpoints_begun_by_other_code",
    "finished_unlike",
    "hold_lock",
    "study_runner",
    "this_process",
    "trial_statuses",
    "record_checkpoint_code",
    "unended_progress",
]

CONSOLIDATE_EVERY_S = 20.0
RUN_LOCK = ".run.lock"  # held by the study's one runner for the whole run


def trial_statuses(study_dir: Path) -> dict[str, str]:
    """trial_id -> the status recorded for it (finished, stopped, failed, diverged)."""
    path = study_dir / "trials.parquet"
    if not path.exists():
        return {}
    table = pq.read_table(path, columns=["trial_id", "status"]).to_pydict()
    return dict(zip(table["trial_id"], table["status"], strict=True))


def finished_unlike(study_dir: Path, column: str, current: str) -> dict[str, str]:
    """trial_id -> what a finished trial recorded in `column`, for each that recorded something other than `current`:
    the model code that trained it (code_version), the CPU it ran on (cpu_model). A run counts such a trial as
    finished, as it would one of this code on this machine, and says so."""
    path = study_dir / "trials.parquet"
    if not path.exists():
        return {}
    table = pq.read_table(path).to_pydict()
    recorded = table.get(column, [None] * len(table["trial_id"]))
    return {
        trial_id: value
        for trial_id, status, value in zip(table["trial_id"], table["status"], recorded, strict=True)
        if status == "finished" and value is not None and value != current
    }


# checkpoints/<trial id>.code: the model code (mm1core's code_version) that began the run its checkpoint continues.
CHECKPOINT_CODE_SUFFIX = ".code"


def _has_checkpoint(study_dir: Path, trial_id: str) -> bool:
    multimodal = checkpoint_path(study_dir / "checkpoints", trial_id)
    return multimodal.exists() or multimodal.with_suffix(".sft.pt").exists()


def _code_record(study_dir: Path, trial_id: str) -> Path:
    return checkpoint_path(study_dir / "checkpoints", trial_id).with_suffix(CHECKPOINT_CODE_SUFFIX)


def checkpoints_begun_by_other_code(study_dir: Path, trial_ids: list[str], current: str) -> dict[str, str]:
    """trial id -> the code that began it, for each unfinished run whose checkpoint other model code began: resumed,
    it would be part one code's run and part another's, while its row names only the code that finished it.
    Checkpoints from before this record name no code, and are not counted."""
    found = {}
    for trial_id in trial_ids:
        if not _has_checkpoint(study_dir, trial_id):
            continue
        try:
            began = _code_record(study_dir, trial_id).read_text().strip()
        except OSError:
            continue
        if began and began != current:
            found[trial_id] = began
    return found


def record_checkpoint_code(study_dir: Path, trial_ids: list[str], current: str) -> None:
    """`current` begins each of these runs that has no checkpoint to resume from; a resumed run keeps the code that
    began it, so that it is still named if the code changes again before it finishes."""
    (study_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for trial_id in trial_ids:
        if not _has_checkpoint(study_dir, trial_id):
            atomic_write_text(_code_record(study_dir, trial_id), current)


def study_runner(study_dir: Path) -> str | None:
    """Who runs the study now, as its runner wrote it on the lock it holds ("pid 12 on host, since ..."), or None."""
    path = study_dir / RUN_LOCK
    if not path.exists():
        return None
    taken = hold_lock(path, "")
    if isinstance(taken, str):
        return taken
    taken.close()
    return None


def this_process() -> str:
    """How a lock's holder names itself, for whoever is refused it."""
    return f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def hold_lock(path: Path, holder: str) -> IO[str] | str:
    """Take `path`'s lock without waiting and write `holder` in it: the open file, whose lock lasts until it is closed
    (or the process ends, however it ends: POSIX locks, also on shared storage). If another process holds the lock,
    what that process wrote in it instead."""
    lock = open(path, "a+")  # noqa: SIM115 - held open for as long as the lock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        held_by = lock.read().strip() or "another process"
        lock.close()
        return held_by
    lock.seek(0)
    lock.truncate()
    lock.write(holder)
    lock.flush()
    return lock


@dataclass(frozen=True)
class Progress:
    """How far a run that has not ended got, by its last report."""

    stage: str  # encoder, multimodal or sft
    step: int
    total_steps: int
    reported_at: float  # seconds since the epoch

    @property
    def multimodal_share(self) -> float:
        """The share of its multimodal training done: what is left of a run is mostly that stage."""
        if self.stage == "multimodal":
            return self.step / max(self.total_steps, 1)
        return 1.0 if self.stage == "sft" else 0.0


def unended_progress(study_dir: Path, ended: set[str]) -> dict[str, Progress]:
    """trial id -> the progress of each run that has reported and not ended, read from the log each trial keeps beside
    its checkpoint (what a resumed run starts from; the driver's journal lacks the stage)."""
    found = {}
    for log in sorted((study_dir / "checkpoints").glob(f"*{REPORTS_LOG_SUFFIX}")):
        trial_id = log.name.removesuffix(REPORTS_LOG_SUFFIX)
        events = [] if trial_id in ended else read_jsonl(log)
        if events:
            last = events[-1]
            found[trial_id] = Progress(
                last["stage"], int(last["step"]), int(last["total_steps"]), log.stat().st_mtime
            )
    return found


def multimodal_shares_done(study_dir: Path) -> dict[str, float]:
    """trial id -> the share of its multimodal stage that a run left in its checkpoint (resumed from there)."""
    found = unended_progress(study_dir, set())
    return {trial_id: p.multimodal_share for trial_id, p in found.items() if p.multimodal_share > 0}


def _write_atomic(table: pa.Table, path: Path) -> None:
    # Per-process temporary names (atomic_write): a `status` may consolidate beside a running driver.
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


class StudyBusy(RuntimeError):
    """Another `mm1ablate run` of the same study holds its results folder."""


class ResultsStore:
    def __init__(self, study_dir: Path) -> None:
        self.dir = study_dir
        self.parts = study_dir / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        self.journal = study_dir / "journal"
        self._consolidated_at = float("-inf")

    @property
    def trials_path(self) -> Path:
        return self.dir / "trials.parquet"

    @property
    def curves_path(self) -> Path:
        return self.dir / "curves.parquet"

    @property
    def items_path(self) -> Path:
        return self.dir / "items.parquet"

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """One runner per study: held for the whole run by a lock on `.run.lock`, which the kernel releases when the
        process ends, however it ends (POSIX locks: also on shared storage). A second runner is refused at once,
        told who holds the study, instead of training every trial twice."""
        return self.lock_of(
            self.dir,
            what=f"study {self.dir.name!r}",
            then=f"`mm1ablate status {self.dir.name}` shows its progress",
        )

    @staticmethod
    @contextlib.contextmanager
    def lock_of(folder: Path, *, what: str, then: str = "") -> Iterator[None]:
        """`folder`'s run lock, held by this process for the block; StudyBusy, naming `what`, if another holds it."""
        taken = hold_lock(folder / RUN_LOCK, this_process())
        if isinstance(taken, str):
            raise StudyBusy(
                f"{what} is already running ({taken}); wait for it, or stop that run first"
                + (f". {then}" if then else "")
            )
        with taken:
            yield

    def statuses(self) -> dict[str, str]:
        return trial_statuses(self.dir)

    def trials_of_search(self, name: str) -> list[dict[str, Any]]:
        """{trial_id, arm, seed} of every run recorded for the Optuna study `name`."""
        if not self.trials_path.exists():
            return []
        rows = pq.read_table(self.trials_path).to_pylist()
        return [
            {"trial_id": r["trial_id"], "arm": r["arm"], "seed": r["seed"]}
            for r in rows
            if r.get("search") == name
        ]

    def journal_append(self, trial_id: str, step: int, metrics: dict[str, float]) -> None:
        """A running trial's metrics as they arrive, one line per report: what a killed driver had received is on
        disk, so the trial's resumed run keeps its whole learning curve."""
        append_jsonl(self.journal / f"{trial_id}.jsonl", {"step": step, "metrics": metrics})

    def journal_read(self, trial_id: str) -> list[tuple[int, dict[str, float]]]:
        return [(int(e["step"]), e["metrics"]) for e in read_jsonl(self.journal / f"{trial_id}.jsonl")]

    def save_trial(
        self, row: dict[str, Any], curves: list[dict[str, Any]], items: list[dict[str, Any]]
    ) -> None:
        """Record one trial (finished, stopped or failed); the study tables follow within CONSOLIDATE_EVERY_S."""
        trial_id = row["trial_id"]
        _write_atomic(pa.Table.from_pylist([row]), self.parts / f"{trial_id}.trial.parquet")
        if curves:
            _write_atomic(pa.Table.from_pylist(curves), self.parts / f"{trial_id}.curves.parquet")
        if items:
            _write_atomic(pa.Table.from_pylist(items), self.parts / f"{trial_id}.items.parquet")
        (self.journal / f"{trial_id}.jsonl").unlink(missing_ok=True)  # its curve is in the parts now
        if time.monotonic() - self._consolidated_at >= CONSOLIDATE_EVERY_S:
            self.consolidate()

    def consolidate(self) -> None:
        self._consolidated_at = time.monotonic()
        read, damaged = {}, False
        for part in sorted(self.parts.glob("*.parquet")):
            try:
                read[part] = pq.read_table(part)
            except (OSError, pa.ArrowException) as err:
                self._quarantine_trial(part.name.split(".", 1)[0], f"{part.name}: {err}")
                damaged = True
        for kind, path in (
            ("trial", self.trials_path),
            ("curves", self.curves_path),
            ("items", self.items_path),
        ):
            tables = [
                read[part]
                for part in sorted(read)
                if part.name.endswith(f".{kind}.parquet") and part.exists()
            ]
            if not tables:
                if damaged:  # the table may still hold the trials whose parts were moved aside
                    path.unlink(missing_ok=True)
                continue
            # Failed trials lack metric columns and finished ones have a null error: permissive promotion unifies
            # them (missing columns become nulls, int widens to float where parts disagree).
            _write_atomic(pa.concat_tables(tables, promote_options="permissive"), path)

    def set_aside(self, trial_ids: set[str], why: str) -> None:
        """Take these trials' records out of the study, kept in parts/`why`/ (a later one replaces an earlier), and
        delete their checkpoints: the next run trains them from the start. A trial's row goes first, so a kill
        half way leaves it untrained rather than finished without its items."""
        aside = self.parts / why
        aside.mkdir(exist_ok=True)
        for trial_id in sorted(trial_ids):
            for kind in ("trial", "curves", "items"):
                part = self.parts / f"{trial_id}.{kind}.parquet"
                if part.exists():
                    os.replace(part, aside / part.name)
            self._delete_checkpoints(trial_id)
        import pyarrow.compute as pc

        for path in (self.trials_path, self.curves_path, self.items_path):
            if path.exists():
                table = pq.read_table(path)
                keep = pc.invert(
                    pc.is_in(table["trial_id"], value_set=pa.array(sorted(trial_ids), pa.string()))
                )
                _write_atomic(table.filter(keep), path)

    def start_over(self, trial_ids: set[str]) -> None:
        """These unfinished runs train again from step 0: their checkpoints, report logs and what the driver had
        received of them are deleted (a resumed run's replayed reports would otherwise stand for the new run's)."""
        for trial_id in sorted(trial_ids):
            self._delete_checkpoints(trial_id)
            (self.journal / f"{trial_id}.jsonl").unlink(missing_ok=True)

    def _delete_checkpoints(self, trial_id: str) -> None:
        for left in (self.dir / "checkpoints").glob(f"{trial_id}.*"):
            left.unlink()

    def set_aside_ids(self, why: str) -> set[str]:
        """The trials whose records `set_aside(..., why)` keeps."""
        return {part.name.split(".", 1)[0] for part in (self.parts / why).glob("*.trial.parquet")}

    def _quarantine_trial(self, trial_id: str, reason: str) -> None:
        """A damaged part: every part of its trial is moved aside, so that the trial is no longer recorded and the
        next run trains it again (from its checkpoint where it has one), rather than reporting half a trial."""
        for part in self.parts.glob(f"{trial_id}.*.parquet"):
            quarantine(part, reason)


def axis_cell(value: Any) -> Any:
    """An axis value as a table cell: a scalar stays one; anything else (a list, a mapping) is written as text."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def config_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True)
