"""The study format: a reference model, axes to vary, a design, seeds, resources and a budget.

`load_study` checks a study file completely before anything runs. Every error names the file, the line and the
field path (`studies/x.yaml:12: axes[1].values[2]: unknown connector 'cabs'; known: avg-pool`), and all errors are
reported together. Axis names are dotted config paths or the paper's names (ALIASES).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ablations.yamlio import LoadedYaml, YamlError, load_yaml
from mm1core.config import ConfigError, apply_overrides, config_to_dict, field_paths, unknown_path_message
from mm1core.presets import ENCODER_SIZES, PRESETS, get_preset

__all__ = [
    "ALIASES",
    "BUDGET_STAGES",
    "Study",
    "StudyError",
    "StudySpec",
    "load_study",
    "resolve_axis",
    "axis_overrides",
    "SIZED_AXES",
    "study_from_dict",
    "study_json_schema",
]

# The paper's names for the axes it ablates, and the config field each one sets.
ALIASES: dict[str, str] = {
    "resolution": "encoder.resolution",
    "encoder_loss": "encoder_pretrain.loss",
    "image_tokens": "connector.num_image_tokens",
    "connector": "connector.name",
    "data_ratio": "data.ratio",
}
# Axes whose values are named sizes that set several fields of one config section at once.
SIZED_AXES: dict[str, tuple[str, dict[str, dict[str, int]]]] = {"encoder_size": ("encoder", ENCODER_SIZES)}
# Budget stages and the config field that holds each one's step count.
BUDGET_STAGES: dict[str, str] = {"encoder": "encoder_pretrain.steps", "multimodal": "train.steps"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reference(_Strict):
    preset: str = Field(description=f"a named model size: {', '.join(PRESETS)}")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted config path -> value")


class Axis(_Strict):
    name: str = Field(
        description="a dotted config path or one of the paper's names: "
        + ", ".join([*ALIASES, "encoder_size"])
    )
    values: list[Any] = Field(min_length=1)


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
    design: Literal["grid", "one_at_a_time", "zip"] = "grid"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
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


def resolve_axis(name: str) -> str:
    """The dotted config path an axis name sets; raises ConfigError with the nearest names.

    A sized axis (SIZED_AXES) names its config section rather than one field.
    """
    if name in ALIASES:
        return ALIASES[name]
    if name in SIZED_AXES:
        return SIZED_AXES[name][0]
    if name in field_paths():
        return name
    if "." not in name:
        known = [*ALIASES, *SIZED_AXES]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            name,
            f"unknown axis {name!r}{hint} (known names: {', '.join(known)}, or a dotted "
            "config path such as connector.num_image_tokens)",
        )
    raise ConfigError(name, unknown_path_message(name))


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


def study_from_dict(data: Any, source: LoadedYaml | None = None, *, base_dir: Path = Path(".")) -> Study:
    """Validate a parsed study completely; raises StudyError listing every problem with its location."""
    from ablations.plan import arm_problems  # plan imports this module

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
        for j, value in enumerate(axis.values):
            try:
                axis_overrides(axis.name, value)
            except ConfigError as err:
                problems.append(f"{study.where(('axes', i, 'values', j))}: {err.message}")
    if spec.design == "zip" and len({len(a.values) for a in spec.axes}) > 1:
        lengths = ", ".join(f"{a.name}: {len(a.values)}" for a in spec.axes)
        problems.append(f"{study.where(('axes',))}: design zip needs axes of equal length ({lengths})")
    if len(set(spec.seeds)) != len(spec.seeds):
        problems.append(f"{study.where(('seeds',))}: seeds repeat: {spec.seeds}")
    if problems:
        raise StudyError(problems)
    problems += arm_problems(study)
    if problems:
        raise StudyError(problems)
    problems += data_file_problems(study)
    if problems:
        raise StudyError(problems)
    return study


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


def _resolve_data_paths(data: Any, base_dir: Path) -> None:
    """Relative data paths are relative to the study file, wherever the run starts (Ray trials run elsewhere)."""
    if not isinstance(data, dict):
        return

    def resolved(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str((base_dir / value).resolve())
        return value

    reference = data.get("reference")
    overrides = reference.get("overrides") if isinstance(reference, dict) else None
    if isinstance(overrides, dict):
        for field in DATA_FILE_FIELDS:
            if field in overrides:
                overrides[field] = resolved(overrides[field])
    for axis in data.get("axes") or []:
        if (
            isinstance(axis, dict)
            and axis.get("name") in DATA_FILE_FIELDS
            and isinstance(axis.get("values"), list)
        ):
            axis["values"] = [resolved(v) for v in axis["values"]]


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
    return problems


def study_json_schema() -> dict:
    schema = StudySpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mm1ablate study"
    return schema
