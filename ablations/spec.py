"""The study format: a reference model, axes to vary, a design, seeds, resources and a budget.

`load_study` checks a study file completely before anything runs. Every error names the file, the line and the
field path (`studies/x.yaml:12: axes[1].values[2]: unknown connector 'cabs'; known: avg-pool`), and all errors are
reported together. Axis names are dotted config paths or the paper's names (ALIASES). `expand_arms` gives the arms
its design means (grid, one at a time against the reference, zip), which validation builds one by one.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ablations.yamlio import LoadedYaml, YamlError, load_yaml
from mm1core.axes import ALIASES, SIZED_AXES, resolve_axis
from mm1core.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_problems,
    config_to_dict,
    field_paths,
)
from mm1core.presets import PRESETS, get_preset

# Far beyond any study someone means to run on this project: a typo caught at the door.
MAX_SEEDS = 1_000
MAX_TRIALS = 10_000

__all__ = [
    "REFERENCE_ARM",
    "ALIASES",
    "Arm",
    "arm_problems",
    "expand_arms",
    "BUDGET_STAGES",
    "DISTRIBUTIONS",
    "Study",
    "StudyError",
    "StudySpec",
    "load_study",
    "resolve_axis",
    "axis_field",
    "axis_overrides",
    "SIZED_AXES",
    "study_from_dict",
    "study_json_schema",
]

# Budget stages and the config field that holds each one's step count.
BUDGET_STAGES: dict[str, str] = {"encoder": "encoder_pretrain.steps", "multimodal": "train.steps"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reference(_Strict):
    preset: str = Field(description=f"a named model size: {', '.join(PRESETS)}")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted config path -> value")


# A search axis may be a distribution instead of a list of values: the key names Optuna's distribution.
DISTRIBUTIONS = ("loguniform", "uniform", "int")


class Axis(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(
        description="a dotted config path or one of the paper's names: "
        + ", ".join([*ALIASES, "encoder_size"])
    )
    values: list[Any] | None = Field(
        None, min_length=1, description="the values to try (categorical in a search)"
    )
    loguniform: tuple[float, float] | None = Field(None, description="design search: [low, high], log scale")
    uniform: tuple[float, float] | None = Field(None, description="design search: [low, high]")
    integer: tuple[int, int] | None = Field(
        None, alias="int", description="design search: [low, high], integers, both ends included"
    )

    @property
    def distribution(self) -> tuple[str, tuple] | None:
        """(kind, bounds) of a distribution axis, None for a list of values."""
        for kind, bounds in (
            ("loguniform", self.loguniform),
            ("uniform", self.uniform),
            ("int", self.integer),
        ):
            if bounds is not None:
                return kind, bounds
        return None


class Scheduler(_Strict):
    name: Literal["asha"] = Field("asha", description="Ray Tune's ASHAScheduler")
    grace_period: int = Field(gt=0, description="training steps every trial gets before the first cut")
    reduction_factor: float = Field(3.0, gt=1, description="1 / the share of trials each rung keeps")
    metric: str | None = Field(None, description="the metric to cut on (a search's own metric by default)")
    mode: Literal["max", "min"] | None = None


class Search(_Strict):
    sampler: Literal["tpe", "random", "cmaes", "qmc"] = Field("tpe", description="the Optuna sampler")
    trials: int = Field(gt=0, le=10_000, description="configurations to try")
    metric: str = Field(description="any metric the evaluation records, e.g. 0shot/avg")
    mode: Literal["max", "min"] = "max"
    seeds: int = Field(1, ge=1, description="training runs per configuration; the searcher sees their mean")
    scheduler: Scheduler | None = None


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0, description="CPUs per trial; a trial uses this many threads")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; fractions share a GPU")


class StageBudget(_Strict):
    steps: int | None = Field(None, gt=0)
    tokens: int | None = Field(
        None, gt=0, description="converted to steps of batch_size x max_seq_len tokens"
    )

    @field_validator("tokens")
    @classmethod
    def _one_of(cls, tokens: int | None, info: Any) -> int | None:
        if tokens is not None and info.data.get("steps") is not None:
            raise ValueError("give steps or tokens, not both")
        return tokens


class StudySpec(_Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="also the results folder and MLflow experiment"
    )
    description: str = ""
    reference: Reference
    axes: list[Axis] = Field(default_factory=list)
    design: Literal["grid", "one_at_a_time", "zip", "search"] = "grid"
    search: Search | None = Field(None, description="design search: the sampler, budget and objective")
    scheduler: Scheduler | None = Field(None, description="early stopping (ASHA), in any design")
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=MAX_SEEDS
    )
    resources: Resources = Resources()
    budget: dict[str, StageBudget] = Field(
        default_factory=dict, description="per stage: " + ", ".join(BUDGET_STAGES)
    )


class StudyError(ValueError):
    """Everything wrong with a study file, one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Study:
    """A validated study: the spec, the resolved reference config and where each value came from."""

    def __init__(self, spec: StudySpec, reference: dict, source: LoadedYaml | None) -> None:
        self.spec = spec
        self.reference = reference  # nested config dict with reference overrides and budget applied
        self.source = source

    @property
    def name(self) -> str:
        return self.spec.name

    def where(self, path: tuple) -> str:
        return _where(self.source, path)

    @property
    def seeds(self) -> list[int]:
        """The seeds each configuration runs with: the study's, or a search's first `search.seeds`."""
        return list(range(self.spec.search.seeds)) if self.spec.search else list(self.spec.seeds)

    @property
    def scheduler(self) -> Scheduler | None:
        """The early-stopping scheduler, wherever the study declares it, with a search's metric and mode filled in."""
        declared = self.spec.scheduler or (self.spec.search.scheduler if self.spec.search else None)
        if declared is None:
            return None
        search = self.spec.search
        return declared.model_copy(
            update={
                "metric": declared.metric or (search.metric if search else None),
                "mode": declared.mode or (search.mode if search else "max"),
            }
        )

    def scheduler_path(self) -> tuple:
        return ("scheduler",) if self.spec.scheduler else ("search", "scheduler")


