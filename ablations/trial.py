"""The Ray Tune trainable: one Tune trial -> its training runs in mm1core -> metrics reported back to the driver.

A Tune trial is one planned trial of an enumerated design, or one sampled configuration of a search with its
`search.seeds` runs, trained side by side in threads and kept in step, so that the searcher and the scheduler see
the runs' mean (`OBJECTIVE`) at every evaluation round. It runs in a Ray worker with the CPUs (and GPUs) the study
asked for, uses exactly that many threads, and trains on CUDA when Ray gave it a GPU. Everything it learns goes
back through `tune.report`, each report naming its run; the driver does the bookkeeping.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import queue
import resource
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from ablations.handoff import (
    DIVERGED_KEY,
    FINAL_KEY,
    OBJECTIVE,
    OBJECTIVE_FINAL,
    RUN_KEY,
    checkpoint_path,
    machines_log,
    reports_log,
)
from mm1core.config import config_from_dict
from mm1core.hardware import cpu_device_name, cpu_model_name
from mm1core.storage import append_jsonl, read_jsonl

__all__ = ["train_trial"]


def _device():
    import torch  # in the worker only (see train_trial)

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _cpu_seconds() -> float:
    """CPU time of this worker process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Stopped(BaseException):
    """Raised in a training thread at its next report once Tune has stopped its trial (a scheduler's decision), so
    that the run ends there. A BaseException: nothing in the core that catches Exception may swallow it."""


