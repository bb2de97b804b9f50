"""Expand a study into trials: axes -> arms (grid, one-at-a-time vs the reference, zip) -> x seeds -> Trials.

A trial's id is a hash of its fully resolved config (seed included, study name not): the same config always gets
the same id, in any process, so results, MLflow runs and caches can be keyed by it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.spec import Axis, Study, axis_overrides
from mm1core.config import ConfigError, apply_overrides, config_from_dict, config_problems
from mm1core.hardware import resolve_precision
from mm1core.stage_cache import cache_state, encoder_stage_key

__all__ = [
    "REFERENCE_ARM",
    "Arm",
    "Trial",
    "arm_problems",
    "encoder_plan",
    "expand_arms",
    "plan",
    "resolve_trial",
    "run_order",
    "stage_cache_dir",
    "trial_id",
]

REFERENCE_ARM = "reference"


@dataclass(frozen=True)
class Arm:
    name: str
    axis_values: dict[str, Any]  # axis name (as written in the study) -> value
    overrides: dict[str, Any]  # dotted config path -> value
    origins: dict[
        str, tuple
    ]  # dotted config path -> the study path that set it, e.g. ("axes", 1, "values", 0)


@dataclass(frozen=True)
class Trial:
    trial_id: str
    arm: str
    axis_values: dict[str, Any]
    seed: int
    config: dict  # nested, fully resolved


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


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def trial_id(config: dict) -> str:
    return hashlib.sha256(_canonical(config).encode()).hexdigest()[:12]


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


def file_task_problems(study: Study, cache_dir: Path) -> list[str]:
    """Why an arm's file tasks cannot be prompted: text its tokenizer cannot encode, or prompts too long for its LM.

    Needs the study's tokenizer (a BPE is trained on the study's files and cached), so it runs where the results
    folder is known, after `load_study` has checked the files themselves."""
    arms = [apply_overrides(study.reference, arm.overrides) for arm in expand_arms(study)]
    if not any(task.get("kind", "world") != "world" for tree in arms for task in tree["eval"]["tasks"]):
        return []
    # Only studies with file tasks pay for torch here (the tokenizer's module builds batches too).
    from mm1core.data.sources import build_tokenizer, uses_world_text
    from mm1core.eval.file_tasks import task_prompt_problems

    origin = (
        study.where(("reference", "overrides", "eval.tasks"))
        if "eval.tasks" in study.spec.reference.overrides
        else study.where(("reference",))
    )
    problems: list[str] = []
    checked: set[str] = set()
    for tree in arms:
        cfg = config_from_dict(tree)
        key = json.dumps([tree["data"], tree["eval"], cfg.connector.num_image_tokens], sort_keys=True)
        if key in checked:
            continue
        checked.add(key)
        tokenizer = build_tokenizer(cfg.data, cache_dir, world_text=uses_world_text(cfg))
        for task in cfg.eval.file_tasks:
            found = task_prompt_problems(
                task,
                cfg.eval,
                tokenizer,
                num_image_tokens=cfg.connector.num_image_tokens,
                max_seq_len=cfg.data.max_seq_len,
            )
            problems += [f"{origin}: {p}" for p in found if f"{origin}: {p}" not in problems]
    return problems


def resolve_trial(
    study: Study, arm: str, axis_values: dict[str, Any], overrides: dict[str, Any], seed: int, *, gpu: bool
) -> Trial:
    """One training run: the reference with an arm's overrides, its seed, and `auto` resolved for where it runs."""
    config = apply_overrides(study.reference, overrides)
    train = config["train"]
    # Resolved here so the precision is part of the trial's identity (mm1core.hardware says why).
    config["train"] = dict(train, precision=resolve_precision(train["precision"], gpu=gpu))
    config = dict(config, seed=seed)
    return Trial(trial_id(config), arm, axis_values, seed, config)


def plan(study: Study) -> list[Trial]:
    """Every trial of a study that enumerates its arms; a search's configurations are sampled as it runs."""
    if study.spec.design == "search":
        return []
    gpu = study.spec.resources.gpu > 0
    return [
        resolve_trial(study, arm.name, arm.axis_values, arm.overrides, seed, gpu=gpu)
        for arm in expand_arms(study)
        for seed in study.seeds
    ]


def run_order(trials: list[Trial]) -> list[Trial]:
    """The first trial of each shared encoder, then the rest, each group in plan order.

    Trials that need an encoder another trial is building wait for it; started first, the builders work in parallel
    instead of queueing behind one another.
    """
    uses: dict[str | None, int] = {}
    order = []
    for trial in trials:
        key = encoder_stage_key(trial.config)
        order.append(uses.get(key, 0) if key else 0)
        uses[key] = uses.get(key, 0) + 1
    return [trial for _, trial in sorted(zip(order, trials, strict=True), key=lambda pair: pair[0])]


def stage_cache_dir(results_root: Path) -> Path:
    """Where stages that trials share are cached: beside the studies, so every study (and node) can reuse them."""
    return results_root / "cache"


def encoder_plan(trials: list[Trial], cache_dir: Path) -> dict[str, str]:
    """trial_id -> what its encoder stage will do: "cached", "build", "rebuild" (a damaged entry), "reuse" (built by
    an earlier trial) or "-"."""
    status: dict[str, str] = {}
    states: dict[str, str] = {}
    seen: set[str] = set()
    for trial in trials:
        key = encoder_stage_key(trial.config)
        if key is None:
            status[trial.trial_id] = "-"
            continue
        state = states.setdefault(key, cache_state(cache_dir, key))
        if state == "cached":
            status[trial.trial_id] = "cached"
        elif key in seen:
            status[trial.trial_id] = "reuse"
        else:
            status[trial.trial_id] = "rebuild" if state == "damaged" else "build"
            seen.add(key)
    return status