def _where(source: LoadedYaml | None, path: tuple) -> str:
    """`file:line: field.path` for messages; the line is that of the deepest node the path reaches."""
    if source is None:
        return _format_path(path)
    line = source.line_of(path)
    return (
        f"{source.source}:{line}: {_format_path(path)}" if line else f"{source.source}: {_format_path(path)}"
    )


def _format_path(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def axis_field(name: str) -> str | None:
    """The config field an axis sets (None for a sized axis, which sets several)."""
    return None if name in SIZED_AXES else resolve_axis(name)


def axis_overrides(name: str, value: Any) -> dict[str, Any]:
    """The config fields one axis value sets: one field for most axes, several for a sized axis."""
    if name in SIZED_AXES:
        section, sizes = SIZED_AXES[name]
        if not isinstance(value, str) or value not in sizes:
            raise ConfigError(name, f"unknown {name} {value!r}; known: {', '.join(sizes)}")
        return {f"{section}.{field}": v for field, v in sizes[value].items()}
    return {resolve_axis(name): value}


def reference_axis_values(study: Study) -> dict[str, Any]:
    """Each axis's value in the reference config (None for a sized axis): reports compare arms against the arm
    that has them."""
    values: dict[str, Any] = {}
    for axis in study.spec.axes:
        if axis.name in SIZED_AXES:
            values[axis.name] = None
            continue
        node: Any = study.reference
        for part in resolve_axis(axis.name).split("."):
            node = node[part]
        values[axis.name] = node
    return values


def _tokens_per_step(stage: str, tree: dict) -> int:
    """Token capacity of one step: sequence slots for the multimodal stage, image patches for the encoder's."""
    if stage == "encoder":
        patches = (tree["encoder"]["resolution"] // tree["encoder"]["patch_size"]) ** 2
        return tree["encoder_pretrain"]["batch_size"] * patches
    return tree["train"]["batch_size"] * tree["data"]["max_seq_len"]


def _budget_overrides(spec: StudySpec, reference_tree: dict) -> dict[str, int]:
    overrides = {}
    for stage, budget in spec.budget.items():
        field = BUDGET_STAGES[stage]
        if budget.steps is not None:
            overrides[field] = budget.steps
        elif budget.tokens is not None:
            overrides[field] = max(1, math.ceil(budget.tokens / _tokens_per_step(stage, reference_tree)))
    return overrides


def study_from_dict(
    data: Any, source: LoadedYaml | None = None, *, base_dir: Path = Path("."), validated: bool = False
) -> Study:
    """Validate a parsed study completely; raises StudyError listing every problem with its location.

    validated: the study is being rebuilt from what a validated run recorded (a search's worker, `mm1ablate clean`
    reading study.json): its structure is checked again, but not every arm's config nor every row of its files."""
    _resolve_data_paths(data, base_dir)

    def where(path: tuple) -> str:
        return _where(source, path)

    if not isinstance(data, dict):
        raise StudyError(
            [f"{where(())}: a study is a mapping with name, reference, axes, ... (got {type(data).__name__})"]
        )
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise StudyError([_pydantic_problem(e, where) for e in err.errors()]) from None

    problems: list[str] = []
    if spec.reference.preset not in PRESETS:
        close = difflib.get_close_matches(spec.reference.preset, list(PRESETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(
            f"{where(('reference', 'preset'))}: unknown preset {spec.reference.preset!r}{hint} "
            f"(known: {', '.join(PRESETS)})"
        )
        raise StudyError(problems)
    for stage in spec.budget:
        if stage not in BUDGET_STAGES:
            problems.append(
                f"{where(('budget', stage))}: unknown budget stage {stage!r}; known: {', '.join(BUDGET_STAGES)}"
            )
    base = config_to_dict(get_preset(spec.reference.preset))
    try:
        reference = apply_overrides(base, spec.reference.overrides)
    except ConfigError as err:
        problems.append(f"{where(('reference', 'overrides', err.path))}: {err.message}")
        raise StudyError(problems) from None
    if not problems:
        reference = apply_overrides(reference, _budget_overrides(spec, reference))
    study = Study(spec, reference, source)
    for i, axis in enumerate(spec.axes):
        try:
            resolve_axis(axis.name)
        except ConfigError as err:
            problems.append(f"{study.where(('axes', i, 'name'))}: {err.message}")
            continue
        problems += _axis_shape_problems(study, i, axis)
        for j, value in enumerate(axis.values or []):
            try:
                axis_overrides(axis.name, value)
            except ConfigError as err:
                problems.append(f"{study.where(('axes', i, 'values', j))}: {err.message}")
    problems += _search_problems(study)
    if problems:
        raise StudyError(problems)
    if spec.design == "zip" and len({len(a.values) for a in spec.axes}) > 1:
        lengths = ", ".join(f"{a.name}: {len(a.values)}" for a in spec.axes)
        problems.append(f"{study.where(('axes',))}: design zip needs axes of equal length ({lengths})")
    if len(set(spec.seeds)) != len(spec.seeds):
        problems.append(f"{study.where(('seeds',))}: seeds repeat: {spec.seeds}")
    if problems:
        raise StudyError(problems)
    if validated:
        return study
    if spec.search is None:
        arms = len(expand_arms(study))
        if arms * len(spec.seeds) > MAX_TRIALS:
            problems.append(
                f"{study.where(('axes',))}: {arms} arms x {len(spec.seeds)} seeds = {arms * len(spec.seeds):,} "
                f"trials, more than the {MAX_TRIALS:,} a study may plan; split it into studies, or search the space "
                "(design: search)"
            )
            raise StudyError(problems)
    problems += arm_problems(study)
    if problems:
        raise StudyError(problems)
    problems += data_file_problems(study)
    if problems:
        raise StudyError(problems)
    return study


def _axis_shape_problems(study: Study, i: int, axis: Axis) -> list[str]:
    """An axis gives values or one distribution; a distribution only in a search, with bounds that make sense, on a
    numeric config field."""
    given = [
        key
        for key in ("values", *DISTRIBUTIONS)
        if getattr(axis, "integer" if key == "int" else key) is not None
    ]
    here = ("axes", i)
    if len(given) != 1:
        kinds = ", ".join(("values", *DISTRIBUTIONS))
        found = f"got {' and '.join(given)}" if given else "got none"
        return [f"{study.where(here)}: an axis gives exactly one of {kinds} ({found})"]
    distribution = axis.distribution
    if distribution is None:
        return []
    kind, (low, high) = distribution
    at = study.where((*here, kind))
    if study.spec.design != "search":
        return [f"{at}: a distribution needs design: search ({study.spec.design} enumerates values)"]
    problems = []
    if not low < high:
        problems.append(f"{at}: the low bound must be below the high bound (got [{low}, {high}])")
    if kind == "loguniform" and low <= 0:
        problems.append(f"{at}: a log-uniform range must be positive (got [{low}, {high}])")
    if axis.name in SIZED_AXES:
        return [*problems, f"{at}: {axis.name} takes named sizes; give them as values"]
    # The field's annotation, or its members (`train.lr` is float | str: it also takes auto).
    field_type = field_paths().get(resolve_axis(axis.name))
    admitted = {field_type, *getattr(field_type, "__args__", ())}
    if not admitted & ({int} if kind == "int" else {int, float}):
        wanted = "an integer" if kind == "int" else "a numeric"
        problems.append(f"{at}: {axis.name} is not {wanted} field; give its choices as values")
    return problems


def _search_problems(study: Study) -> list[str]:
    """A search needs its `search:` block, a sampler that can handle its axes and a metric trials record; a scheduler
    needs a metric and evaluation rounds to cut at."""
    from mm1core.eval import scored_metrics  # torch-free

    spec, problems = study.spec, []
    if spec.design == "search" and spec.search is None:
        problems.append(
            f"{study.where(('design',))}: design search needs a search: block (sampler, trials, metric)"
        )
    if spec.search is not None and spec.design != "search":
        problems.append(
            f"{study.where(('search',))}: a search: block needs design: search (got {spec.design})"
        )
    if spec.search is not None and spec.search.scheduler is not None and spec.scheduler is not None:
        problems.append(
            f"{study.where(('scheduler',))}: the scheduler is declared twice (here and in search:)"
        )
    if problems:
        return problems
    recorded = scored_metrics(study.reference["eval"]["shots"], study.reference["eval"]["tasks"])

    def metric_problem(metric: str, path: tuple) -> list[str]:
        if metric in recorded:
            return []
        close = difflib.get_close_matches(metric, recorded, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return [
            f"{study.where(path)}: no trial records the metric {metric!r}{hint} (recorded at every evaluation: "
            f"{', '.join(recorded[:6])}, ... {', '.join(recorded[-2:])})"
        ]

    if spec.search is not None:
        problems += metric_problem(spec.search.metric, ("search", "metric"))
        if spec.search.sampler == "cmaes":
            listed = [f"axes[{i}] ({a.name})" for i, a in enumerate(spec.axes) if a.distribution is None]
            if listed:
                problems.append(
                    f"{study.where(('search', 'sampler'))}: cmaes samples numeric distributions only; "
                    f"{', '.join(listed)} gives values (use tpe or random, or give a distribution)"
                )
        if spec.seeds != [0]:
            problems.append(
                f"{study.where(('seeds',))}: a search runs each configuration with search.seeds seeds (0, 1, ...); "
                "drop seeds:"
            )
    scheduler = study.scheduler
    if scheduler is not None:
        path = study.scheduler_path()
        if scheduler.metric is None:
            problems.append(f"{study.where(path)}: a scheduler outside a search needs its metric (and mode)")
        elif spec.search is None or scheduler.metric != spec.search.metric:  # a search's own is checked above
            problems += metric_problem(scheduler.metric, (*path, "metric"))
        eval_every = study.reference["train"]["eval_every"]
        steps = study.reference["train"]["steps"]
        if not eval_every:
            problems.append(
                f"{study.where(path)}: ASHA cuts trials at evaluation rounds, and this study evaluates only at the "
                f"end: set train.eval_every in reference.overrides (at most grace_period, {scheduler.grace_period})"
            )
        elif eval_every > scheduler.grace_period:
            problems.append(
                f"{study.where((*path, 'grace_period'))}: {scheduler.grace_period} steps is before the first "
                f"evaluation round (train.eval_every {eval_every})"
            )
        if scheduler.grace_period >= steps:
            problems.append(
                f"{study.where((*path, 'grace_period'))}: {scheduler.grace_period} steps is the whole run "
                f"(train.steps {steps}): nothing would be stopped early"
            )
    return problems


def _pydantic_problem(error: dict, where: Any) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        parent_fields = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), parent_fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{where(loc)}: unknown key {loc[-1]!r}{hint} (known: {', '.join(parent_fields)})"
    detail = error["msg"]
    if "input" in error and error["type"] != "missing":
        detail += f" (got {error['input']!r})"
    return f"{where(loc)}: {detail}"


def _fields_at(loc: tuple) -> list[str]:
    model: Any = StudySpec
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        args = getattr(annotation, "__args__", ())
        model = next(
            (a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
    return list(model.model_fields) if model else []


def load_study(path: str | Path) -> Study:
    path = Path(path)
    if not path.exists():
        raise StudyError([f"{path}: no such study file"])
    try:
        loaded = load_yaml(path)
    except YamlError as err:
        raise StudyError([str(err)]) from None
    return study_from_dict(loaded.data, loaded, base_dir=path.parent)


# Config fields that name bring-your-own data files, and the schema each must follow.
DATA_FILE_FIELDS = {
    "data.caption_files": "caption",
    "data.interleaved_files": "interleaved",
    "data.text_files": "text",
}
# The evaluation tasks, whose file tasks name files too (with the split each selects).
TASKS_FIELD = "eval.tasks"
TASK_FILE_KEYS = {"files": "split", "demos": "demos_split"}


def _resolve_data_paths(data: Any, base_dir: Path) -> None:
    """Relative data paths are relative to the study file, wherever the run starts (Ray trials run elsewhere)."""
    if not isinstance(data, dict):
        return

    def resolved(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str((base_dir / value).resolve())
        return value

    def resolved_tasks(tasks: Any) -> Any:
        if not isinstance(tasks, list):
            return tasks
        return [
            {k: resolved(v) if k in TASK_FILE_KEYS else v for k, v in task.items()}
            if isinstance(task, dict)
            else task
            for task in tasks
        ]

    reference = data.get("reference")
    overrides = reference.get("overrides") if isinstance(reference, dict) else None
    if isinstance(overrides, dict):
        for field in DATA_FILE_FIELDS:
            if field in overrides:
                overrides[field] = resolved(overrides[field])
        if TASKS_FIELD in overrides:
            overrides[TASKS_FIELD] = resolved_tasks(overrides[TASKS_FIELD])
    for axis in data.get("axes") or []:
        if not isinstance(axis, dict) or not isinstance(axis.get("values"), list):
            continue
        if axis.get("name") in DATA_FILE_FIELDS:
            axis["values"] = [resolved(v) for v in axis["values"]]
        elif axis.get("name") == TASKS_FIELD:
            axis["values"] = [resolved_tasks(v) for v in axis["values"]]


def data_file_problems(study: Study) -> list[str]:
    """Every problem in the data files a study names (missing column, undecodable image, ...), before it runs."""
    from mm1core.data.byo import validate_files  # reads Parquet: only studies that bring data pay for it

    places: dict[tuple[str, str], tuple] = {}
    for field in DATA_FILE_FIELDS:
        value = study.reference["data"][field.split(".")[1]]
        if value:
            origin = (
                ("reference", "overrides", field)
                if field in study.spec.reference.overrides
                else ("reference",)
            )
            places.setdefault((field, value), origin)
    for i, axis in enumerate(study.spec.axes):
        if axis.name in DATA_FILE_FIELDS:
            for j, value in enumerate(axis.values):
                if value:
                    places.setdefault((axis.name, value), ("axes", i, "values", j))
    problems = []
    for (field, value), origin in places.items():
        problems += [
            f"{study.where(origin)}: {problem}" for problem in validate_files(value, DATA_FILE_FIELDS[field])
        ]
    return problems + _task_file_problems(study)


def _task_file_problems(study: Study) -> list[str]:
    """Every problem in the files of the study's evaluation tasks, at the line of the task that names them."""
    from mm1core.data.byo import (
        validate_task_files,  # reads Parquet: only studies that bring tasks pay for it
    )

    declared: list[tuple[tuple, list]] = []
    if TASKS_FIELD in study.spec.reference.overrides:
        declared.append((("reference", "overrides", TASKS_FIELD), study.reference["eval"]["tasks"]))
    for i, axis in enumerate(study.spec.axes):
        if axis.name == TASKS_FIELD:
            declared += [(("axes", i, "values", j), tasks) for j, tasks in enumerate(axis.values or [])]
    problems: list[str] = []
    checked: set[tuple] = set()
    for origin, tasks in declared:
        for t, task in enumerate(tasks):
            if not isinstance(task, dict) or task.get("kind", "world") == "world":
                continue
            for key, split_key in TASK_FILE_KEYS.items():
                files = task.get(key) or (task.get("files") if key == "demos" and task.get(split_key) else "")
                split = task.get(split_key, "")
                if not files or (files, task["kind"], split) in checked:
                    continue
                checked.add((files, task["kind"], split))
                where = study.where((*origin, t, key if task.get(key) else "files"))
                problems += [
                    f"{where}: {problem}" for problem in validate_task_files(files, task["kind"], split=split)
                ]
    # The items and the demonstrations of a task may be two splits of one file: a missing file is said once.
    return list(dict.fromkeys(problems))


def study_json_schema() -> dict:
    schema = StudySpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mm1ablate study"
    return schema


# --- arms: what a study's design expands to ------------------------------------------------------------------

REFERENCE_ARM = "reference"


@dataclass(frozen=True)
class Arm:
    name: str
    axis_values: dict[str, Any]  # axis name (as written in the study) -> value
    overrides: dict[str, Any]  # dotted config path -> value
    origins: dict[
        str, tuple
    ]  # dotted config path -> the study path that set it, e.g. ("axes", 1, "values", 0)


def _arm(study: Study, picks: list[tuple[int, int]]) -> Arm:
    """An arm from (axis index, value index) picks."""
    axes = study.spec.axes
    axis_values = {axes[a].name: _candidates(axes[a])[v] for a, v in picks}
    overrides: dict[str, Any] = {}
    origins: dict[str, tuple] = {}
    for a, v in picks:
        where = ("axes", a, "values", v) if axes[a].values else ("axes", a, axes[a].distribution[0])
        for path, value in axis_overrides(axes[a].name, _candidates(axes[a])[v]).items():
            overrides[path] = value
            origins[path] = where
    name = ",".join(f"{k}={_show(v)}" for k, v in axis_values.items()) or REFERENCE_ARM
    return Arm(name, axis_values, overrides, origins)


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _reference_value(study: Study, path: str) -> Any:
    node: Any = study.reference
    for part in path.split("."):
        node = node[part]
    return node


def _candidates(axis: Axis) -> list[Any]:
    """An axis's values; for a search's distribution, its two ends (what validation builds before a search runs)."""
    if axis.values is not None:
        return axis.values
    _, (low, high) = axis.distribution
    return [low, high]


def expand_arms(study: Study) -> list[Arm]:
    """The arms of the design; for a search, the reference and each axis's values or ends one at a time: the
    configurations that validation builds, since a search's own are sampled as it runs."""
    axes = study.spec.axes
    if not axes:
        return [_arm(study, [])]
    if study.spec.design == "grid":
        return [
            _arm(study, list(enumerate(combo)))
            for combo in itertools.product(*(range(len(a.values)) for a in axes))
        ]
    if study.spec.design == "zip":
        return [_arm(study, [(a, i) for a in range(len(axes))]) for i in range(len(axes[0].values))]
    # one_at_a_time and search: the reference, then each axis value that differs from the reference, alone.
    arms = [_arm(study, [])]
    for a, axis in enumerate(axes):
        arms += [
            _arm(study, [(a, v)])
            for v, value in enumerate(_candidates(axis))
            if any(_reference_value(study, path) != x for path, x in axis_overrides(axis.name, value).items())
        ]
    return arms


def _config_errors(tree: dict) -> list[ConfigError]:
    try:
        return config_problems(config_from_dict(tree))
    except ConfigError as err:
        return [err]


def arm_problems(study: Study) -> list[str]:
    """Every arm that cannot be built, located at the study value that makes it so.

    A problem the reference already has is reported at the reference; one that only an arm has is reported at that
    arm's axis values (e.g. 64 image tokens at resolution 32 is a problem of connector.num_image_tokens, but the
    value to change is the resolution the axis picked).
    """
    problems: list[str] = []
    reference_errors = _config_errors(study.reference)
    for err in reference_errors:
        origin = (
            ("reference", "overrides", err.path)
            if err.path in study.spec.reference.overrides
            else ("reference",)
        )
        problems.append(f"{study.where(origin)}: {err.message}")
    reference_paths = {err.path for err in reference_errors}
    seen: set[str] = set()
    for arm in expand_arms(study):
        if not arm.overrides:
            continue
        for err in _config_errors(apply_overrides(study.reference, arm.overrides)):
            if err.path in reference_paths:
                continue
            origin = arm.origins.get(err.path) or next(iter(arm.origins.values()))
            combo = f" (in arm {arm.name})" if len(arm.axis_values) > 1 else ""
            line = f"{study.where(origin)}: {err.message}{combo}"
            if line not in seen:
                seen.add(line)
                problems.append(line)
    return problems
