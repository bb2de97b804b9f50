"""A suite: several studies run as one job (the findings suite, `studies/findings/suite.yaml`), planned as a whole.

A suite file lists study files; `mm1ablate plan|run SUITE.yaml` (or a folder holding `suite.yaml`) validates every
study before anything runs, plans the whole (trials, those shared between studies, those finished already, the
estimated time) and runs the studies in order. A trial that two studies contain (the same config and seed: the same
trial id) trains once: the second study adopts the finished run (`adopt_finished`). Each study keeps its own results
folder and report, so the suite resumes where it stopped and its studies can also be run one by one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.plan import Trial
from ablations.spec import Study, StudyError, load_study
from ablations.yamlio import YamlError, load_yaml
from mm1core.storage import atomic_write_text

__all__ = ["Suite", "adopt_finished", "adoptable", "is_suite", "load_suite", "record_suite", "suite_file"]

SUITE_KEYS = ("suite", "description", "studies")
SUITE_RECORDS = "suites"  # results/suites/NAME.json, read by dashboards.index


@dataclass
class Suite:
    name: str
    description: str
    path: Path
    studies: list[Study]


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
    return Suite(name, str(data.get("description", "")).strip(), path, studies)


def record_suite(suite: Suite, results_root: Path) -> Path:
    """Which studies the suite holds, kept beside their results: the scoreboard (results/index.html) leads each
    finding with the suite's study. Rewritten on every run, so a suite file that changes its studies is followed."""
    record = results_root / SUITE_RECORDS / f"{suite.name}.json"
    body = {"suite": suite.name, "file": str(suite.path), "studies": [s.name for s in suite.studies]}
    atomic_write_text(record, json.dumps(body, indent=1))
    return record


def adoptable(results_root: Path) -> dict[str, str]:
    """trial id -> the study under `results_root` that finished it with the current code: what adopt_finished
    counts for another study instead of training it (the first such study, by name)."""
    paths = sorted(results_root.glob("*/trials.parquet"))
    if not paths:  # pyarrow's import alone costs half a second of `plan`'s start
        return {}
    import pyarrow.parquet as pq

    from mm1core.stage_cache import code_version

    current, found = code_version(), {}
    for path in paths:
        table = pq.read_table(path).to_pydict()
        codes = table.get("code_version", [None] * len(table["trial_id"]))
        for trial_id, status, code in zip(table["trial_id"], table["status"], codes, strict=True):
            if status == "finished" and code == current:
                found.setdefault(trial_id, path.parent.name)
    return found


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
