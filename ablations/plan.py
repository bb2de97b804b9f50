"""Expand a study into trials: its arms (ablations.spec.expand_arms) x seeds -> Trials, and what running them needs.

A trial's id is a hash of its fully resolved config (seed included, study name not): the same config always gets
the same id, in any process, so results, MLflow runs and caches can be keyed by it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.spec import Study, expand_arms
from mm1core.config import apply_overrides, config_from_dict
from mm1core.hardware import resolve_precision
from mm1core.stage_cache import cache_state, encoder_stage_key

__all__ = [
    "Trial",
    "encoder_plan",
    "file_task_problems",
    "plan",
    "resolve_trial",
    "run_order",
    "stage_cache_dir",
    "trial_id",
]


@dataclass(frozen=True)
class Trial:
    trial_id: str
    arm: str
    axis_values: dict[str, Any]
    seed: int
    config: dict  # nested, fully resolved


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def trial_id(config: dict) -> str:
    return hashlib.sha256(_canonical(config).encode()).hexdigest()[:12]


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
