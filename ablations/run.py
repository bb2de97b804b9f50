"""Run a study on Ray Tune: one Tune trial per planned trial, bookkeeping (MLflow, Parquet, progress) on the driver.

Ray is started embedded unless an address is given (`--address`, or RAY_ADDRESS) to join a running cluster.
Trials already finished in results/<study>/trials.parquet are skipped; a trial that raises is recorded as failed with
its error and the others go on.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

# Tune's CSV and TensorBoard loggers would duplicate what MLflow and Parquet hold; its JSON log is kept (below)
# because Tune reads its own results back from it.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Only a trial's evaluation rounds carry the objective that a scheduler or searcher reads; its training-loss reports
# between them do not, and Tune's scheduler and our searcher pass over those (ablations.search).
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")

import pandas as pd
import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler

from ablations.claims import TrialClaims
from ablations.cost import estimate_search, estimate_study
from ablations.handoff import (
    DIVERGED_KEY,
    FINAL_KEY,
    OBJECTIVE,
    OBJECTIVE_FINAL,
    REPORTER_NICE,
    RUN_KEY,
    Reporter,
    write_report,
)
from ablations.leftovers import (
    end_leftovers,
    forget_processes,
    record_processes,
    stop_on_signals_as_on_ctrl_c,
)
from ablations.plan import Trial, plan, run_order, stage_cache_dir
from ablations.results import (
    ResultsStore,
    axis_cell,
    checkpoints_begun_by_other_code,
    config_json,
    finished_unlike,
    multimodal_shares_done,
    record_checkpoint_code,
)
from ablations.search import (
    configuration_runs,
    make_searcher,
    open_storage,
    remaining_configurations,
    search_name,
    storage_url,
)
from ablations.spec import Study, axis_field, reference_axis_values
from ablations.suite import adopt_finished
from ablations.tracking import Tracker, check_reachable, redacted, resolve_tracking_uri
from ablations.trial import train_trial
from mm1core import schema
from mm1core.eval import HEADLINE_METRICS, file_task_headlines
from mm1core.eval.protocol import protocol_fingerprints
from mm1core.hardware import cpu_model_name
from mm1core.schema import last_line
from mm1core.stage_cache import code_version
from mm1core.storage import atomic_write_text

__all__ = ["EMBEDDED_HERE", "ClusterTooSmall", "RunSummary", "run_study", "side_by_side_runtime"]

# The address of a Ray runtime a suite run embedded on this machine for its drivers (side_by_side_runtime).
EMBEDDED_HERE = "MM1ABLATE_EMBEDDED_RAY"


@dataclass
class RunSummary:
    study: str
    planned: int
    skipped: int
    finished: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    diverged: dict[str, str] = field(default_factory=dict)
    wall_time_s: float = 0.0
    tracking_uri: str = ""
    results_dir: Path = Path()
    report: Path | None = None
    # trial id -> the driver that holds it: trials of this study another driver is training (ablations.claims)
    elsewhere: dict[str, str] = field(default_factory=dict)

    @property
    def interrupted(self) -> int:
        """How many of the runs this execution set out to do it did not end (Ctrl-C, a stop): a re-run resumes them."""
        ended = len(self.finished) + len(self.stopped) + len(self.failed) + len(self.diverged)
        return max(0, self.planned - self.skipped - len(self.elsewhere) - ended)


class _StudyCallback(tune.Callback):
    """Turns Tune events into MLflow runs, Parquet rows and progress lines, run by run.

    A Tune trial holds one training run (a planned trial) or, in a search, one configuration's runs; every report
    names its run (RUN_KEY), and the objective reports the searcher and scheduler read name none. A run is recorded
    the moment its final report arrives; runs of a Tune trial that ends without theirs were stopped early (by the
    scheduler) or failed.
    """

    def __init__(
        self,
        study: Study,
        trials: list[Trial],
        tracker: Future[Tracker],
        store: ResultsStore,
        summary: RunSummary,
        out: TextIO,
        *,
        gpu: bool,
        claims: TrialClaims,
    ) -> None:
        self.study = study
        self.claims = claims
        self.by_id = {t.trial_id: t for t in trials}
        self._tracker = tracker
        self.store = store
        self.summary = summary
        self.out = out
        self.gpu = gpu
        self.search = search_name(study) if study.spec.search else None
        self.runs_of: dict[str, list[Trial]] = {}
        self.curves: dict[str, list[dict[str, Any]]] = {}
        self.received: dict[str, set[tuple[int, str]]] = {}
        self.last_step: dict[str, int] = {}
        self.recorded: set[str] = set()
        self.running: dict[str, int] = {}

    @property
    def tracker(self) -> Tracker:
        """MLflow's store is opened beside Ray's and Tune's start (MLflow's import alone is a second of the driver):
        the first trial to start waits for it if it is not ready yet; the trial's worker is starting meanwhile."""
        return self._tracker.result()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment's folder for Tuner.restore, which a study never uses (it
        # resumes from its own records): the live tracker and the open claims stay out.
        return {k: v for k, v in self.__dict__.items() if k not in ("_tracker", "claims")}

    def _runs(self, tune_trial: Any) -> list[Trial]:
        if tune_trial.trial_id not in self.runs_of:
            payload = tune_trial.config["trial"]
            if "runs" in payload:
                runs = [self.by_id[run["trial_id"]] for run in payload["runs"]]
            else:
                params = {k: v for k, v in tune_trial.config.items() if k != "trial"}
                runs = configuration_runs(self.study, params, gpu=self.gpu)
                self.by_id |= {run.trial_id: run for run in runs}
            self.runs_of[tune_trial.trial_id] = runs
        return self.runs_of[tune_trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for planned in self._runs(trial):
            journal = []
            if planned.trial_id not in self.curves:
                self.curves[planned.trial_id] = []
                self.received[planned.trial_id] = set()
                # What a killed driver of this study had received: kept, not logged again (start_trial sends MLflow
                # the part of it that driver had not sent yet).
                journal = self.store.journal_read(planned.trial_id)
                for step, metrics in journal:
                    self._add_points(planned, step, metrics)
            if planned.trial_id not in self.tracker.started:
                self.tracker.start_trial(planned, config_hash=planned.trial_id, received=journal)
            self.running[planned.trial_id] = 0
            self._progress(f"started {planned.arm} seed={planned.seed} ({planned.trial_id})")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._runs(trial)
        if RUN_KEY not in result:  # the objective over a configuration's runs, for the searcher and scheduler
            return
        planned = self.by_id[result[RUN_KEY]]
        step = int(result["step"])
        metrics = {k: v for k, v in result.items() if schema.is_metric(k) and isinstance(v, (int, float))}
        # A resumed trial replays the steps since its checkpoint; what was received before is not logged twice.
        fresh = {k: v for k, v in metrics.items() if (step, k) not in self.received[planned.trial_id]}
        if fresh:
            self.store.journal_append(planned.trial_id, step, fresh)
            self.tracker.log_metrics(planned.trial_id, step, fresh)
            self._add_points(planned, step, fresh)
        self.running[planned.trial_id] = step
        if result.get("stage") == "multimodal":
            self.last_step[planned.trial_id] = step
        if DIVERGED_KEY in result:
            self._record_diverged(planned, result[DIVERGED_KEY], step)
        elif result.get(FINAL_KEY):
            self._record_finished(planned, result, metrics)
        elif "train/loss" in fresh or "encoder/loss" in fresh:
            # Only news: a resumed run replays its reports log and then retrains from its checkpoint, and a progress
            # line for each replayed step read as if it had started over, twice.
            stage = result["stage"]
            loss = fresh.get("train/loss", fresh.get("encoder/loss"))
            self._progress(
                f"{planned.arm} seed={planned.seed}: {stage} step {step}/{result['total_steps']} loss {loss:.3f}"
            )

    def _add_points(self, planned: Trial, step: int, metrics: dict[str, float]) -> None:
        self.received[planned.trial_id] |= {(step, k) for k in metrics}
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

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        stopped = self.study.scheduler is not None and not last.get(OBJECTIVE_FINAL)
        for planned in self._runs(trial):
            if planned.trial_id in self.recorded:
                continue
            if stopped:
                self._record_stopped(planned)
            else:
                self._record_failure(planned, "the trial ended without reporting its final evaluation")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _error_text(trial)
        for planned in self._runs(trial):
            if planned.trial_id not in self.recorded:
                self._record_failure(planned, error)

    def _record_finished(self, planned: Trial, final: dict, metrics: dict[str, Any]) -> None:
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
                "node": final.get("node"),
                "cpu_model": final.get("cpu_model"),
                "resumed": bool(final.get("resumed", False)),
                "machines_json": final.get("machines_json"),
                "eval_protocol_json": final["eval_protocol_json"],
                "built_encoder": bool(final["built_encoder"]),
            }
            | protocol_fingerprints(json.loads(final["eval_protocol_json"]))
            | {k: float(v) for k, v in metrics.items()}
        )
        self.store.save_trial(row, self.curves.pop(planned.trial_id, []), items)
        self.tracker.end_trial(planned.trial_id, status="finished")
        self._ended(planned)
        self.summary.finished.append(planned.trial_id)
        self._progress(
            f"finished {planned.arm} seed={planned.seed}: "
            + ", ".join(
                f"{k}={metrics[k]:.3f}"
                for k in [*HEADLINE_METRICS, *file_task_headlines(list(metrics))]
                if k in metrics
            )
        )

    def _record_stopped(self, planned: Trial) -> None:
        """A run the scheduler cut: the step it reached and the last value of each metric, kept apart from finished
        runs; its checkpoint lets a later run of the study without the scheduler finish it."""
        curves = self.curves.pop(planned.trial_id, [])
        last: dict[str, float] = {}
        for point in curves:  # in step order: the last value of each metric wins
            last[point["metric"]] = point["value"]
        step = self.last_step.get(planned.trial_id, 0)
        row = self._row(planned, "stopped", None) | {"stopped_at_step": step} | last
        self.store.save_trial(row, curves, [])
        self.tracker.end_trial(planned.trial_id, status="stopped")
        self._ended(planned)
        self.summary.stopped.append(planned.trial_id)
        self._progress(f"stopped early {planned.arm} seed={planned.seed} at step {step} (scheduler)")

    def _record_diverged(self, planned: Trial, why: str, step: int) -> None:
        """A run whose loss or gradient became non-finite: an outcome of its recipe, kept with the step it reached
        and its curve, shown in the report, and not run again unless asked (`mm1ablate run --rerun-diverged`)."""
        row = self._row(planned, "diverged", why) | {"stopped_at_step": step}
        self.store.save_trial(row, self.curves.pop(planned.trial_id, []), [])
        self.tracker.end_trial(planned.trial_id, status="diverged", error=why)
        self._ended(planned)
        self.summary.diverged[planned.trial_id] = why
        self._progress(f"DIVERGED {planned.arm} seed={planned.seed} at step {step}: {why}")

    def _record_failure(self, planned: Trial, error: str) -> None:
        self.store.save_trial(self._row(planned, "failed", error), self.curves.pop(planned.trial_id, []), [])
        self.tracker.end_trial(planned.trial_id, status="failed", error=error)
        self._ended(planned)
        self.summary.failed[planned.trial_id] = error
        self._progress(f"FAILED {planned.arm} seed={planned.seed} ({planned.trial_id}): {last_line(error)}")

    def _ended(self, planned: Trial) -> None:
        self.recorded.add(planned.trial_id)
        self.running.pop(planned.trial_id, None)
        self.claims.release(planned.trial_id)  # recorded: a driver waiting for it counts it now

    def _row(self, planned: Trial, status: str, error: str | None) -> dict[str, Any]:
        return (
            {
                "study": self.study.name,
                "trial_id": planned.trial_id,
                "arm": planned.arm,
                "seed": planned.seed,
                "status": status,
                "error": error,
                "wall_time_s": None,
                "num_params": None,
                "device": None,
                "mlflow_run_id": self.tracker.run_id(planned.trial_id),
                "finished_at": time.time(),
                "config_json": config_json(planned.config),
                # What produced the row: the repository's commit (where there is one) and the core's own source hash.
                "git_commit": self.tracker.commit,
                "code_version": code_version(),
            }
            | {name: axis_cell(value) for name, value in planned.axis_values.items()}
            | ({"search": self.search} if self.search else {})
        )

    def _progress(self, event: str) -> None:
        s = self.summary
        todo = s.planned - s.skipped - len(s.elsewhere)
        stopped = f", {len(s.stopped)} stopped" if s.stopped else ""
        counts = (
            f"{len(s.finished)}/{todo} done{stopped}, {len(self.running)} running, {len(s.failed)} failed"
        )
        print(f"[{self.study.name}] {counts} | {event}", file=self.out, flush=True)


