"""What a study will cost before it runs: each trial's time by stage, and the study's wall time on its slots.

A trial's time is its steps and items multiplied by the rates of its shape (the config with seeds, learning rates
and step counts left out) on this machine: seconds per encoder step, per training step, per evaluation item, and a
fixed part (model, tokenizer, probes). The rates come, in this order, from finished trials of the same shape under
the results folder (their recorded stage times), from a cached calibration, or from a calibration run now
(`mm1core.calibrate`: a few steps of each stage, one process per slot at once, so the rates include what trials
running side by side cost each other), cached per CPU model, threads and slots for the machine (calibration_path():
`~/.cache/mm1ablate/calibration.json`, or MM1ABLATE_CALIBRATION), since rates belong to the machine, not to a results
folder; but not when other work kept the machine busy while it ran (more than MM1ABLATE_BUSY_CPUS, 0.5 CPUs). A
calibrated rate is scaled by how much longer this machine's finished trials took than their own shapes'
calibrations said (_calibration_bias).

The wall time replays the run's own schedule: trials in run order on `slots` slots, a trial that reuses an
encoder another one is building waiting for it, plus the start of Ray and the report.
"""

from __future__ import annotations

import heapq
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple, TextIO

from ablations.plan import Trial, encoder_plan, resolve_trial, run_order, stage_cache_dir
from mm1core.config import flatten
from mm1core.hardware import cpu_device_name, cpu_model_name
from mm1core.stage_cache import encoder_stage_key, stage_key
from mm1core.storage import atomic_write_text

__all__ = [
    "Estimate",
    "RATE_KEYS",
    "SearchEstimate",
    "StudyEstimate",
    "estimate_search",
    "calibration_path",
    "crowded",
    "estimate_study",
    "eval_items",
    "shape_key",
    "slots_for",
]

RATE_KEYS = ("encoder_step_s", "train_step_s", "eval_item_s", "fixed_s")
# The rates a calibration's short run can misjudge against a whole trial (_calibration_bias); the fixed part is
# seconds either way.
BIASED_RATE_KEYS = ("encoder_step_s", "train_step_s", "eval_item_s")
# Measured with bench/run_overhead.py (bench/README.md): Ray's start, MLflow's set-up and the report, per study;
# the hand-over between trials on a reused worker, per trial.
STUDY_OVERHEAD_S = 12.0
TRIAL_OVERHEAD_S = 2.0
# Fields that change what a trial computes but not how long a step or an item takes.
_NOT_SHAPE = {
    "seed",
    "encoder_pretrain.seed",
    "encoder_pretrain.seed_from",
    "eval.set_seed",
    "train.lr",
    "encoder_pretrain.lr",
    "sft.lr",
    "train.steps",
    "train.warmup_steps",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "encoder_pretrain.steps",
    "encoder_pretrain.warmup_steps",
    "eval.num_items",
    "eval.intermediate_items",
}


def shape_key(config: dict) -> str:
    return stage_key("shape", {k: v for k, v in flatten(config).items() if k not in _NOT_SHAPE})


def eval_items(config: dict) -> int:
    """Items per task scored over the whole trial: the intermediate rounds' and the final round's."""
    train, ev = config["train"], config["eval"]
    every = train["eval_every"]
    rounds = len(range(every, train["steps"], every)) if every else 0
    return rounds * (ev["intermediate_items"] or ev["num_items"]) + ev["num_items"]


@dataclass(frozen=True)
class Estimate:
    encoder_s: float  # building the encoder, or waiting for another trial to (0 when cached)
    train_s: float
    eval_s: float
    fixed_s: float

    @property
    def total_s(self) -> float:
        return self.encoder_s + self.train_s + self.eval_s + self.fixed_s + TRIAL_OVERHEAD_S

    def left(self, multimodal_share_done: float) -> Estimate:
        """What is left of a run that resumes from a checkpoint this far into its multimodal stage: its encoder is
        in the stage cache, its evaluation and start-up still to pay."""
        if multimodal_share_done <= 0:
            return self
        return replace(self, encoder_s=0.0, train_s=self.train_s * (1 - min(multimodal_share_done, 1.0)))


