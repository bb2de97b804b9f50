"""A suite: several studies run as one job (the findings suite, `studies/findings/suite.yaml`), planned as a whole.

A suite file lists study files; `mm1ablate plan|run SUITE.yaml` (or a folder holding `suite.yaml`) validates every
study before anything runs, plans the whole (trials, those shared between studies, those finished already, the
estimated time) and runs the studies in order. A trial that two studies contain (the same config and seed: the same
trial id) trains once: the second study adopts the finished run (`adopt_finished`). Each study keeps its own results
folder and report, so the suite resumes where it stopped and its studies can also be run one by one.

Each `mm1ablate run SUITE` is one part of the suite's measurement: its record (results/suites/NAME.json) keeps every
part's start, end, outcome, machine, commit and the plan it began with, so a suite run overnight, or in parts over
several days, says how long it took in all and whether it began from nothing (`suite_runs`, which `mm1ablate status
SUITE` prints and the record keeps as its `summary` for the scoreboard).
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ablations.cost import MIN_CPU_SHARE, crowded
from ablations.plan import Trial
from ablations.spec import Study, StudyError, load_study
from ablations.yamlio import YamlError, load_yaml
from mm1core.storage import atomic_write_text

__all__ = [
    "Suite",
    "SuitePlan",
    "SuiteRun",
    "adopt_finished",
    "adoptable",
    "begin_suite_run",
    "budget_line",
    "is_suite",
    "load_suite",
    "read_suite_record",
    "record_suite",
    "suite_file",
    "suite_runs",
]

SUITE_KEYS = ("suite", "description", "studies", "wall_budget_min")
SUITE_RECORDS = "suites"  # results/suites/NAME.json, read by dashboards.index
# How often a running part writes that its driver is alive: a driver killed mid-study (SIGKILL, a machine's end)
# leaves its part's wall time known to within this, where the end of its last finished study could be hours back.
HEARTBEAT_S = 60.0


@dataclass
class Suite:
    name: str
    description: str
    path: Path
    studies: list[Study]
    # The wall time the suite is sized to run in from nothing (`wall_budget_min`), which the plan and the record
    # weigh each measurement against; None: not declared.
    wall_budget_s: float | None = None


def suite_file(path: Path) -> Path:
    """A folder is a suite through its suite.yaml."""
    return path / "suite.yaml" if path.is_dir() else path


def is_suite(path: Path) -> bool:
    """Whether `path` names a suite (a folder with suite.yaml, or a YAML file with a `studies` list) rather than a
    study. Cheap: reads the file's keys only when it is a YAML mapping."""
    path = suite_file(path)
    if not path.is_file():
        return False
    try:
        data = load_yaml(path).data
    except (YamlError, OSError):
        return False
    return isinstance(data, dict) and "studies" in data and "reference" not in data


def load_suite(path: Path) -> Suite:
    """Every study of the suite, validated; all problems of the suite file and of every study at once, each with
    its file:line."""
    given = path
    path = suite_file(path)
    if not path.exists():
        raise StudyError([f"{given}: no such suite (a folder needs a suite.yaml listing its studies)"])
    try:
        loaded = load_yaml(path)
    except YamlError as err:
        raise StudyError([str(err)]) from None
    data = loaded.data

    def where(*key: Any) -> str:
        return f"{path}:{loaded.line_of(key) or 1}"

    if not isinstance(data, dict):
        raise StudyError([f"{where()}: a suite is a mapping with `suite`, `description` and `studies`"])
    problems = [
        f"{where(key)}: unknown key {key!r} (known: {', '.join(SUITE_KEYS)})"
        for key in data
        if key not in SUITE_KEYS
    ]
    name = data.get("suite")
    if not isinstance(name, str) or not name:
        problems.append(f"{where('suite')}: suite: a name is required")
    budget = data.get("wall_budget_min")
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0
    ):
        problems.append(
            f"{where('wall_budget_min')}: wall_budget_min: the minutes of wall time the suite is sized to run in "
            f"from nothing, a positive number; got {budget!r}"
        )
        budget = None
    listed = data.get("studies")
    if not isinstance(listed, list) or not listed:
        problems.append(f"{where('studies')}: studies: a list of study files (relative to the suite file)")
        listed = []
    studies: list[Study] = []
    first_line: dict[str, str] = {}
    for i, entry in enumerate(listed):
        if not isinstance(entry, str):
            problems.append(f"{where('studies', i)}: studies[{i}]: a study file's path, got {entry!r}")
            continue
        study_path = (path.parent / entry).resolve()
        if not study_path.is_file():
            problems.append(f"{where('studies', i)}: studies[{i}]: no such study file {entry!r}")
            continue
        try:
            study = load_study(study_path)
        except StudyError as err:
            problems.extend(err.problems)
            continue
        if study.name in first_line:
            problems.append(
                f"{where('studies', i)}: studies[{i}]: study name {study.name!r} is also the name of the study at "
                f"{first_line[study.name]}; each study needs its own results folder"
            )
            continue
        first_line[study.name] = where("studies", i)
        studies.append(study)
    if problems:
        raise StudyError(problems)
    return Suite(
        name,
        str(data.get("description", "")).strip(),
        path,
        studies,
        None if budget is None else float(budget) * 60,
    )