def _resident_mb() -> float:
    """This worker's resident memory now (Linux; 0 where /proc is not there)."""
    try:
        pages = int(Path(f"/proc/{os.getpid()}/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _release_freed_memory() -> None:
    """Hand what a trial freed back to the system before the worker takes the next one. glibc keeps memory freed by
    a thread in that thread's arena, and a reused worker trains each trial on new threads: a search's worker grew by
    0.5-1 GB a trial (7 GB after 7 trials of `small`, until Ray's memory monitor killed a worker and Tune ended the
    study), and malloc_trim took it from 6.9 to 1.5 GB at once (bench/README.md, a worker's memory across trials)."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its allocator is not this one
        return
    libc.malloc_trim(0)


def train_trial(tune_config: dict[str, Any]) -> None:
    # torch and the core are imported here, in the worker: the driver only names this function, and a study's
    # driver starts seconds sooner without them.
    import torch

    from mm1core.pipeline import run_trial

    # What the imports made (torch's and the core's 400,000 objects) lives as long as the worker: frozen, the full
    # collection at the end of each trial walks only what the trial made, in milliseconds rather than 0.2-0.3 s
    # between every two trials on a slot (bench/README.md, run overhead).
    gc.freeze()
    payload = tune_config["trial"]
    runs = payload["runs"] if "runs" in payload else _sampled_runs(payload, tune_config)
    num_threads = max(1, int(payload["num_cpus"]))
    torch.set_num_threads(num_threads)
    device = _device()
    device_name = cpu_device_name(num_threads) if device.type == "cpu" else torch.cuda.get_device_name()
    objective = payload.get("objective")  # the metric the scheduler or searcher reads, None without either
    events: queue.Queue = queue.Queue()
    # A stopped trial's runs must end where the scheduler stopped them: with reused actors, runs that trained on
    # after their trial was stopped piled up in the worker, each holding its model and data, until the node ran out
    # of memory, and they moved their checkpoints past the step they were stopped at. So a run waits at each
    # intermediate round until Tune has weighed it, and ends at its next report once stopped.
    stop = threading.Event()
    rounds = _Rounds()

    def train_one(index: int, run: dict[str, Any]) -> None:
        cfg = config_from_dict(run["config"])
        started, cpu_started = time.time(), _cpu_seconds()
        last_step = [0]

        # Every report also goes to a log beside the run's checkpoint. A run resumed after its driver was killed
        # starts from its checkpoint, which may be ahead of what that driver had received: replaying the log first
        # gives the new driver the whole curve (it drops what it already has).
        log = reports_log(Path(payload["checkpoint_dir"]), run["trial_id"])
        for event in read_jsonl(log):
            events.put((index, event))
        checkpoint = checkpoint_path(Path(payload["checkpoint_dir"]), run["trial_id"])
        resumed, machines = _machines_so_far(
            machines_log(Path(payload["checkpoint_dir"]), run["trial_id"]),
            checkpoint,
            {"cpu_model": cpu_model_name(), "device": device_name},
        )

        def report(stage: str, step: int, metrics: dict[str, float]) -> None:
            if stop.is_set():
                raise _Stopped
            total = {"encoder": cfg.encoder_pretrain.steps, "sft": cfg.sft.steps}.get(stage, cfg.train.steps)
            if stage == "multimodal":
                last_step[0] = step
            event = {"step": step, "total_steps": total, "stage": stage, **metrics}
            append_jsonl(log, event)
            events.put((index, event))
            if objective and objective in metrics and stage == "multimodal" and step < cfg.train.steps:
                rounds.wait(step)
                if stop.is_set():
                    raise _Stopped

        try:
            outcome = run_trial(
                cfg,
                device=device,
                on_metrics=report,
                checkpoint_path=checkpoint,
                cache_dir=Path(payload["cache_dir"]),
            )
        except _Stopped:
            return
        except FloatingPointError as err:
            # Diverged: an outcome of the recipe, not a fault. Reported, not raised, so that Tune does not retry it.
            events.put((index, {"step": last_step[0], "stage": "multimodal", DIVERGED_KEY: str(err)}))
            return
        except BaseException as err:  # handed to the reporting thread, which raises it in the trial
            events.put((index, err))
            return
        wall = time.time() - started
        # Runs that share the process share its CPU clock: each is charged its share of the process's CPU time.
        cpu = (_cpu_seconds() - cpu_started) / len(runs)
        events.put(
            (
                index,
                {
                    "step": cfg.train.steps,
                    "total_steps": cfg.train.steps,
                    "stage": "multimodal",
                    **outcome.metrics,
                    "cost/wall_s": wall,
                    "cost/cpu_s": cpu,
                    # What the worker holds at the run's end, the trial's own memory included: what a slot needs.
                    "cost/worker_rss_mb": _resident_mb(),
                    "cost/gpu_s": wall * float(payload.get("num_gpus", 0)) / len(runs)
                    if device.type == "cuda"
                    else 0.0,
                    FINAL_KEY: True,
                    "num_params": outcome.num_params,
                    "built_encoder": outcome.built_encoder,
                    "wall_time_s": wall,
                    "device": device_name,
                    "node": ray.util.get_node_ip_address(),
                    "cpu_model": cpu_model_name(),
                    # Its time/* and cost/* are this go's alone: a resumed run's price is not its shape's.
                    "resumed": resumed,
                    "machines_json": json.dumps(machines),
                    "eval_items_json": json.dumps(outcome.eval.items),
                    "eval_protocol_json": json.dumps(outcome.eval.protocol),
                },
            )
        )

    Path(payload["checkpoint_dir"]).mkdir(parents=True, exist_ok=True)
    threads = [threading.Thread(target=train_one, args=(i, run), daemon=True) for i, run in enumerate(runs)]
    for thread in threads:
        thread.start()
    try:
        _report_until_ended(runs, events, objective, rounds)
    finally:
        # Stopped by Tune (its report raised SystemExit), failed, or done: no run trains on past this trial.
        stop.set()
        rounds.release_all()
        for thread in threads:
            thread.join()
        _release_freed_memory()


def _machines_so_far(log: Path, checkpoint: Path, this: dict[str, str]) -> tuple[bool, list[dict[str, str]]]:
    """Whether this go at a run resumes it from its checkpoint, and the machines of the goes that trained it, in the
    order they first did, this one's recorded first.

    A go that finds no checkpoint trains the run from step 0, whatever earlier goes did (killed before their first
    checkpoint, or their checkpoint deleted for a fresh start): the run is its and those after it."""
    resumes = checkpoint.exists()
    append_jsonl(log, {**this, "resumed": resumes, "began": time.time()})
    trained_by: list[dict[str, str]] = []
    for went in read_jsonl(log):
        if not went["resumed"]:
            trained_by = []
        machine = {"cpu_model": went["cpu_model"], "device": went["device"]}
        if machine not in trained_by:
            trained_by.append(machine)
    return resumes, trained_by


class _Rounds:
    """Where a trial's runs wait at an intermediate round until Tune has weighed the objective's report of it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decided: dict[int, threading.Event] = {}
        self._released = False

    def wait(self, step: int) -> None:
        with self._lock:
            if self._released:
                return
            decided = self._decided.setdefault(step, threading.Event())
        decided.wait()

    def go_on(self, step: int) -> None:
        with self._lock:
            self._decided.setdefault(step, threading.Event()).set()

    def release_all(self) -> None:
        """No run waits any more: the trial ended, or it has no objective left (a run diverged)."""
        with self._lock:
            self._released = True
            for decided in self._decided.values():
                decided.set()


def _report_until_ended(
    runs: list[dict[str, Any]], events: queue.Queue, objective: str | None, rounds: _Rounds
) -> None:
    """Hand every run's reports to Tune until each run has ended.

    Each run's value of the objective at each evaluation round goes to the scheduler as their mean once all runs have
    it; that report returns only if the scheduler lets the trial go on, and then the runs do (`rounds`)."""
    objective_at: dict[int, dict[int, float]] = {}  # step -> run index -> its value of the objective
    finals: dict[int, float] = {}
    ended = 0
    while ended < len(runs):
        index, event = events.get()
        if isinstance(event, BaseException):
            raise event
        tune.report({RUN_KEY: runs[index]["trial_id"], **event})
        if DIVERGED_KEY in event:  # no objective from this configuration: its searcher trial ends without one
            ended += 1
            objective = None
            rounds.release_all()
        elif event.get(FINAL_KEY):
            ended += 1
            if objective:
                finals[index] = float(event[objective])
        elif (
            objective
            and objective in event
            and int(event["step"]) < int(runs[index]["config"]["train"]["steps"])
        ):
            # An intermediate round (the final metrics also pass through once before the final report: not a round).
            step = int(event["step"])
            step_values = objective_at.setdefault(step, {})
            step_values[index] = float(event[objective])
            if len(step_values) == len(runs):
                tune.report({"step": step, OBJECTIVE: sum(step_values.values()) / len(runs)})
                rounds.go_on(step)
    if objective:
        steps = max(int(run["config"]["train"]["steps"]) for run in runs)
        tune.report({"step": steps, OBJECTIVE: sum(finals.values()) / len(runs), OBJECTIVE_FINAL: True})


def _sampled_runs(payload: dict[str, Any], tune_config: dict[str, Any]) -> list[dict[str, Any]]:
    """A search configuration's runs, from the parameters the searcher put beside the payload."""
    from ablations.search import configuration_runs  # the study machinery, only where a search needs it
    from ablations.spec import study_from_dict

    study = study_from_dict(
        payload["study"], validated=True
    )  # the driver validated it before the search began
    params = {k: v for k, v in tune_config.items() if k != "trial"}
    return [
        {"trial_id": t.trial_id, "config": t.config}
        for t in configuration_runs(study, params, gpu=payload.get("num_gpus", 0) > 0)
    ]