@dataclass(frozen=True)
class StudyEstimate:
    trials: dict[
        str, Estimate
    ]  # trial_id -> its estimate (encoder time as if it built or loaded, no waiting)
    wall_s: float  # the study on its slots, waits included
    slots: int
    sources: list[str]  # where the rates came from, per shape
    # (trial, what is left of it, its encoder's status) in the order the study starts them: what side_by_side_wall
    # replays with the other studies of a suite
    queue: list[tuple[Trial, Estimate, str]] = field(default_factory=list)


def calibration_path() -> Path:
    override = os.environ.get("MM1ABLATE_CALIBRATION")
    return Path(override) if override else Path.home() / ".cache" / "mm1ablate" / "calibration.json"


def slots_for(cpu_per_trial: float, cpus: float | None = None) -> int:
    return max(1, int((cpus or os.cpu_count() or 1) // max(cpu_per_trial, 1e-9)))


class FinishedRates(NamedTuple):
    quick: dict[str, float]  # the lower quartile of the shape's trials: what prices the shape itself
    typical: dict[str, float]  # their median: what a calibration is held against (_calibration_bias)
    count: int


def _finished_rates(results_root: Path, shapes: set[str] | None, threads: int) -> dict[str, FinishedRates]:
    """Rates of each shape (every shape found, for None) from finished trials that recorded their stage times, and
    how many trials.

    Only trials that ran on this CPU model with the threads a trial gets now count: a results folder outlives the
    machine it was made on (a copied or shared folder, a cluster of mixed nodes), and the same shape's step took
    twice as long on one 2-core machine this project draws as on another (findings.md); trials that recorded no
    CPU model are left to the calibration, and so are trials that got less than MIN_CPU_SHARE of their CPUs (load
    from outside their study, which `cost/cpu_s` shows). A trial adopted by several studies counts once. Of its
    shape's trials, the rate that prices the shape is the lower quartile, not the median: load from outside a study
    (another run, a benchmark) only ever slows a trial, so on a busy machine the slow half says more about that day
    than about the shape (measured: the findings suite's reference trials, run four to a 2-core machine, took 0.35 s
    a step, the same shape 0.12-0.15 s with its study alone)."""
    import pandas as pd  # only where finished trials exist: planning a new study never loads it

    found: dict[str, list[dict[str, float]]] = {}
    seen: set[str] = set()
    for path in results_root.glob("*/trials.parquet"):
        rows = pd.read_parquet(path)
        if not {"time/encoder_s", "config_json", "cpu_model", "device"} <= set(rows.columns):
            continue
        done = rows[
            (rows["status"] == "finished")
            & rows["time/encoder_s"].notna()
            & (rows["cpu_model"] == cpu_model_name())
            & (rows["device"] == cpu_device_name(threads))
        ]
        for row in done.to_dict("records"):
            if row["trial_id"] in seen:
                continue
            seen.add(row["trial_id"])
            if crowded(row, threads) or row.get("resumed") in (True, 1):
                continue  # a resumed run's times are its last go's, some of its steps: not its shape's price
            config = json.loads(row["config_json"])
            shape = shape_key(config)
            if shapes is not None and shape not in shapes:
                continue
            train_s = row["time/train_s"] + row["time/data_s"]
            rate = {
                "train_step_s": train_s / config["train"]["steps"],
                "eval_item_s": row["time/eval_s"] / eval_items(config),
                "fixed_s": max(
                    row["wall_time_s"] - train_s - row["time/eval_s"] - row["time/encoder_s"], 0.0
                ),
            }
            if row["built_encoder"] and config["encoder_pretrain"]["loss"] != "none":
                rate["encoder_step_s"] = row["time/encoder_s"] / config["encoder_pretrain"]["steps"]
            found.setdefault(shape, []).append(rate)
    out = {}
    for shape, rates in found.items():
        quick, typical = {}, {}
        for key in RATE_KEYS:
            values = sorted(r[key] for r in rates if key in r)
            if values:
                quick[key] = values[len(values) // 4]
                typical[key] = statistics.median(values)
        out[shape] = FinishedRates(quick, typical, len(rates))
    return out


# The share of its CPUs' time below which a finished trial's process was waiting for them (cost/cpu_s over its wall
# time and threads): its stage times measure the work it shared the machine with, not its shape. Measured on the
# Intel Xeon these sessions draw: trials with only their study's own trials beside them got 0.91-1.00 of their CPU;
# trials that ran beside the test suite or a second study, 0.48-0.71. Two trials of the findings suite run beside the
# test suite (0.52) had doubled the next plan of the whole suite (889 minutes against 455), through the calibration's
# bias they alone set.
MIN_CPU_SHARE = 0.8


def crowded(row: dict, threads: int) -> bool:
    """Whether a finished trial ran with less of its CPUs than MIN_CPU_SHARE (trials from before `cost/cpu_s` was
    recorded count as they are)."""
    cpu_s, wall_s = row.get("cost/cpu_s"), row.get("wall_time_s")
    if cpu_s is None or wall_s is None or cpu_s != cpu_s or not wall_s > 0:
        return False
    return cpu_s / (wall_s * threads) < MIN_CPU_SHARE


# CPUs' worth of other work above which a calibration measures the machine's load rather than the machine: a
# plan made while a study runs on the same cores. A shared machine whose load never ends raises it
# (MM1ABLATE_BUSY_CPUS), or it would calibrate again for every plan.
BUSY_CPUS_DEFAULT = 0.5
BUSY_MARK = ", on a busy machine"


def busy_cpus_threshold() -> float:
    return float(os.environ.get("MM1ABLATE_BUSY_CPUS", BUSY_CPUS_DEFAULT))


def _runnable_elsewhere() -> int | None:
    """Threads ready to run (state R) in processes other than this one and everything it started (Ray's processes,
    while `mm1ablate run` starts them beside its estimate); None where /proc cannot be read."""
    parents: dict[int, int] = {}
    runnable: dict[int, int] = {}
    try:
        entries = [e for e in Path("/proc").iterdir() if e.name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            runnable[int(entry.name)] = sum(
                (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "R"
                for task in (entry / "task").iterdir()
            )
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in mine]
        mine.update(children)
        frontier.extend(children)
    return sum(count for pid, count in runnable.items() if pid not in mine)


def cpus_busy_elsewhere(interval_s: float = 1.0, samples: int = 10) -> float | None:
    """CPUs' worth of work that other processes than this one and its own want over the next `interval_s`: their
    runnable threads, averaged over `samples` looks at Linux's /proc; None where it cannot be read.

    What they want, not what they got: while this process's own work (Ray starting beside the estimate) fills the
    cores, a study running beside gets little of them during the sample, yet slows every calibration after it."""
    counts = []
    for _ in range(samples):
        count = _runnable_elsewhere()
        if count is None:
            return None
        counts.append(count)
        time.sleep(interval_s / samples)
    return sum(counts) / len(counts)


def _calibration_prefix(threads: int, slots: int) -> str:
    return f"{cpu_model_name()}|{threads} threads|{slots} side by side|"


def _calibration_bias(
    finished_rates: dict[str, FinishedRates], path: Path, threads: int, slots: int
) -> tuple[dict[str, float], int]:
    """Per rate, how much longer the finished trials of this machine took than the cached calibration of their
    shapes said: the median ratio over the shapes that have both, and how many shapes that is (1.0 and 0 without).

    A calibration times a few dozen steps; a trial runs for minutes, and on one 2-core machine this project draws
    f03's multimodal steps took 1.5x what the calibration of the same shape measured. Not the work, Ray or a study
    beside it: that machine's speed wanders, from minute to minute within one trial (1.4 to 3.7 steps/s) and over
    hours (bench/README.md, "The same machine, hours apart"), and a calibration's short run catches one moment of
    it. So it is measured rather than modelled, against the shape's typical trial (the median: the quick quartile
    that prices a shape from its own trials would hold the calibration to the machine's fast moments): a shape that
    no finished trial covers is priced at its calibration times this ratio."""
    cache = json.loads(path.read_text()) if path.exists() else {}
    prefix = _calibration_prefix(threads, slots)
    ratios: dict[str, list[float]] = {key: [] for key in BIASED_RATE_KEYS}
    shapes = 0
    for shape, finished in finished_rates.items():
        calibrated = cache.get(prefix + shape)
        if calibrated is None:
            continue
        shapes += 1
        for key in BIASED_RATE_KEYS:
            if finished.typical.get(key) and calibrated.get(key):
                ratios[key].append(finished.typical[key] / calibrated[key])
    return {key: statistics.median(values) if values else 1.0 for key, values in ratios.items()}, shapes


def _calibrated(
    configs: dict[str, dict], path: Path, threads: int, slots: int, out: TextIO | None
) -> dict[str, dict[str, float]]:
    """Cached calibrations of these shapes, running the missing ones now (`slots` processes at once per shape). On a
    machine busy with other work the rates are measured for this estimate but not cached: they would price every
    later plan as if the machine were still that busy."""
    cache = json.loads(path.read_text()) if path.exists() else {}
    prefix = _calibration_prefix(threads, slots)
    measured_now: dict[str, dict] = {}
    busy = None
    for shape, config in configs.items():
        if prefix + shape in cache:
            continue
        if busy is None:
            busy = cpus_busy_elsewhere() or 0.0
            if busy > busy_cpus_threshold() and out is not None:
                print(
                    f"this machine is busy with other work ({busy:.1f} CPUs): the calibration measures that "
                    "load too, so this estimate is pessimistic and its rates are not cached",
                    file=out,
                    flush=True,
                )
        if out is not None:
            print(
                f"calibrating a trial shape on this machine ({slots} side by side, once)...",
                file=out,
                flush=True,
            )
        with tempfile.TemporaryDirectory() as work:
            config_path = Path(work) / "config.json"
            config_path.write_text(json.dumps(config))
            outputs = [Path(work) / f"rates{i}.json" for i in range(slots)]
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "mm1core.calibrate", str(config_path), str(o), str(threads)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for o in outputs
            ]
            errors = [p.communicate()[1] for p in procs]
            if any(p.returncode for p in procs):
                raise RuntimeError(
                    f"calibration failed: {next(e for e in errors if e).strip().splitlines()[-1]}"
                )
            runs = [json.loads(o.read_text()) for o in outputs]
        rates = {k: max(r[k] for r in runs) for k in RATE_KEYS} | {"measured": time.strftime("%F")}
        if busy > busy_cpus_threshold():
            measured_now[prefix + shape] = rates | {"measured": rates["measured"] + BUSY_MARK}
            continue
        cache[prefix + shape] = rates
        atomic_write_text(path, json.dumps(cache, indent=1))
    known = cache | measured_now
    return {shape: known[prefix + shape] for shape in configs}


def estimate_study(
    trials: list[Trial],
    *,
    results_root: Path,
    cpu_per_trial: float,
    out: TextIO | None = None,
    multimodal_share_done: Mapping[str, float] | None = None,
    encoders_built_before: set[str] | None = None,
) -> StudyEstimate:
    """Every trial's estimate and the study's wall time; calibrates shapes that nothing else covers. A trial with a
    share of its multimodal stage done (trial id -> share, from its checkpoint's reports) resumes there, and the
    study's wall time counts only what is left of it; its own estimate stays the whole trial's. Encoders whose stage
    keys are in `encoders_built_before` (an earlier study of a suite builds them) are in the stage cache by the time
    this study runs."""
    threads = max(1, int(cpu_per_trial))
    slots = slots_for(cpu_per_trial)
    configs = {shape_key(t.config): t.config for t in trials}
    known = _finished_rates(results_root, None, threads)  # every shape: the calibration's bias reads them all
    rates: dict[str, dict[str, float]] = {}
    sources = []
    missing = {}
    for shape, config in configs.items():
        finished = known.get(shape)
        measured, count = (finished.quick, finished.count) if finished else ({}, 0)
        needs_encoder = config["encoder_pretrain"]["loss"] != "none"
        if all(k in measured for k in RATE_KEYS if k != "encoder_step_s" or needs_encoder) and count:
            rates[shape] = measured | ({} if needs_encoder else {"encoder_step_s": 0.0})
            sources.append(f"{count} finished trials of the shape")
        else:
            missing[shape] = config
    if missing:
        calibrated = _calibrated(missing, calibration_path(), threads, slots, out)
        bias, bias_shapes = _calibration_bias(known, calibration_path(), threads, slots)
        scaled = (
            f", scaled as this machine's finished trials ran against their calibration ({bias_shapes} "
            + ("shape" if bias_shapes == 1 else "shapes")
            + ": "
            + ", ".join(f"{key} x{bias[key]:.2f}" for key in BIASED_RATE_KEYS)
            + ")"
            if bias_shapes
            else ""
        )
        for shape, measured in calibrated.items():
            if BUSY_MARK in measured["measured"]:  # measured under that load already: pessimistic as it is
                rates[shape] = measured
                sources.append(f"calibration on {cpu_model_name()} ({measured['measured']})")
                continue
            rates[shape] = measured | {key: measured[key] * bias[key] for key in BIASED_RATE_KEYS}
            sources.append(f"calibration on {cpu_model_name()} ({measured['measured']}){scaled}")
    estimates = {t.trial_id: _priced(t.config, rates[shape_key(t.config)]) for t in trials}
    done = multimodal_share_done or {}
    left = {trial_id: e.left(done.get(trial_id, 0.0)) for trial_id, e in estimates.items()}
    encoders = encoder_plan(trials, stage_cache_dir(results_root))
    for trial in trials:
        if encoder_stage_key(trial.config) in (encoders_built_before or set()):
            encoders[trial.trial_id] = "cached"
    queue = [(t, left[t.trial_id], encoders.get(t.trial_id, "-")) for t in run_order(trials)]
    return StudyEstimate(estimates, _replay(queue, slots) + STUDY_OVERHEAD_S, slots, sources, queue)


def side_by_side_wall(queues: list[list[tuple[Trial, Estimate, str]]], slots: int, drivers: int) -> float:
    """A suite's wall time when `drivers` run its studies at once on one set of slots (`mm1ablate run SUITE`): no
    slot idles while a study's last trials run, so the studies' trials queue as one, in the suite's order. Each
    study's start (the driver's own seconds) overlaps the other drivers' trials."""
    starts_s = STUDY_OVERHEAD_S * len(queues) / max(1, drivers)
    return _replay([entry for queue in queues for entry in queue], slots) + starts_s


def _priced(config: dict, rate: dict[str, float]) -> Estimate:
    """A trial's steps and items at its shape's rates."""
    return Estimate(
        encoder_s=rate["encoder_step_s"] * config["encoder_pretrain"]["steps"],
        train_s=rate["train_step_s"] * config["train"]["steps"],
        eval_s=rate["eval_item_s"] * eval_items(config),
        fixed_s=rate["fixed_s"],
    )


def _replay(queue: list[tuple[Trial, Estimate, str]], slots: int) -> float:
    """The wall time of (trial, estimate, encoder status) in order: each trial on the first free slot; one that
    reuses an encoder being built waits for it; a cached encoder costs nothing."""
    free = [0.0] * slots
    heapq.heapify(free)
    built_at: dict[str | None, float] = {}
    end = 0.0
    for trial, e, status in queue:
        start = heapq.heappop(free)
        key = encoder_stage_key(trial.config)
        if status in ("build", "rebuild"):
            ready = start + e.encoder_s
            built_at[key] = ready
        elif status == "reuse":
            ready = max(start, built_at.get(key, start))
        else:
            ready = start
        finish = ready + e.train_s + e.eval_s + e.fixed_s + TRIAL_OVERHEAD_S
        end = max(end, finish)
        heapq.heappush(free, finish)
    return end


@dataclass(frozen=True)
class SearchEstimate:
    per_run_s: float  # one run of the reference configuration, to the end
    wall_s: float  # every configuration's runs to the end on the slots: what early stopping saves from
    slots: int
    sources: list[str]


def estimate_search(study, *, results_root: Path, out: TextIO | None = None) -> SearchEstimate:
    """A search's configurations are sampled as it runs: each is costed as the reference configuration."""
    search = study.spec.search
    gpu = study.spec.resources.gpu > 0
    reference = resolve_trial(study, "reference", {}, {}, 0, gpu=gpu)
    one = estimate_study(
        [reference], results_root=results_root, cpu_per_trial=study.spec.resources.cpu, out=out
    )
    per_run = one.trials[reference.trial_id].total_s
    rounds = -(-search.trials * search.seeds // one.slots)
    return SearchEstimate(per_run, rounds * per_run + STUDY_OVERHEAD_S, one.slots, one.sources)