def _read_record(record: Path) -> dict[str, Any]:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: the scoreboard says so where it reads it (dashboards.index)
    return data if isinstance(data, dict) else {}


def read_suite_record(results_root: Path, name: str) -> dict[str, Any]:
    """The suite's record in this results folder; empty when no run of the suite as a whole wrote one."""
    return _read_record(results_root / SUITE_RECORDS / f"{name}.json")


def record_suite(suite: Suite, results_root: Path) -> Path:
    """Which studies the suite holds, kept beside their results: the scoreboard (results/index.html) leads each
    finding with the suite's study. Rewritten on every run, so a suite file that changes its studies is followed;
    the record of its earlier runs is kept."""
    record = results_root / SUITE_RECORDS / f"{suite.name}.json"
    with _record_lock(record):
        runs = _read_record(record).get("runs", [])
        body = {
            "suite": suite.name,
            "file": str(suite.path),
            "studies": [s.name for s in suite.studies],
            "wall_budget_s": suite.wall_budget_s,
            "runs": runs if isinstance(runs, list) else [],
        }
        _write_record(record, body)
    return record


def _heartbeat_s() -> float:
    try:
        every = float(os.environ.get("MM1ABLATE_SUITE_HEARTBEAT_S", HEARTBEAT_S))
    except ValueError:
        every = 0.0
    if every <= 0:
        print(
            f"warning: MM1ABLATE_SUITE_HEARTBEAT_S must be a positive number of seconds; using {HEARTBEAT_S:g}",
            file=sys.stderr,
        )
        return HEARTBEAT_S
    return every