def _trial_name(tune_trial: Any) -> str:
    runs = tune_trial.config["trial"].get("runs")
    return runs[0]["trial_id"] if runs else f"configuration_{tune_trial.trial_id}"


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        return Path(path).read_text()
    return str(trial.get_error() or "unknown error")


class ClusterTooSmall(RuntimeError):
    """A trial asks for more than any node of the cluster has: Tune would wait for it forever."""


def _larger_than_any_node(cpu_per_trial: float, cluster: str) -> str | None:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    largest = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
    if cpu_per_trial <= largest:
        return None
    return (
        f"resources.cpu is {cpu_per_trial:g} per trial, but the largest node of the Ray cluster ({cluster}) has "
        f"{largest:g} CPUs: no trial could ever start. Lower resources.cpu, or run on a cluster with larger nodes"
    )


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


@contextlib.contextmanager
def side_by_side_runtime(suite_name: str, results_root: Path, address: str | None) -> Any:
    """The Ray runtime that a suite's drivers share when they run its studies at once (`mm1ablate run SUITE`):
    the cluster at `address` (or RAY_ADDRESS) where there is one, else one embedded here for as long as the block
    runs. Yields the address the drivers join. What a killed run of this suite on this host left running is ended
    first; a second run of it on this host at once is refused (StudyBusy). The drivers' environment names an
    embedded runtime (EMBEDDED_HERE): their trials run on this machine, as a study's own embedded Ray's do."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        yield address
        return
    here = results_root / "suites" / f".{suite_name}.{socket.gethostname()}"
    here.mkdir(parents=True, exist_ok=True)
    with ResultsStore.lock_of(here, what=f"suite {suite_name!r} on this host"):
        end_leftovers(here)
        with _without_unused_helpers():
            context = ray.init(
                address="local",
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                _system_config={"prestart_worker_first_driver": False},
            )
        record_processes(here)
        embedded = context.address_info["gcs_address"]
        os.environ[EMBEDDED_HERE] = embedded
        try:
            yield embedded
        finally:
            os.environ.pop(EMBEDDED_HERE, None)
            ray.shutdown()
            forget_processes(here)


@contextlib.contextmanager
def _without_unused_helpers() -> Any:
    """ray.init, for an embedded Ray without three helper processes that a study never uses: the autoscaler's
    monitor (an embedded Ray has nothing to scale), the log monitor (the driver does not take its workers' output:
    log_to_driver=False; it stays in Ray's session logs) and the API server (with include_dashboard=False it serves
    only Ray's usage stats, which ray.init turns off; nothing of a study talks to it). Each is a Python process that
    imports Ray while the study starts (0.7-0.9 CPU-s each, on 2 cores beside the driver); ending the first two
    gracefully was 1.3 s of Ray's shutdown, and ray.init waited 2 s for the API server to publish its address
    (bench/README.md, run overhead). ray.init has no argument for them: the monitors are fields of the RayParams it
    builds (since Ray 1.x) and the API server is a method of the head Node it makes; a Ray that renamed them starts
    its helpers as before."""
    params = ray._private.parameter.RayParams
    node = ray._private.node.Node
    original_params, original_api_server = params.__init__, getattr(node, "start_api_server", None)
    if {"no_monitor", "include_log_monitor"} <= inspect.signature(original_params).parameters.keys():

        def lean(self: Any, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("no_monitor", True)
            kwargs.setdefault("include_log_monitor", False)
            original_params(self, *args, **kwargs)

        params.__init__ = lean
    if original_api_server is not None:
        node.start_api_server = lambda self, **kwargs: None
    try:
        yield
    finally:
        params.__init__ = original_params
        if original_api_server is not None:
            node.start_api_server = original_api_server


def _skipped(study: Study, statuses: dict[str, str], trials: list[Trial], rerun_diverged: bool) -> set[str]:
    """Trials a run leaves alone: finished ones; while the study still has its scheduler, those it stopped (its
    decision stands; without the scheduler they resume from their checkpoints and run to the end); and diverged
    ones, which would diverge again, unless asked to run them again (after a change that is not in their config)."""
    left_alone = {"finished"}
    if study.scheduler is not None:
        left_alone.add("stopped")
    if not rerun_diverged:
        left_alone.add("diverged")
    return {t.trial_id for t in trials if statuses.get(t.trial_id) in left_alone}


def _scheduler(study: Study) -> ASHAScheduler | None:
    declared = study.scheduler
    if declared is None:
        return None
    return ASHAScheduler(
        time_attr="step",
        metric=OBJECTIVE,
        mode=declared.mode,
        max_t=int(study.reference["train"]["steps"]),
        grace_period=declared.grace_period,
        reduction_factor=declared.reduction_factor,
        stop_last_trials=False,  # a trial that reaches the end finishes with its final evaluation, not cut at it
    )


OTHER_CODE = (
    "other-code"  # results/<study>/parts/other-code/: the records of trials trained again with this code
)


class _Reruns(NamedTuple):
    """Which ended trials a run trains again rather than leaving them as they are."""

    diverged: bool
    other_code: bool


def run_study(
    study: Study,
    *,
    results_root: Path = Path("results"),
    address: str | None = None,
    tracking_uri: str | None = None,
    out: TextIO = sys.stdout,
    rerun_diverged: bool = False,
    rerun_other_code: bool = False,
    max_failures: int = 2,
    wait_for_others: bool = True,
) -> RunSummary:
    """Run what is left of a study; raises StudyBusy while another runner holds it.

    rerun_other_code: train again the finished trials that another version of mm1core trained (their results set
    aside, their MLflow runs marked superseded), where by default they count as finished, and from step 0 the
    unfinished runs it began, where by default they resume from their checkpoints.
    max_failures: how often Tune retries a trial whose process died (the OOM killer, a lost node), each time from
    its last checkpoint, before it is recorded as failed.
    wait_for_others: whether to wait for the trials another driver is training and count them (by default), or to
    return once the rest have ended, `elsewhere` naming them: a suite's driver runs its next study meanwhile and
    comes back to this one.
    """
    store = ResultsStore(results_root / study.name)
    with store.exclusive():
        claims = TrialClaims(results_root, study.name)
        run = functools.partial(
            _run_study,
            study,
            store,
            results_root,
            address,
            tracking_uri,
            out,
            _Reruns(rerun_diverged, rerun_other_code),
            max_failures,
            claims,
        )
        try:
            summary = run()
            # Stopped (Ctrl-C), it neither waits nor trains what the other driver left: the next run does.
            while summary.elsewhere and not summary.interrupted:
                holders = "; ".join(sorted(set(summary.elsewhere.values())))
                if not wait_for_others and not summary.failed:  # a failure ends the study as it would alone
                    print(
                        f"[{study.name}] {len(summary.elsewhere)} trials another driver is training ({holders}): "
                        "back to them after the suite's other studies",
                        file=out,
                        flush=True,
                    )
                    break
                print(
                    f"[{study.name}] waiting for the {len(summary.elsewhere)} trials another driver is training "
                    f"({holders}): they count here when they end",
                    file=out,
                    flush=True,
                )
                claims.wait_for(summary.elsewhere)
                summary = _then(summary, run(only=set(summary.elsewhere)))
        finally:
            claims.release_all()
        return summary


def _then(first: RunSummary, later: RunSummary) -> RunSummary:
    """A study's run, then its second pass over the trials another driver held: what the two did, as one."""
    counted = len(first.elsewhere) - (later.planned - later.skipped)  # ended elsewhere: counted, not trained
    return RunSummary(
        first.study,
        first.planned,
        first.skipped + counted,
        finished=first.finished + later.finished,
        stopped=first.stopped + later.stopped,
        failed=first.failed | later.failed,
        diverged=first.diverged | later.diverged,
        wall_time_s=first.wall_time_s + later.wall_time_s,
        tracking_uri=later.tracking_uri,
        results_dir=later.results_dir,
        report=later.report or first.report,
        elsewhere=later.elsewhere,
    )


def _run_study(
    study: Study,
    store: ResultsStore,
    results_root: Path,
    address: str | None,
    tracking_uri: str | None,
    out: TextIO,
    reruns: _Reruns,
    max_failures: int,
    claims: TrialClaims,
    *,
    only: set[str] | None = None,
) -> RunSummary:
    """One pass over what is left of the study; `only`: of these trials (a second pass over those another driver
    held in the first)."""
    started = time.time()
    search = study.spec.search
    trials = plan(study)
    study_dir = store.dir
    store.consolidate()  # parts a killed driver wrote after its last consolidation
    uri = resolve_tracking_uri(tracking_uri, results_root)
    check_reachable(uri)  # before anything starts or moves: a server that is down is one line, at once
    older: dict[str, str] = {}  # trial id -> the other mm1core that trained it
    restarted: set[str] = set()  # unfinished runs other model code began, trained again from step 0
    held: dict[str, str] = {}  # trial id -> the other driver training it now (ablations.claims)
    if search is None:
        by_other_code = finished_unlike(study_dir, "code_version", code_version())
        older = {t.trial_id: by_other_code[t.trial_id] for t in trials if t.trial_id in by_other_code}
        if older and reruns.other_code:  # before adoption: another study's run of this code counts for them
            store.set_aside(set(older), OTHER_CODE)
        adopted = adopt_finished(study, trials, results_root)
        if adopted:
            print(
                f"[{study.name}] counting {len(adopted)} finished runs of the same trials (config, seed and code) "
                "from " + ", ".join(sorted({source for _, source in adopted})) + ", not training them again",
                file=out,
                flush=True,
            )
        statuses = store.statuses()
        # On another CPU the same trial gives another run: where this run trains on this machine beside trials
        # that ran on another, the comparisons will pair runs of two machines (on a cluster, where its trials run
        # is the cluster's to say, and the report says it).
        joined = address or os.environ.get("RAY_ADDRESS")
        on_this_machine = not (joined or ray.is_initialized()) or joined == os.environ.get(EMBEDDED_HERE)
        elsewhere = (
            finished_unlike(study_dir, "cpu_model", cpu_model_name())
            if on_this_machine and not study.spec.resources.gpu
            else {}
        )
        elsewhere = {t.trial_id: elsewhere[t.trial_id] for t in trials if t.trial_id in elsewhere}
        skipped = _skipped(study, statuses, trials, reruns.diverged)
        wanted = [t for t in trials if t.trial_id not in skipped and (only is None or t.trial_id in only)]
        # Another driver is training these now: counted here when they end. Ordered before they are left out, so
        # that the users of an encoder a held trial builds stay behind it rather than start first and wait for it.
        held = claims.take(t.trial_id for t in wanted)
        todo = [t for t in run_order(wanted) if t.trial_id not in held]
        todo_ids = [t.trial_id for t in todo]
        # Resumed, a run another mm1core began would be part that code's and part this one's, its row naming only
        # this one: counted as it is, as a finished trial of other code is, unless asked otherwise.
        begun = checkpoints_begun_by_other_code(study_dir, todo_ids, code_version())
        if begun and reruns.other_code:
            store.start_over(set(begun))
            restarted = set(begun)
        record_checkpoint_code(study_dir, todo_ids, code_version())
        begun_by = ", ".join(sorted(set(begun.values())))
        planned, to_run = len(trials), len(todo)
        left = {status: sum(statuses.get(t) == status for t in skipped) for status in ("stopped", "diverged")}
        finished = len(skipped) - sum(left.values())
        # Finished is finished, whichever mm1core trained it, unless asked otherwise: said here and in the report.
        versions = ", ".join(sorted(set(older.values())))
        what = (
            f"{len(trials)} trials planned, {finished} already finished"
            + (
                f" ({len(older)} of them by other model code, mm1core {versions}: they count as they are; "
                "`--rerun-other-code` trains them again)"
                if older and not reruns.other_code
                else ""
            )
            + (
                f" ({len(elsewhere)} of them on another CPU, {', '.join(sorted(set(elsewhere.values())))}: the "
                "same trial gives another run there, so the report names the comparisons that pair runs of two "
                "machines)"
                if elsewhere
                else ""
            )
            + ", "
            + (
                f"{len(older)} set aside as trained by other model code (mm1core {versions}), "
                if older and reruns.other_code
                else ""
            )
            + "".join(f"{n} {status} (left as they are), " for status, n in left.items() if n)
            + f"{len(todo)} to run"
            + (
                f" ({len(held)} more another driver is training now, "
                f"{'; '.join(sorted(set(held.values())))}: counted here when they end)"
                if held
                else ""
            )
            + (
                f" ({len(begun)} of them resume from checkpoints that other model code began, mm1core {begun_by}: "
                "each would be part one code's run and part this one's; `--rerun-other-code` starts them over)"
                if begun and not reruns.other_code
                else ""
            )
            + (
                f" ({len(begun)} of them, begun by other model code, mm1core {begun_by}, start over)"
                if begun and reruns.other_code
                else ""
            )
        )
    else:
        if reruns.other_code:
            print(
                f"[{study.name}] --rerun-other-code: not for a search, whose tried configurations stand; "
                "a study of its own trains them again",
                file=out,
                flush=True,
            )
        storage = open_storage(study_dir)
        configurations = remaining_configurations(study, storage)
        planned, to_run = search.trials * search.seeds, configurations * search.seeds
        what = (
            f"search of {search.trials} configurations x {search.seeds} seed(s) ({search.sampler}), "
            f"{search.trials - configurations} already tried, {configurations} to try; Optuna: {storage_url(study_dir)}"
        )
    summary = RunSummary(study.name, planned, planned - to_run, tracking_uri=uri, results_dir=study_dir)
    if search is None:
        summary.elsewhere = held
        summary.skipped -= len(held)
    print(f"[{study.name}] {what}; MLflow: {redacted(uri)}; results: {study_dir}", file=out, flush=True)
    if not to_run:
        _write_study_json(study, study_dir, trials)
        if search is None and not held and (adopted or not (study_dir / "report.html").exists()):
            # Runs counted from another study are new rows of this one: its report must say what it holds now.
            def report() -> None:
                # The reporter `mm1ablate run` started ahead, not a second one beside it.
                summary.report = write_report(
                    study_dir, results_root, tracking_uri=redacted(uri), nice=REPORTER_NICE
                )

            _reported(study.name, study_dir, out, report)
        return summary
    resources = study.spec.resources
    address = address or os.environ.get("RAY_ADDRESS")
    started_ray = not ray.is_initialized()
    # Ray's and Tune's starts take seconds, and so do the estimate and MLflow's store: side by side, a study of short
    # trials does not pay for both (bench/README.md, run overhead).
    setup = ThreadPoolExecutor(max_workers=1)
    estimated = setup.submit(
        _estimate_and_record, study, todo if search is None else [], trials, results_root, out
    )
    # The trials' callback waits for the tracker when the first trial starts, and the rest of this function at
    # its end; Ray and Tune start meanwhile.
    opened = setup.submit(Tracker, uri, study.name, study.spec.description, results_root)
    setup.shutdown(wait=False)  # its two tasks go on, in order; the executor takes no others
    try:
        if started_ray:
            left = end_leftovers(study_dir)
            if left:
                print(
                    f"[{study.name}] ended {left} Ray processes a killed run had left behind",
                    file=out,
                    flush=True,
                )
            with contextlib.nullcontext() if address else _without_unused_helpers():
                # "local": never attach to a cluster some earlier process left behind
                ray.init(
                    address=address or "local",
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                    # Workers Ray starts ahead for tasks would import Ray on every core while Tune starts, and
                    # Tune's trial actors never use them (an actor with Tune's runtime env gets a process of its own).
                    **({} if address else {"_system_config": {"prestart_worker_first_driver": False}}),
                )
            if not address:
                record_processes(study_dir)
        stop_on_signals_as_on_ctrl_c()  # ray.init made SIGTERM end the driver at once
        # A calibration of the trial shape, where the estimate needs one, measures an idle machine: no trial starts
        # before it ends.
        estimate = estimated.result()
        # Set aside by this run or by one that ended before its trials opened their runs: before any trial opens
        # its run, each gets a new one rather than its old code's reopened.
        retrained = (
            (store.set_aside_ids(OTHER_CODE) | restarted) & {t.trial_id for t in todo}
            if search is None
            else set()
        )
        if retrained:
            opened.result().supersede(retrained)
    except BaseException:
        futures_wait([estimated, opened])
        if started_ray:
            ray.shutdown()
        raise
    cluster = ray.cluster_resources()
    where = (
        "started an embedded Ray"
        if not address
        else f"joined its suite run's Ray on this machine ({address})"
        if address == os.environ.get(EMBEDDED_HERE)
        else f"joined the Ray cluster at {address}"
    )
    print(
        f"[{study.name}] {where}: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
        f"{resources.cpu:g} CPU per trial",
        file=out,
        flush=True,
    )
    too_large = _larger_than_any_node(resources.cpu, address or "embedded on this machine")
    if too_large:
        opened.result().end_study(failed=True, summary={"planned": planned, "refused": too_large})
        if started_ray:
            ray.shutdown()
        raise ClusterTooSmall(f"study {study.name!r}: {too_large}")
    gpus_per_trial = _gpus_per_trial(resources.gpu, out, study.name)
    scheduler = study.scheduler
    common = {
        "num_cpus": resources.cpu,
        "num_gpus": gpus_per_trial,
        "checkpoint_dir": str((study_dir / "checkpoints").resolve()),
        "cache_dir": str(stage_cache_dir(results_root).resolve()),
        "objective": search.metric if search else scheduler.metric if scheduler else None,
    }
    if search is None:
        payloads = [common | {"runs": [{"trial_id": t.trial_id, "config": t.config}]} for t in todo]
        param_space = {"trial": tune.grid_search(payloads)}
        search_alg, num_samples = None, 1
    else:
        spec_json = study.spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
        param_space = {"trial": common | {"study": spec_json}}
        search_alg, num_samples = make_searcher(study, storage), configurations
    callback = _StudyCallback(
        study,
        todo if search is None else [],
        opened,
        store,
        summary,
        out,
        gpu=gpus_per_trial > 0,
        claims=claims,
    )
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": resources.cpu, "gpu": gpus_per_trial}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            search_alg=search_alg,
            scheduler=_scheduler(study),
            # One worker process trains trial after trial: short trials no longer pay a process start and the
            # imports each (the trainable holds no state between trials).
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=study.name,
            storage_path=str((study_dir / "ray").resolve()),
            callbacks=[callback, JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=0,
        ),
    )
    reporter = Reporter.started(study_dir, results_root, tracking_uri=redacted(uri), nice=REPORTER_NICE)
    try:
        tuner.fit()
    finally:
        # Ray's shutdown takes a second or more and the report does not need it: both at once.
        stopping = threading.Thread(target=ray.shutdown, daemon=True) if started_ray else None
        if stopping is not None:
            stopping.start()
        try:
            tracker = opened.result()
            summary.wall_time_s = time.time() - started
            store.consolidate()
            _write_study_json(
                study,
                study_dir,
                store.trials_of_search(search_name(study)) if search is not None else trials,
                estimate=estimate,
                ran={
                    "started_at": started,
                    "wall_s": time.time() - started,
                    "trials_run": to_run,
                    "estimated_wall_s": estimate.get("wall_s"),
                    "mlflow_experiment_id": tracker.experiment_id,
                    "mlflow_run_id": tracker.parent_id,
                },
            )
            if store.trials_path.exists():
                _reported(
                    study.name,
                    study_dir,
                    out,
                    lambda: _publish(study_dir, reporter, tracker, summary),
                )
            reporter.close()
            tracker.end_study(
                failed=bool(summary.failed) or summary.interrupted > 0,
                summary={
                    "planned": planned,
                    "finished": len(summary.finished) + summary.skipped,
                    "stopped": len(summary.stopped),
                    "failed": len(summary.failed),
                    "diverged": len(summary.diverged),
                },
            )
        finally:
            if stopping is not None:
                stopping.join()
                forget_processes(study_dir)
    return summary


