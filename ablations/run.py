"""Run a study on Ray Tune: one Tune trial per planned trial, bookkeeping (MLflow, Parquet, progress) on the driver.

Ray is started embedded unless an address is given (`--address`, or RAY_ADDRESS) to join a running cluster.
Trials already finished in results/<study>/trials.parquet are skipped; a trial that raises is recorded as failed with
its error and the others go on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

# Tune's CSV and TensorBoard loggers would duplicate what MLflow and Parquet hold; its JSON log is kept (below)
# because Tune reads its own results back from it.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import pandas as pd
import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from ablations.plan import Trial, plan, stage_cache_dir
from ablations.results import ResultsStore, config_json
from ablations.spec import Study, reference_axis_values
from ablations.tracking import Tracker, resolve_tracking_uri
from ablations.trial import FINAL_KEY, train_trial
from dashboards.index import write_index
from dashboards.report import last_line, write_report
from mm1core.eval import HEADLINE_METRICS
from mm1core.eval.protocol import protocol_fingerprints
from mm1core.stage_cache import code_version, encoder_stage_key

__all__ = ["RunSummary", "run_study"]

_BOOKKEEPING = {
    "step",
    "total_steps",
    "stage",
    FINAL_KEY,
    "num_params",
    "built_encoder",
    "wall_time_s",
    "device",
    "eval_items_json",
    "eval_protocol_json",
}


@dataclass
class RunSummary:
    study: str
    planned: int
    skipped: int
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_time_s: float = 0.0
    tracking_uri: str = ""
    results_dir: Path = Path()
    report: Path | None = None


class _StudyCallback(tune.Callback):
    """Turns Tune events into MLflow runs, Parquet rows and progress lines."""

    def __init__(
        self,
        study: Study,
        trials: list[Trial],
        tracker: Tracker,
        store: ResultsStore,
        summary: RunSummary,
        out: TextIO,
    ) -> None:
        self.study = study
        self.by_id = {t.trial_id: t for t in trials}
        self.tracker = tracker
        self.store = store
        self.summary = summary
        self.out = out
        self.curves: dict[str, list[dict[str, Any]]] = {}
        self.final: dict[str, dict[str, Any]] = {}
        self.running: dict[str, int] = {}

    def _planned(self, tune_trial: Any) -> Trial:
        return self.by_id[tune_trial.config["trial"]["trial_id"]]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        planned = self._planned(trial)
        if planned.trial_id not in self.tracker.child_ids:
            self.tracker.start_trial(planned, config_hash=planned.trial_id)
        self.curves.setdefault(planned.trial_id, [])
        self.running[planned.trial_id] = 0
        self._progress(f"started {planned.arm} seed={planned.seed} ({planned.trial_id})")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        planned = self._planned(trial)
        step = int(result["step"])
        metrics = {
            k: v
            for k, v in result.items()
            if "/" in k and isinstance(v, (int, float)) and k not in _BOOKKEEPING
        }
        self.tracker.log_metrics(planned.trial_id, step, metrics)
        self.curves[planned.trial_id] += [
            {
                "trial_id": planned.trial_id,
                "arm": planned.arm,
                "seed": planned.seed,
                "step": step,
                "metric": k,
                "value": float(v),
            }
            for k, v in metrics.items()
        ]
        self.running[planned.trial_id] = step
        if result.get(FINAL_KEY):
            self.final[planned.trial_id] = dict(result)
        elif "train/loss" in metrics or "encoder/loss" in metrics:
            stage = result["stage"]
            loss = metrics.get("train/loss", metrics.get("encoder/loss"))
            self._progress(
                f"{planned.arm} seed={planned.seed}: {stage} step {step}/{result['total_steps']} loss {loss:.3f}"
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        planned = self._planned(trial)
        final = self.final.get(planned.trial_id)
        if final is None:
            self._record_failure(planned, "the trial ended without reporting its final evaluation")
            return
        metrics = {k: float(v) for k, v in final.items() if "/" in k and k not in _BOOKKEEPING}
        items = [
            {"trial_id": planned.trial_id, "arm": planned.arm, "seed": planned.seed, **item}
            for item in json.loads(final["eval_items_json"])
        ]
        row = (
            self._row(planned, "finished", None)
            | {
                "wall_time_s": float(final["wall_time_s"]),
                "num_params": int(final["num_params"]),
                "device": final["device"],
                "eval_protocol_json": final["eval_protocol_json"],
                "built_encoder": bool(final["built_encoder"]),
            }
            | protocol_fingerprints(json.loads(final["eval_protocol_json"]))
            | metrics
        )
        self.store.save_trial(row, self.curves.pop(planned.trial_id, []), items)
        self.tracker.end_trial(planned.trial_id, failed=False)
        self.summary.finished.append(planned.trial_id)
        self.running.pop(planned.trial_id, None)
        self._progress(
            f"finished {planned.arm} seed={planned.seed}: "
            + ", ".join(f"{k}={metrics[k]:.3f}" for k in HEADLINE_METRICS if k in metrics)
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        planned = self._planned(trial)
        error = _error_text(trial)
        self._record_failure(planned, error)

    def _record_failure(self, planned: Trial, error: str) -> None:
        self.store.save_trial(self._row(planned, "failed", error), self.curves.pop(planned.trial_id, []), [])
        self.tracker.end_trial(planned.trial_id, failed=True, error=error)
        self.summary.failed[planned.trial_id] = error
        self.running.pop(planned.trial_id, None)
        self._progress(f"FAILED {planned.arm} seed={planned.seed} ({planned.trial_id}): {last_line(error)}")

    def _row(self, planned: Trial, status: str, error: str | None) -> dict[str, Any]:
        return {
            "study": self.study.name,
            "trial_id": planned.trial_id,
            "arm": planned.arm,
            "seed": planned.seed,
            "status": status,
            "error": error,
            "wall_time_s": None,
            "num_params": None,
            "device": None,
            "mlflow_run_id": self.tracker.child_ids.get(planned.trial_id),
            "finished_at": time.time(),
            "config_json": config_json(planned.config),
            # What produced the row: the repository's commit (where there is one) and the core's own source hash.
            "git_commit": self.tracker.commit,
            "code_version": code_version(),
        } | {name: _cell(value) for name, value in planned.axis_values.items()}

    def _progress(self, event: str) -> None:
        s = self.summary
        todo = s.planned - s.skipped
        counts = f"{len(s.finished)}/{todo} done, {len(self.running)} running, {len(s.failed)} failed"
        print(f"[{self.study.name}] {counts} | {event}", file=self.out, flush=True)


def _trial_name(tune_trial: Any) -> str:
    return tune_trial.config["trial"]["trial_id"]


def _cell(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        return Path(path).read_text()
    return str(trial.get_error() or "unknown error")


def _gpus_per_trial(requested: float, out: TextIO, study_name: str) -> float:
    """The study's GPUs per trial, or 0 when the cluster has none: Tune would otherwise wait forever for them."""
    available = ray.cluster_resources().get("GPU", 0.0)
    if requested and not available:
        print(
            f"[{study_name}] the study asks {requested:g} GPU per trial but the Ray cluster has no GPU: "
            "running the trials on CPU",
            file=out,
            flush=True,
        )
        return 0.0
    return requested