def _wall(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def suite_runs(record: dict, *, now: float | None = None) -> list[str]:
    """How the suite was measured in this folder, from its record of every `mm1ablate run SUITE` (each a part: a
    suite can be run overnight or in parts): the wall time of all parts together, whether the first began from an
    empty results folder, whether the last ended with every study done; then a line per part. `now`: the last part
    is running at that time (a study of the suite has a live driver), so its wall time so far is known."""
    runs = [dict(r) for r in record.get("runs") or [] if isinstance(r, dict)]
    if now is not None and runs and not runs[-1].get("ended"):
        started = _epoch(runs[-1].get("started"))
        if started is not None:
            runs[-1] |= {"wall_s": now - started, "running": True}
    name = record.get("suite", "?")
    if not runs:
        return [f"suite {name}: no run of the suite as a whole is recorded here (its studies ran one by one)"]
    first, last = runs[0], runs[-1]
    total = sum(float(r.get("wall_s") or 0) for r in runs)
    began = (
        f"the first began from nothing ({first.get('to_train')} of {first.get('distinct')} distinct trials to train)"
        if first.get("to_train") == first.get("distinct")
        else f"the first began with {first.get('to_train')} of {first.get('distinct')} distinct trials to train "
        "(the rest finished before it)"
    )
    state = "complete" if last.get("outcome") == "complete" else "not complete"
    machines = sorted({str(r["machine"]) for r in runs if r.get("machine")})
    # A machine twice as fast halves a part: parts of two machines add up to no one machine's time for the suite.
    mixed = (
        f"; its parts ran on {len(machines)} machines ({', '.join(machines)}), so the sum is no one machine's time"
        if len(machines) > 1
        else ""
    )
    budget = record.get("wall_budget_s")
    lines = [
        f"suite {name}: {len(runs)} part{'s' * (len(runs) > 1)}, {_wall(total)} of wall time in all"
        f"{_against_budget(total, budget, complete=state == 'complete')}; {began}; {state}{mixed}"
    ]
    for i, r in enumerate(runs, 1):
        ended, wall = r.get("ended"), _wall(float(r.get("wall_s") or 0))
        if ended:
            span = f"{r.get('started')} to {ended}, {wall}"
        elif r.get("running"):
            span = f"{r.get('started')}, running: {wall} so far"
        elif i < len(runs):  # a later part began: this one's driver was killed
            span = f"{r.get('started')}, its driver killed (no end recorded; last seen {r.get('last_seen')}): {wall}"
        else:
            span = (
                f"{r.get('started')}, no end recorded (running, or its driver was killed; last seen "
                f"{r.get('last_seen')}): {wall}"
            )
        plan = f"planned {_wall(float(r['plan_s']))}" if r.get("plan_s") is not None else "no estimate"
        code = str(r.get("commit", "unknown"))[:10] + (
            " with local changes" if r.get("local_changes") else ""
        )
        outcome = str(r.get("outcome"))
        if not ended:  # the heartbeat's "running; in STUDY": the span already says whether its driver lives
            outcome = outcome.removeprefix("running").lstrip("; ")
        outcome = f"{outcome}; " if outcome else ""
        trained = (
            f"; trained {r['trained']}, {r.get('crowded', 0)} of them with less than {MIN_CPU_SHARE:g} of their CPU "
            "(other work beside them)"
            if r.get("trained")
            else ""
        )
        lines.append(
            f"  part {i}: {span}; {outcome}{r.get('to_train')} trials to train, {plan}; "
            f"{r.get('machine')}, {r.get('cores')} cores; code {code}{trained}"
        )
    return lines


def _against_budget(wall_s: float, budget_s: float | None, *, complete: bool) -> str:
    """ ", within its budget of 4 h 00 min" / ", over its budget of 4 h 00 min by 2 h 25 min": how a measurement's
    wall time stands against the suite's declared budget ("" when it declares none). An unfinished suite is over it
    only once its parts so far are."""
    if not budget_s:
        return ""
    if wall_s > budget_s:
        return f", over its budget of {_wall(budget_s)} by {_wall(wall_s - budget_s)}"
    return f", within its budget of {_wall(budget_s)}" if complete else f", its budget {_wall(budget_s)}"


def budget_line(budget_s: float, plan_s: float, earlier_s: float, precision: str) -> str:
    """The plan against the suite's budget, before anything runs: this plan alone, or with the wall time its
    earlier parts in this results folder took. Over it, the line names the precision this machine trains in, the
    first thing that makes one 2-core machine twice another's time (bench/README.md)."""
    whole = plan_s + earlier_s
    said = (
        f"the earlier parts here took {_wall(earlier_s)} and this plan adds about {_wall(plan_s)}: {_wall(whole)} "
        "in all"
        if earlier_s
        else f"this plan is about {_wall(plan_s)}"
    )
    if whole <= budget_s:
        return f"budget: {_wall(budget_s)} of wall time (the suite file's wall_budget_min); {said}, within it"
    return (
        f"budget: {_wall(budget_s)} of wall time (the suite file's wall_budget_min); {said}, over it by "
        f"{_wall(whole - budget_s)} ({_share_over(whole, budget_s)}) on this machine, which trains in "
        f"{precision}"
    )


def _share_over(whole_s: float, budget_s: float) -> str:
    share = (whole_s - budget_s) / budget_s
    return f"+{share:.0%}" if share >= 0.005 else "under 1%"


@contextlib.contextmanager
def _record_lock(record: Path) -> Iterator[None]:
    """Held around each read-modify-write of a suite's record: two drivers running the same suite into one results
    folder (nodes of a cluster on shared storage) would otherwise each write back a record without the other's part."""
    record.parent.mkdir(parents=True, exist_ok=True)
    with open(record.with_name(record.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_record(record: Path, data: dict[str, Any]) -> None:
    # What results/index.html shows of it: dashboards reads the results, never this code.
    data["summary"] = suite_runs(data)
    atomic_write_text(record, json.dumps(data, indent=1))


_UTC = "%Y-%m-%dT%H:%M:%SZ"


def _utc(seconds: float) -> str:
    return time.strftime(_UTC, time.gmtime(seconds))


def _epoch(stamp: Any) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(str(stamp), _UTC)))
    except ValueError:
        return None


def _code_state() -> tuple[str, bool | None]:
    """The commit the suite's code is at, and whether tracked files differ from it (None: not known). Untracked
    files (a log beside the checkout) are not the code."""
    from ablations.tracking import git_commit

    try:
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return git_commit(), None
    return git_commit(), bool(changed.stdout.strip()) if changed.returncode == 0 else None


def _trained_since(results_root: Path, studies: list[str], since: float) -> tuple[int, int]:
    """Trials of these studies that finished training since `since` (adopted ones not counted), and how many of
    them got less of their CPUs than the plan trusts (ablations.cost.crowded): work beside them slowed them, so a
    part with such trials measured that load as well as the suite."""
    import pyarrow.parquet as pq

    finished: dict[str, bool] = {}
    for name in studies:
        path = results_root / name / "trials.parquet"
        if not path.exists():
            continue
        for row in pq.read_table(path).to_pylist():
            # The device as mm1core.hardware.cpu_device_name words it; a GPU trial's is not a CPU share.
            threads = re.fullmatch(r"cpu x(\d+) threads", str(row.get("device")))
            if (
                row.get("status") != "finished"
                or row.get("adopted_from")
                or (row.get("finished_at") or 0) < since
            ):
                continue
            finished[row["trial_id"]] = bool(threads) and crowded(row, int(threads.group(1)))
    return len(finished), sum(finished.values())


@dataclass
class SuiteRun:
    """One `mm1ablate run SUITE`, kept in the suite's record from its start and rewritten while it runs (`alive`):
    a driver that is killed leaves its part recorded up to its last heartbeat."""

    record: Path
    index: int
    started: float
    outcome: str = "running"

    @contextlib.contextmanager
    def alive(self) -> Iterator[None]:
        """Rewrite the part (its wall time, what it has trained) every HEARTBEAT_S seconds while the block runs
        (MM1ABLATE_SUITE_HEARTBEAT_S where set: the tests beat every second)."""
        every_s = _heartbeat_s()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                try:
                    self._write(self.outcome)  # read once: the driver may say what it is in meanwhile
                except Exception as err:  # noqa: BLE001 - a missed beat must never stop the suite
                    print(f"warning: the suite's record not updated: {err}", file=sys.stderr)

        heart = threading.Thread(target=beat, name="suite-heartbeat", daemon=True)
        heart.start()
        try:
            yield
        finally:
            stop.set()
            heart.join()

    def update(self, outcome: str, *, ended: bool = False) -> None:
        self.outcome = outcome
        self._write(outcome, ended=ended)

    def _write(self, outcome: str, *, ended: bool = False) -> None:
        now = time.time()
        with _record_lock(self.record):
            data = _read_record(self.record)
            runs = data.get("runs", [])
            if not isinstance(runs, list) or self.index >= len(runs):
                return  # the record was replaced under us (another results folder's copy): keep running regardless
            trained, slowed = _trained_since(self.record.parent.parent, data.get("studies", []), self.started)
            runs[self.index] |= {
                "outcome": outcome,
                "last_seen": _utc(now),
                "wall_s": round(now - self.started, 1),
                "trained": trained,
                "crowded": slowed,
            }
            if ended:
                runs[self.index]["ended"] = _utc(now)
            _write_record(self.record, data)


class SuitePlan(NamedTuple):
    """What `mm1ablate plan|run SUITE` found left to do before anything ran."""

    distinct: int  # trials, each counted once however many studies hold it
    to_train: int
    wall_s: float | None  # the estimate of the whole (None: not estimated)
    wall_by_study: dict[str, float]  # the estimate of each study with trials to train


def begin_suite_run(record: Path, plan: SuitePlan) -> SuiteRun:
    """Append this run to the suite's record: when, on what, from which code, and what its plan said was left, in
    all and per study."""
    from mm1core.hardware import cpu_model_name

    now = time.time()
    commit, local_changes = _code_state()
    with _record_lock(record):
        data = _read_record(record)
        runs = data.setdefault("runs", [])
        runs.append(
            {
                "started": _utc(now),
                "ended": None,
                "last_seen": _utc(now),
                "wall_s": 0.0,
                "outcome": "running",
                "machine": cpu_model_name(),
                "cores": os.cpu_count(),
                "commit": commit,
                "local_changes": local_changes,
                "distinct": plan.distinct,
                "to_train": plan.to_train,
                "plan_s": None if plan.wall_s is None else round(plan.wall_s, 1),
                "plan_by_study": {name: round(wall, 1) for name, wall in plan.wall_by_study.items()},
            }
        )
        _write_record(record, data)
        return SuiteRun(record, len(runs) - 1, now)


def adoptable(results_root: Path) -> dict[str, str]:
    """trial id -> the study under `results_root` that finished it with the current code: what adopt_finished
    counts for another study instead of training it (the first such study, by name)."""
    tables = [(p.parent.name, p) for p in results_root.glob("*/trials.parquet")]
    tables += _unconsolidated(results_root)
    if not tables:  # pyarrow's import alone costs half a second of `plan`'s start
        return {}
    import pyarrow.parquet as pq

    from mm1core.stage_cache import code_version

    current, found = code_version(), {}
    for study, path in sorted(tables):
        try:
            table = pq.read_table(path).to_pydict()
        except FileNotFoundError:  # a damaged part moved aside since it was listed
            continue
        codes = table.get("code_version", [None] * len(table["trial_id"]))
        for trial_id, status, code in zip(table["trial_id"], table["status"], codes, strict=True):
            if status == "finished" and code == current:
                found.setdefault(trial_id, study)
    return found


def _unconsolidated(results_root: Path) -> list[tuple[str, Path]]:
    """(study, part) for each trial a running driver has recorded since it last folded its parts into the study's
    table: a trial another driver waits for counts the moment it is recorded (ablations.claims)."""
    newer = []
    for parts in results_root.glob("*/parts"):
        table = parts.parent / "trials.parquet"
        try:
            since = table.stat().st_mtime
        except FileNotFoundError:
            since = float("-inf")
        for part in parts.glob("*.trial.parquet"):
            try:
                if part.stat().st_mtime >= since:
                    newer.append((parts.parent.name, part))
            except FileNotFoundError:
                continue
    return newer


def adopt_finished(study: Study, trials: list[Trial], results_root: Path) -> list[tuple[Trial, str]]:
    """Record in `study` every planned trial that another study under `results_root` has finished with the same
    trial id (the same config and seed) and the same code: its row relabelled with this study's arm and axis
    values, its curves and items. Returns (trial, the study it came from) for each adopted trial.

    What a suite's shared reference arm rests on: trained once, it counts in every study that contains it. A run
    trained by other code is not adopted (this study trains its own)."""
    import pyarrow.parquet as pq

    from ablations.results import ResultsStore, axis_cell, trial_statuses
    from mm1core.schema import META_COLUMNS

    here = results_root / study.name
    done_here = {t for t, status in trial_statuses(here).items() if status == "finished"}
    wanted = {t.trial_id: t for t in trials if t.trial_id not in done_here}
    if not wanted:
        return []
    sources = {t: name for t, name in adoptable(results_root).items() if name != study.name and t in wanted}
    store = ResultsStore(here)
    adopted: list[tuple[Trial, str]] = []
    for trial_id, source in sorted(sources.items()):
        planned, other = wanted[trial_id], results_root / source
        rows = pq.read_table(other / "parts" / f"{trial_id}.trial.parquet").to_pylist()
        relabel = {"study": study.name, "arm": planned.arm, "seed": planned.seed}
        # The source's axis columns name its own axes; this study's say where the run sits among its arms.
        row = {k: v for k, v in rows[0].items() if "/" in k or k in META_COLUMNS} | relabel
        row |= {name: axis_cell(value) for name, value in planned.axis_values.items()}
        row["adopted_from"] = rows[0].get("adopted_from") or other.name  # the study that trained it
        extra = {}
        for kind in ("curves", "items"):
            path = other / "parts" / f"{trial_id}.{kind}.parquet"
            extra[kind] = (
                [r | {"arm": planned.arm, "seed": planned.seed} for r in pq.read_table(path).to_pylist()]
                if path.exists()
                else []
            )
        store.save_trial(row, extra["curves"], extra["items"])
        adopted.append((planned, other.name))
    if adopted:
        store.consolidate()
    return adopted