def _estimate_and_record(
    study: Study, todo: list[Trial], trials: list[Trial], results_root: Path, out: TextIO
) -> dict[str, Any]:
    """The estimate, and the study's record of it."""
    estimate = _estimate(study, todo, results_root, out)
    _write_study_json(study, results_root / study.name, trials, estimate=estimate)
    return estimate


def _estimate(study: Study, todo: list[Trial], results_root: Path, out: TextIO) -> dict[str, Any]:
    """What the plan says this run will cost (ablations.cost), as recorded beside what it did cost."""
    try:
        if study.spec.search is not None:
            search = estimate_search(study, results_root=results_root, out=out)
            return {"wall_s": search.wall_s, "per_run_s": search.per_run_s, "sources": search.sources}
        resumed = multimodal_shares_done(results_root / study.name)
        estimate = estimate_study(
            todo,
            results_root=results_root,
            cpu_per_trial=study.spec.resources.cpu,
            out=out,
            multimodal_share_done=resumed,
        )
    except RuntimeError as err:  # a calibration that fails costs the estimate, never the study
        print(f"[{study.name}] no estimate: {err}", file=out, flush=True)
        return {}
    resuming = sum(t.trial_id in resumed for t in todo)
    print(
        f"[{study.name}] estimate: about {estimate.wall_s / 60:.1f} min on {estimate.slots} slots"
        + (f" ({resuming} of the trials resume from their checkpoints)" if resuming else ""),
        file=out,
        flush=True,
    )
    return {
        "wall_s": estimate.wall_s,
        "slots": estimate.slots,
        "sources": sorted(set(estimate.sources)),
        "trials": {trial_id: e.total_s for trial_id, e in estimate.trials.items()},
    }