def _builders_first(trials: list[Trial]) -> list[Trial]:
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


def run_study(
    study: Study,
    *,
    results_root: Path = Path("results"),
    address: str | None = None,
    tracking_uri: str | None = None,
    out: TextIO = sys.stdout,
) -> RunSummary:
    started = time.time()
    trials = plan(study)
    study_dir = results_root / study.name
    store = ResultsStore(study_dir)
    finished = store.finished_ids()
    todo = _builders_first([t for t in trials if t.trial_id not in finished])
    uri = resolve_tracking_uri(tracking_uri, results_root)
    summary = RunSummary(
        study.name, len(trials), len(trials) - len(todo), tracking_uri=uri, results_dir=study_dir
    )
    print(
        f"[{study.name}] {len(trials)} trials planned, {summary.skipped} already finished, {len(todo)} to run; "
        f"MLflow: {uri}; results: {study_dir}",
        file=out,
        flush=True,
    )
    spec_json = study.spec.model_dump(mode="json") | {
        "reference_values": reference_axis_values(study),
        # The current plan: what a running study's report lists as still to come, and which recorded rows are
        # stale (a trial no longer planned is kept on disk but never averaged in).
        "planned": [{"trial_id": t.trial_id, "arm": t.arm, "seed": t.seed} for t in trials],
    }
    (study_dir / "study.json").write_text(json.dumps(spec_json, indent=2))
    if not todo:
        return summary
    tracker = Tracker(uri, study.name, study.spec.description, results_root)
    resources = study.spec.resources
    address = address or os.environ.get("RAY_ADDRESS")
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(
            address=address or "local",  # "local": never attach to a cluster some earlier process left behind
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    cluster = ray.cluster_resources()
    where = f"joined the Ray cluster at {address}" if address else "started an embedded Ray"
    print(
        f"[{study.name}] {where}: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
        f"{resources.cpu:g} CPU per trial",
        file=out,
        flush=True,
    )
    gpus_per_trial = _gpus_per_trial(resources.gpu, out, study.name)
    payloads = [
        {
            "trial_id": t.trial_id,
            "config": t.config,
            "num_cpus": resources.cpu,
            "checkpoint_dir": str((study_dir / "checkpoints").resolve()),
            "cache_dir": str(stage_cache_dir(results_root).resolve()),
        }
        for t in todo
    ]
    callback = _StudyCallback(study, todo, tracker, store, summary, out)
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": resources.cpu, "gpu": gpus_per_trial}),
        param_space={"trial": tune.grid_search(payloads)},
        tune_config=tune.TuneConfig(
            num_samples=1,
            reuse_actors=False,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=study.name,
            storage_path=str((study_dir / "ray").resolve()),
            callbacks=[callback, JsonLoggerCallback()],
            verbose=0,
        ),
    )
    try:
        tuner.fit()
    finally:
        summary.wall_time_s = time.time() - started
        if store.trials_path.exists():
            summary.report = write_report(study_dir, tracking_uri=uri)
            write_index(results_root)
            for name in ("report.html", "summary.md", "arms.csv", "comparisons.csv", "findings.csv"):
                if (study_dir / name).exists():
                    tracker.log_artifact(study_dir / name)
            if (study_dir / "arms.csv").exists():
                tracker.log_arm_aggregates(pd.read_csv(study_dir / "arms.csv").to_dict("records"))
        tracker.end_study(
            failed=bool(summary.failed) or len(summary.finished) + len(summary.failed) < len(todo),
            summary={
                "planned": len(trials),
                "finished": len(summary.finished) + summary.skipped,
                "failed": len(summary.failed),
            },
        )
        if started_ray:
            ray.shutdown()
    return summary
