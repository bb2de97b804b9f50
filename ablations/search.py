"""design: search: the study's axes as an Optuna search space, run through Ray Tune's Optuna integration.

The Optuna study lives in the study's results folder (`optuna.db`, Optuna's RDB storage), so `optuna.load_study`
and `optuna-dashboard` open it, and a re-run resumes it: it asks only for the configurations still missing, and a
configuration a killed driver left running is tried again. The Optuna study's name carries a fingerprint of the
reference config and the search space: an edited search starts a new one beside the old.

A Tune trial is one configuration; it trains `search.seeds` runs (one per seed), and the searcher and the scheduler
see their mean (`OBJECTIVE`) at every evaluation round. A configuration stopped early by the scheduler is told to
Optuna as pruned, not as complete.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from ablations.handoff import OBJECTIVE, OBJECTIVE_FINAL
from ablations.plan import Trial, resolve_trial
from ablations.spec import Study, axis_overrides

__all__ = [
    "configuration_runs",
    "make_searcher",
    "open_storage",
    "optuna_space",
    "remaining_configurations",
    "search_name",
    "storage_url",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def optuna_space(study: Study) -> dict[str, optuna.distributions.BaseDistribution]:
    space: dict[str, optuna.distributions.BaseDistribution] = {}
    for axis in study.spec.axes:
        distribution = axis.distribution
        if distribution is None:
            space[axis.name] = optuna.distributions.CategoricalDistribution(axis.values)
            continue
        kind, (low, high) = distribution
        if kind == "int":
            space[axis.name] = optuna.distributions.IntDistribution(int(low), int(high))
        else:
            space[axis.name] = optuna.distributions.FloatDistribution(low, high, log=kind == "loguniform")
    return space


def search_name(study: Study) -> str:
    """The Optuna study's name: the study's, and a fingerprint of what its results depend on."""
    spec = study.spec
    basis = {
        "reference": study.reference,
        "axes": [a.model_dump(mode="json", by_alias=True, exclude_none=True) for a in spec.axes],
        "search": spec.search.model_dump(mode="json", exclude={"trials", "scheduler"}),
    }
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:8]
    return f"{spec.name}-{digest}"


def storage_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'optuna.db').resolve()}"


def open_storage(study_dir: Path) -> optuna.storages.RDBStorage:
    study_dir.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(storage_url(study_dir))


def _sampler(study: Study, tried: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded by how many configurations the search has tried: a resumed search is as
    reproducible as a fresh one, and does not replay the random start of the run before it."""
    kind = study.spec.search.sampler
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=tried),
        "random": lambda: optuna.samplers.RandomSampler(seed=tried),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=tried),
        "qmc": lambda: optuna.samplers.QMCSampler(
            seed=0
        ),  # a sequence: it skips the points already in storage
    }
    return samplers[kind]()


class _StepwiseOptunaSearch(OptunaSearch):
    """Ray Tune's Optuna searcher, told only the results that carry the objective (the evaluation rounds; the
    training-loss reports in between do not), at their training step; and a configuration that ended without its
    final evaluation (stopped by the scheduler) is pruned, not complete with a mid-run value."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result and trial_id not in self._completed_trials:
            self._ot_trials[trial_id].report(float(result[self.metric]), int(result["step"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result is not None and not error and not result.get(OBJECTIVE_FINAL):
            # Stopped: Tune does not pass the searcher the result it stopped on; Optuna keeps it as the pruned
            # trial's last intermediate value, and its value.
            trial = self._ot_trials.get(trial_id)
            if trial is not None and self.metric in result and int(result["step"]) not in _reported(trial):
                trial.report(float(result[self.metric]), int(result["step"]))
            result = None
        super().on_trial_complete(trial_id, result=result, error=error)


def _reported(trial: optuna.trial.Trial) -> set[int]:
    return set(trial.study._storage.get_trial(trial._trial_id).intermediate_values)


def remaining_configurations(study: Study, storage: optuna.storages.BaseStorage) -> int:
    """Configurations still to try. A configuration a killed driver left running is marked failed and queued to be
    tried again with the same parameters."""
    name = search_name(study)
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return study.spec.search.trials
    existing = optuna.load_study(study_name=name, storage=storage)
    for trial in existing.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        existing.enqueue_trial(trial.params)
    done = existing.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    return max(study.spec.search.trials - len(done), 0)


def make_searcher(study: Study, storage: optuna.storages.BaseStorage) -> OptunaSearch:
    name = search_name(study)
    tried = (
        len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
        if name in {s.study_name for s in storage.get_all_studies()}
        else 0
    )
    return _StepwiseOptunaSearch(
        space=optuna_space(study),
        metric=OBJECTIVE,
        mode=study.spec.search.mode,
        sampler=_sampler(study, tried),
        study_name=search_name(study),
        storage=storage,
    )


def configuration_runs(study: Study, params: dict[str, Any], *, gpu: bool) -> list[Trial]:
    """The training runs of one sampled configuration, one per seed."""
    overrides: dict[str, Any] = {}
    values = {}
    for axis in study.spec.axes:
        value = params[axis.name]
        values[axis.name] = value
        overrides |= axis_overrides(axis.name, value)
    arm = ",".join(f"{name}={_short(value)}" for name, value in values.items())
    return [resolve_trial(study, arm, values, overrides, seed, gpu=gpu) for seed in study.seeds]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