def _reported(name: str, study_dir: Path, out: TextIO, write: Callable[[], None]) -> None:
    """Write the report; the results are on disk, so a report that fails costs the report, not the run."""
    try:
        write()
    except Exception as err:
        print(
            f"[{name}] the report failed ({type(err).__name__}: {err}); the results are in "
            f"{study_dir}, `mm1ablate report {name}` writes it again",
            file=out,
            flush=True,
        )


def _publish(study_dir: Path, reporter: Reporter, tracker: Tracker, summary: RunSummary) -> None:
    """The report, the index, and both as artifacts of the study's MLflow run."""
    summary.report = reporter.write()
    for name in ("report.html", "summary.md", "arms.csv", "comparisons.csv", "findings.csv"):
        if (study_dir / name).exists():
            tracker.log_artifact(study_dir / name)
    if (study_dir / "arms.csv").exists():
        tracker.log_arm_aggregates(pd.read_csv(study_dir / "arms.csv").to_dict("records"))


def _write_study_json(
    study: Study,
    study_dir: Path,
    trials: list[Trial] | list[dict],
    *,
    estimate: dict[str, Any] | None = None,
    ran: dict[str, Any] | None = None,
) -> None:
    """The spec and the current plan: what a running study's report lists as still to come, and which recorded
    rows are stale (a trial no longer planned is kept on disk but never averaged in). A search's plan is the runs
    its current Optuna study has made. Each run of the study adds its estimate and its actual wall time."""
    path = study_dir / "study.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    planned = [
        t if isinstance(t, dict) else {"trial_id": t.trial_id, "arm": t.arm, "seed": t.seed} for t in trials
    ]
    spec_json = study.spec.model_dump(mode="json", by_alias=True, exclude_none=True) | {
        "reference_values": reference_axis_values(study),
        "axis_fields": {a.name: axis_field(a.name) for a in study.spec.axes},
        # The report reads which file task stands in for which of the paper's columns from here.
        "eval_tasks": [
            {"name": task["name"], "kind": task.get("kind", "world"), "plays": task.get("plays", "")}
            for task in study.reference["eval"]["tasks"]
        ],
        "planned": planned,
        "estimate": estimate if estimate is not None else previous.get("estimate", {}),
        "runs": previous.get("runs", []) + ([ran] if ran else []),
    }
    if study.spec.search is not None:
        spec_json["search_name"] = search_name(study)
        spec_json["optuna_storage"] = storage_url(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(spec_json, indent=2))
