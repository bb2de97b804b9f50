"""`mm1ablate`: plan, run, status, report, ui, schema. The YAML is the input; flags name only places and addresses."""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ablations.spec import Study, StudyError, load_study, study_json_schema
from mm1core.eval import HEADLINE_METRICS, file_task_headlines

if TYPE_CHECKING:
    from ablations.suite import Suite, SuitePlan, SuiteRun

__all__ = ["main"]

INTERRUPTED = 130  # the shell's code for a run ended by Ctrl-C
# A study that did not start: another driver runs it, the cluster is too small, the tracking server does not answer.
# A suite goes on to its next study (on shared storage, a second node's driver takes the studies the first is not in).
REFUSED = 2
BUSY = 3  # a study another driver of the same side-by-side suite run runs: not refused, left to that driver
# A study of a suite's driver whose last trials another driver is training: the driver comes back to it at the end.
WAITING = 4

# Each command imports what it needs inside its function, for start-up: `mm1ablate plan` answers in a fraction of a
# second because it never loads Ray, MLflow, pandas or torch, which `run`, `report` and `ui` need.


def _results_root(args: argparse.Namespace) -> Path:
    return Path(args.results_dir)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*(str(c) for c in row)) for row in rows]
    return "\n".join(lines)


def _check_file_tasks(study: Study, results_root: Path) -> None:
    from ablations.plan import file_task_problems, stage_cache_dir

    if problems := file_task_problems(study, stage_cache_dir(results_root)):
        raise StudyError(problems)


def cmd_plan(args: argparse.Namespace) -> int:
    from ablations.suite import adoptable, is_suite

    if is_suite(Path(args.study)):
        return _plan_suite(args)
    from ablations.disk import footprint
    from ablations.plan import encoder_plan, plan, stage_cache_dir

    study = load_study(args.study)
    _check_file_tasks(study, _results_root(args))
    trials = plan(study)
    study_dir = _results_root(args) / study.name
    recorded: dict[str, str] = {}
    if (study_dir / "trials.parquet").exists():  # pyarrow.parquet alone costs half a second to import
        from ablations.results import trial_statuses

        recorded = trial_statuses(study_dir)
    # What a plain `run` leaves alone: finished trials and diverged ones (their outcome stands), and those another
    # study has finished with this code, which the run counts instead of training (ablations.suite).
    finished = {t for t, status in recorded.items() if status in ("finished", "diverged")}
    elsewhere = set(adoptable(_results_root(args))) - finished if study.spec.search is None else set()
    todo = [t for t in trials if t.trial_id not in finished | elsewhere]
    encoders = encoder_plan(todo, stage_cache_dir(_results_root(args)))
    axis_names = [a.name for a in study.spec.axes]
    rows = [
        [
            t.arm,
            *(str(t.axis_values.get(a, "(ref)")) for a in axis_names),
            t.seed,
            t.trial_id,
            recorded[t.trial_id]
            if t.trial_id in finished
            else "finished by another study"
            if t.trial_id in elsewhere
            else "to run",
            encoders.get(t.trial_id, "-"),
        ]
        for t in trials
    ]
    if study.spec.search is not None:
        print(_search_summary(study))
        if args.estimate:
            _print_estimate(study, todo, _results_root(args))
        return 0
    print(_table(rows, ["arm", *axis_names, "seed", "trial_id", "status", "encoder"]))
    arms = len({t.arm for t in trials})
    print(
        f"\n{len(trials)} trials ({arms} arms x {len(study.spec.seeds)} seeds, design {study.spec.design}); "
        f"{len(trials) - len(todo)} finished, {len(todo)} to run; {study.spec.resources.cpu:g} CPU"
        f"{f', {study.spec.resources.gpu:g} GPU' if study.spec.resources.gpu else ''} per trial"
    )
    print(_encoders_line("pre-trained encoders", encoders))
    print(f"stores: {footprint(todo)}")
    precisions = sorted({t.config["train"]["precision"] for t in trials} or {"(sampled per configuration)"})
    print(f"precision: {', '.join(precisions)}" + _precision_reason(study))
    if args.estimate:
        _print_estimate(study, todo, _results_root(args))
    return 0


def _search_summary(study) -> str:
    search, scheduler = study.spec.search, study.scheduler
    lines = [
        f"search: {search.trials} configurations x {search.seeds} seed(s), sampler {search.sampler}, "
        f"{search.mode}imising {search.metric} (the mean over a configuration's seeds)"
    ]
    for axis in study.spec.axes:
        kind, bounds = axis.distribution or ("values", axis.values)
        lines.append(f"  {axis.name}: {kind} {list(bounds)}")
    if scheduler is not None:
        lines.append(
            f"early stopping: ASHA on {scheduler.metric} ({scheduler.mode}), grace period {scheduler.grace_period} "
            f"steps, reduction factor {scheduler.reduction_factor:g}, evaluated every "
            f"{study.reference['train']['eval_every']} steps"
        )
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _print_estimate(study, todo, results_root: Path) -> None:
    from ablations.cost import estimate_search, estimate_study
    from ablations.results import multimodal_shares_done

    cpu = study.spec.resources.cpu
    if study.spec.search is not None:
        search = estimate_search(study, results_root=results_root, out=sys.stdout)
        print(
            f"estimate: a configuration's run {_minutes(search.per_run_s)} to the end; the search "
            f"({study.spec.search.trials} x {study.spec.search.seeds} runs on {search.slots} slots) at most "
            f"{_minutes(search.wall_s)} without early stopping ({'; '.join(search.sources)})"
        )
        return
    if not todo:
        print("estimate: nothing to run")
        return
    resumed = multimodal_shares_done(results_root / study.name)
    estimate = estimate_study(
        todo, results_root=results_root, cpu_per_trial=cpu, out=sys.stdout, multimodal_share_done=resumed
    )
    rows = [
        [
            t.arm,
            t.seed,
            _minutes(e.encoder_s),
            _minutes(e.train_s),
            _minutes(e.eval_s),
            _minutes(e.total_s),
        ]
        for t in todo
        for e in [estimate.trials[t.trial_id]]
    ]
    print()
    print(_table(rows, ["arm", "seed", "encoder", "training", "evaluation", "trial"]))
    trial_s = sum(e.total_s for e in estimate.trials.values())
    resuming = [t for t in todo if resumed.get(t.trial_id, 0) > 0]
    if resuming:
        print(
            f"{len(resuming)} of them resume from their checkpoints ("
            + ", ".join(f"{t.arm} seed {t.seed} at {resumed[t.trial_id]:.0%}" for t in resuming)
            + "): the study's time counts what is left of them"
        )
    print(
        f"estimate: {len(todo)} trials, {_minutes(trial_s)} of trial time; the study about "
        f"{_minutes(estimate.wall_s)} of wall time on {estimate.slots} slots "
        f"(rates: {'; '.join(sorted(set(estimate.sources)))})"
    )


def _precision_reason(study) -> str:
    """Why `auto` resolved as it did, for a reader who moves the study to another machine."""
    if study.reference["train"]["precision"] != "auto":
        return ""
    if study.spec.resources.gpu:
        return " (auto: trials get a GPU)"
    from mm1core.hardware import cpu_has_bf16_units, cpu_model_name

    units = "has bf16 matrix units" if cpu_has_bf16_units() else "has no bf16 matrix units"
    return f" (auto: this CPU, {cpu_model_name()}, {units})"


def _plan_suite(args: argparse.Namespace) -> int:
    from ablations.suite import load_suite

    suite = load_suite(Path(args.study))
    for study in suite.studies:
        _check_file_tasks(study, _results_root(args))
    _print_suite_plan(suite, _results_root(args), estimate=args.estimate, drivers=_drivers(args, suite))
    return 0


def _drivers(args: argparse.Namespace, suite: Suite) -> int:
    """How many drivers run the suite's studies at once: as asked, else two where this machine has slots for two
    trials (so that none idles while a study's last trial runs alone), else one."""
    from ablations.cost import slots_for

    if args.drivers is not None:
        return max(1, min(args.drivers, len(suite.studies)))
    slots = min(slots_for(study.spec.resources.cpu) for study in suite.studies)
    return 2 if slots > 1 and len(suite.studies) > 1 else 1


def _encoders_line(what: str, encoders: dict[str, str]) -> str:
    """What the trials to run do for their pre-trained encoders (ablations.plan.encoder_plan's statuses)."""
    counts = {
        key: sum(v == key for v in encoders.values()) for key in ("build", "rebuild", "cached", "reuse")
    }
    return (
        f"{what}: {counts['build']} to build, {counts['cached']} trials use a cached one, "
        f"{counts['reuse']} reuse one built in this run"
        + (f", {counts['rebuild']} to rebuild (the cached one is damaged)" if counts["rebuild"] else "")
    )


def _print_suite_plan(
    suite: Suite, root: Path, *, estimate: bool, drivers: int = 1, rerun_other_code: bool = False
) -> SuitePlan:
    """The whole suite: per study its trials, those another study of the suite (or an earlier run) trains, and
    the time left; then the total, for `drivers` running the studies at once. `rerun_other_code`: finished trials
    another mm1core trained are to train."""
    from ablations.cost import estimate_study, side_by_side_wall
    from ablations.plan import encoder_plan, plan, stage_cache_dir
    from ablations.results import finished_unlike, trial_statuses
    from ablations.suite import SuitePlan, adoptable, budget_line, read_suite_record
    from mm1core.stage_cache import code_version, encoder_stage_key

    counted = set(adoptable(root))  # finished by some study with this code: no study trains them again
    seen: set[str] = set()
    rows, total_s, slots, wall_of, queues = [], 0.0, 1, {}, []
    precisions: set[str] = set()
    to_train: list = []  # in the order the suite trains them: an encoder one study builds, a later one finds cached
    for study in suite.studies:
        trials = plan(study)
        precisions |= {t.config["train"]["precision"] for t in trials}
        own = {t for t, status in trial_statuses(root / study.name).items() if status == "finished"}
        if rerun_other_code:
            own -= set(finished_unlike(root / study.name, "code_version", code_version()))
        finished = own | counted
        done = [t for t in trials if t.trial_id in finished]
        shared = [t for t in trials if t.trial_id in seen and t.trial_id not in finished]
        todo = [t for t in trials if t.trial_id not in seen and t.trial_id not in finished]
        seen |= {t.trial_id for t in trials}
        wall = "-"
        if estimate and todo:
            cost = estimate_study(
                todo,
                results_root=root,
                cpu_per_trial=study.spec.resources.cpu,
                out=sys.stdout,
                encoders_built_before={encoder_stage_key(t.config) for t in to_train} - {None},
            )
            total_s += cost.wall_s
            wall_of[study.name] = cost.wall_s
            queues.append(cost.queue)
            slots = cost.slots
            wall = _minutes(cost.wall_s)
        to_train += todo
        rows.append([study.name, len(trials), len(done), len(shared), len(todo), wall])
    print(f"suite {suite.name}: {len(suite.studies)} studies ({suite.path})")
    print(
        _table(
            rows,
            ["study", "trials", "finished", "shared (trained by an earlier study)", "to train", "estimate"],
        )
    )
    print()
    print(
        _encoders_line("pre-trained encoders across the suite", encoder_plan(to_train, stage_cache_dir(root)))
    )
    trained = sum(r[4] for r in rows)
    line = f"{sum(r[1] for r in rows)} trials in all, {len(seen)} distinct; {trained} to train"
    if estimate and drivers > 1 and len(queues) > 1:
        one_by_one_s, total_s = total_s, side_by_side_wall(queues, slots, drivers)
        line += (
            f"; about {_minutes(total_s)} of wall time on {slots} slots, {drivers} studies at a time "
            f"({_minutes(one_by_one_s)} one after another)"
        )
    elif estimate:
        line += f"; about {_minutes(total_s)} of wall time on {slots} slots, the studies one after another"
    print(line, flush=True)
    if estimate and suite.wall_budget_s:
        earlier = read_suite_record(root, suite.name).get("runs") or []
        earlier_s = sum(float(r.get("wall_s") or 0) for r in earlier if isinstance(r, dict))
        precision = ", ".join(sorted(precisions)) + _precision_reason(suite.studies[0])
        print(budget_line(suite.wall_budget_s, total_s, earlier_s, precision), flush=True)
    return SuitePlan(len(seen), trained, total_s if estimate else None, wall_of)


def _run_suite(args: argparse.Namespace) -> int:
    """Every study of the suite in order, each as `mm1ablate run` would; a study refused or failed does not stop
    the others. The index (results/index.html) is the suite's scoreboard; the suite's record keeps this run as one
    part of its measurement (ablations.suite.SuiteRun)."""
    from ablations.suite import begin_suite_run, load_suite, record_suite

    suite = load_suite(Path(args.study))  # every study validated before any runs
    root = _results_root(args)
    for study in suite.studies:
        _check_file_tasks(study, root)
    if args.suite_driver:
        return _drive_suite(suite, args, Path(args.suite_driver))
    record = record_suite(suite, root)
    drivers = _drivers(args, suite)
    # The whole, before any of it runs.
    plan = _print_suite_plan(
        suite, root, estimate=True, drivers=drivers, rerun_other_code=args.rerun_other_code
    )
    part = begin_suite_run(record, plan)
    codes: dict[str, int] = {}
    outcome = "stopped by an error"
    try:
        with part.alive():  # a killed driver leaves its part known to within a heartbeat
            if drivers > 1:
                outcome = _run_side_by_side(suite, args, root, part, codes, drivers)
            else:
                outcome = _run_studies(suite, args, root, part, codes)
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    finally:
        part.update(outcome, ended=True)
        # The studies' reporters wrote the index before this part's end was known.
        _rewrite_index(root)
    if INTERRUPTED in codes.values() or outcome.startswith("interrupted"):  # Ctrl-C: the runner said where
        return INTERRUPTED
    print(f"suite {suite.name}: " + ", ".join(f"{n} {_study_outcome(c)}" for n, c in codes.items()))
    print(f"scoreboard: {root / 'index.html'}")
    return max(codes.values(), default=0)


def _run_studies(
    suite: Suite, args: argparse.Namespace, root: Path, part: SuiteRun, codes: dict[str, int]
) -> str:
    """The suite's studies in order, each one's exit code into `codes`; the part's outcome."""
    for study in suite.studies:
        print(f"== suite {suite.name}: {study.name} ({len(codes) + 1}/{len(suite.studies)})", flush=True)
        part.outcome = f"running; in {study.name}"
        codes[study.name] = _run_one(study, args)
        if codes[study.name] == INTERRUPTED:  # Ctrl-C stops the suite, not just the study it was in
            left = [s.name for s in suite.studies if s.name not in codes]
            print(
                f"suite {suite.name}: interrupted in {study.name}; not started: {', '.join(left) or 'none'}"
            )
            return f"interrupted in {study.name}"
        part.update(f"running; {study.name} ended")
        if study is not suite.studies[-1]:  # the last one's is rewritten with the part's end
            _rewrite_index(root)  # the study's report wrote it before its part said the study had ended
    return _suite_outcome(codes)


def _suite_outcome(codes: dict[str, int]) -> str:
    said = {n: _study_outcome(c) for n, c in codes.items() if c != 0}
    return "ended; " + ", ".join(f"{n} {w}" for n, w in said.items()) if said else "complete"


def _run_side_by_side(
    suite: Suite, args: argparse.Namespace, root: Path, part: SuiteRun, codes: dict[str, int], drivers: int
) -> str:
    """The suite's studies, `drivers` at once on one Ray runtime: each driver (a `mm1ablate run SUITE` of its own)
    takes the next study in the suite's order that no other runs, and its trials share the slots with the other
    drivers', so that no slot idles while a study's last trial runs alone. A trial two studies share trains once,
    in the first to claim it, and counts in the other (ablations.claims). The part's outcome."""
    import tempfile

    from ablations.run import side_by_side_runtime

    part.outcome = f"running; {drivers} studies at a time"
    runtime = side_by_side_runtime(suite.name, root, args.address)
    with runtime as address, tempfile.TemporaryDirectory() as tmp:
        said = [Path(tmp) / f"driver{i}.json" for i in range(drivers)]
        command = [sys.executable, "-m", "ablations.cli", "--results-dir", str(root), "run", str(suite.path)]
        command += ["--address", address, "--max-failures", str(args.max_failures)]
        command += ["--tracking-uri", args.tracking_uri] if args.tracking_uri else []
        command += ["--rerun-diverged"] * args.rerun_diverged + ["--rerun-other-code"] * args.rerun_other_code
        env = os.environ | {_PARENT: str(os.getpid())}
        # Each in a session of its own: a Ctrl-C (or SIGTERM) reaches them once, from here, not twice.
        children = [
            subprocess.Popen([*command, "--suite-driver", str(path)], env=env, start_new_session=True)
            for path in said
        ]
        try:
            for child in children:
                child.wait()
        except KeyboardInterrupt:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT)
            for child in children:
                child.wait()
        codes |= _merged_codes(suite, [_read_codes(path) for path in said], root)
    if INTERRUPTED in codes.values() or any(child.returncode == INTERRUPTED for child in children):
        stopped = [name for name, code in codes.items() if code == INTERRUPTED]
        left = [s.name for s in suite.studies if s.name not in codes]
        print(
            f"suite {suite.name}: interrupted in {', '.join(stopped) or 'no study'}; "
            f"not started: {', '.join(left) or 'none'}",
            flush=True,
        )
        return f"interrupted in {', '.join(stopped) or 'no study'}"
    return _suite_outcome(codes)


_PARENT = "MM1ABLATE_SUITE_PARENT"  # the pid of the `mm1ablate run SUITE` that started a driver


def _end_with_parent() -> None:
    """A driver ends with the suite run that started it, however that ends: the kernel sends it SIGTERM, which it
    takes as Ctrl-C (its trials checkpoint, its study records how it ended), instead of training on unwatched."""
    if sys.platform != "linux":
        return
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if str(os.getppid()) != os.environ.get(_PARENT, str(os.getppid())):  # it ended before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _read_codes(path: Path) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}  # the driver died before it wrote: its studies say so by their own records


def _merged_codes(suite: Suite, said: list[dict[str, int]], root: Path) -> dict[str, int]:
    """Each study's exit code from the driver that ran it; a study every driver found another running (a driver
    outside this run of the suite) is refused, and said so."""
    from ablations.results import study_runner

    codes = {}
    for study in suite.studies:
        mine = [c[study.name] for c in said if study.name in c]
        ran = [code for code in mine if code != BUSY]
        if ran:
            codes[study.name] = max(ran)
        elif mine:
            codes[study.name] = REFUSED
            holder = study_runner(root / study.name) or "a driver that has ended since"
            print(
                f"error: study {study.name!r} is already running ({holder}), not in this run of the suite: "
                f"left to it. `mm1ablate status {study.name}` shows its progress",
                file=sys.stderr,
            )
    return codes


def _drive_suite(suite: Suite, args: argparse.Namespace, said: Path) -> int:
    """One of the drivers `_run_side_by_side` starts: the suite's studies in order, each that no other driver runs
    (a study another holds is left to it), each one's exit code written to `said` as it ends."""
    _end_with_parent()
    codes: dict[str, int] = {}
    # A study whose last trials another driver is training waits for them only once this driver has nothing else
    # to run: meanwhile its slot trains the next study's trials rather than idle.
    waiting: list[Study] = []
    try:
        for study in suite.studies:
            code = _run_one(study, args, busy=BUSY, wait_for_others=False)
            if code == WAITING:
                waiting.append(study)
                continue
            codes[study.name] = code
            said.write_text(json.dumps(codes))
            if code == INTERRUPTED:
                return INTERRUPTED
        for study in waiting:
            codes[study.name] = _run_one(study, args, busy=BUSY)
            said.write_text(json.dumps(codes))
            if codes[study.name] == INTERRUPTED:
                return INTERRUPTED
    except KeyboardInterrupt:  # between two studies
        return INTERRUPTED
    finally:
        # Stopped before it came back to them: they ended interrupted, and the next run resumes them.
        if left := {s.name: INTERRUPTED for s in waiting if s.name not in codes}:
            said.write_text(json.dumps(codes | left))
    return 0


def _study_outcome(code: int) -> str:
    return "ok" if code == 0 else "refused" if code == REFUSED else "FAILED"


def _rewrite_index(root: Path) -> None:
    from ablations.handoff import write_index

    try:
        write_index(root)
    except RuntimeError as err:  # the results are on disk; `mm1ablate report` rewrites the index later
        print(f"warning: {root / 'index.html'} not rewritten: {err}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from ablations.leftovers import stop_on_signals_as_on_ctrl_c
    from ablations.suite import is_suite

    stop_on_signals_as_on_ctrl_c()
    if is_suite(Path(args.study)):
        return _run_suite(args)
    study = load_study(args.study)  # validated completely before Ray or MLflow start
    _check_file_tasks(study, _results_root(args))
    return _run_one(study, args)


def _run_one(
    study: Study, args: argparse.Namespace, *, busy: int = REFUSED, wait_for_others: bool = True
) -> int:
    """`busy`: the exit code for a study another driver runs (a driver of the same suite run says so quietly);
    `wait_for_others`: False, a study whose last trials another driver trains returns WAITING (run_study)."""
    from ablations.handoff import REPORTER_NICE, prestart_reporter
    from ablations.results import study_runner
    from ablations.tracking import redacted, resolve_tracking_uri

    root = _results_root(args)
    if busy == BUSY and (runner := study_runner(root / study.name)):
        print(f"[{study.name}] another driver runs it ({runner})", flush=True)
        return BUSY
    uri = redacted(resolve_tracking_uri(args.tracking_uri, root))
    prestart_reporter(root / study.name, root, tracking_uri=uri, nice=REPORTER_NICE)  # before Ray's import
    from ablations.handoff import Reporter
    from ablations.results import StudyBusy
    from ablations.run import ClusterTooSmall, run_study
    from ablations.tracking import TrackingUnreachable
    from mm1core.schema import last_line

    try:
        summary = run_study(
            study,
            results_root=_results_root(args),
            address=args.address,
            tracking_uri=args.tracking_uri,
            rerun_diverged=args.rerun_diverged,
            rerun_other_code=args.rerun_other_code,
            max_failures=args.max_failures,
            wait_for_others=wait_for_others,
        )
    except StudyBusy as refused:
        Reporter.started(root / study.name, root, tracking_uri=uri, nice=REPORTER_NICE).close()
        if busy == BUSY:
            print(f"[{study.name}] another driver runs it", flush=True)
            return BUSY
        print(f"error: {refused}", file=sys.stderr)
        return REFUSED
    except (ClusterTooSmall, TrackingUnreachable) as refused:
        print(f"error: {refused}", file=sys.stderr)
        return REFUSED
    except KeyboardInterrupt:  # before Tune ran the trials (while it runs them, it stops them itself)
        print(
            f"[{study.name}] interrupted before its trials ran to their end; run it again to resume",
            flush=True,
        )
        return INTERRUPTED
    if summary.elsewhere and not summary.interrupted:
        return WAITING
    print(
        f"[{study.name}] done in {summary.wall_time_s:.0f}s: {len(summary.finished)} finished, "
        + (f"{len(summary.stopped)} stopped early, " if summary.stopped else "")
        + f"{len(summary.failed)} failed, "
        + (f"{len(summary.diverged)} diverged, " if summary.diverged else "")
        + f"{summary.skipped} skipped (already done)"
    )
    for trial_id, why in summary.diverged.items():
        print(f"  diverged {trial_id}: {why}")
    for trial_id, error in summary.failed.items():
        print(f"  failed {trial_id}: {last_line(error)}")
    if summary.report:
        print(f"report: {summary.report}")
    if summary.interrupted:
        print(f"interrupted: {summary.interrupted} trials did not end; run the study again to resume them")
        return INTERRUPTED
    return 1 if summary.failed else 0


def _consolidate(study_dir: Path) -> None:
    """The study tables as of the last trial that ended, even one a running or killed driver has not yet folded in."""
    if (study_dir / "parts").is_dir():
        from ablations.results import ResultsStore

        ResultsStore(study_dir).consolidate()


def _study_name(value: str) -> str:
    """The commands that read a study's results take its name or its YAML file, whose `name` they read (a suite's
    file or folder is passed on as it is)."""
    path = Path(value)
    if path.suffix not in (".yaml", ".yml"):
        return value  # a study's name, or a suite's folder
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value}: no such study file")
    from ablations.suite import is_suite
    from ablations.yamlio import YamlError, load_yaml

    if is_suite(path):
        return value
    try:
        data = load_yaml(path).data
    except (YamlError, OSError) as err:
        raise argparse.ArgumentTypeError(f"{value}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        raise argparse.ArgumentTypeError(f"{value}: not a study file (it has no `name`)")
    return data["name"]


def _status_suite(args: argparse.Namespace) -> int:
    """Per study of the suite: its trials finished, counted from another study (finished there, adopted when this
    one runs), running, interrupted, failed and left to run; then the suite's distinct trials. Reads only what the
    runs wrote, so it is cheap beside a running suite; `mm1ablate plan SUITE` estimates the time of what is left."""
    from ablations.plan import plan
    from ablations.results import study_runner, trial_statuses, unended_progress
    from ablations.suite import adoptable, load_suite, read_suite_record, suite_runs

    suite = load_suite(Path(args.study))
    root = _results_root(args)
    for study in suite.studies:
        _consolidate(root / study.name)
    counted = adoptable(root)  # finished by some study with this code: no study trains them again
    rows, runners, state_of, running_left = [], [], {}, {}
    # A trial two studies hold has one state: the most advanced any of them records.
    rank = {"to run": 0, "failed": 1, "interrupted": 2, "running": 3, "finished": 4}
    for study in suite.studies:
        study_dir = root / study.name
        recorded = trial_statuses(study_dir)
        runner = study_runner(study_dir)
        progress = unended_progress(study_dir, set(recorded))
        if runner and (study_dir / "study.json").exists():
            spec = json.loads((study_dir / "study.json").read_text())
            left = _seconds_left(spec.get("estimate"), _unrecorded(spec, set(recorded), progress), progress)
            running_left[study.name] = left[0] if left else 0.0
        tally = dict.fromkeys(["finished", "counted", "running", "interrupted", "failed", "to run"], 0)
        for trial in plan(study):
            status = recorded.get(trial.trial_id)
            if status == "finished":
                column = state = "finished"
            elif trial.trial_id in counted:
                column, state = "counted", "finished"
            elif trial.trial_id in progress:
                column = state = "running" if runner else "interrupted"
            elif status in ("failed", "diverged", "stopped"):
                column = state = "failed"
            else:
                column = state = "to run"
            tally[column] += 1
            before = state_of.get(trial.trial_id, "to run")
            state_of[trial.trial_id] = max(before, state, key=rank.__getitem__)
        rows.append([study.name, sum(tally.values()), *tally.values()])
        runners.append(f"{study.name}: running ({runner})" if runner else "")
    print(f"suite {suite.name}: {len(suite.studies)} studies ({suite.path})")
    print(_table(rows, ["study", "trials", *tally]))
    print("counted: finished by another study in this results folder, counted when this one runs")
    print("failed: failed, diverged or stopped early (`mm1ablate status STUDY` says which)")
    for runner in filter(None, runners):
        print(runner)
    states = list(state_of.values())
    print(
        f"\n{sum(r[1] for r in rows)} trials in all, {len(state_of)} distinct: "
        + ", ".join(
            f"{states.count(s)} {s}" for s in ("finished", "running", "interrupted", "failed", "to run")
        )
    )
    if not any(runners) and states.count("finished") < len(states):
        print(
            f"`mm1ablate run {args.study}` runs what is left; `mm1ablate plan {args.study}` estimates its time"
        )
    record = read_suite_record(root, suite.name)
    running_since = time.time() if running_left else None
    record |= {"suite": suite.name, "wall_budget_s": suite.wall_budget_s}  # the suite file's, as it is now
    print("\n" + "\n".join(suite_runs(record, now=running_since)))
    left = _suite_time_left(suite, record, running_left)
    if left:
        print(left)
    return 0


def _suite_time_left(suite: Suite, record: dict, running: dict[str, float]) -> str:
    """While a run of the suite is in some of its studies (one, or two side by side): what is left of each by its
    own estimate, and the plan the run began with for the studies after them. Side by side, the sum overstates by
    what the studies' overlap saves."""
    runs = record.get("runs") or []
    if not running or not runs or runs[-1].get("ended") or "plan_by_study" not in runs[-1]:
        return ""
    names = [s.name for s in suite.studies]
    later = names[max(names.index(name) for name in running) + 1 :]
    planned = runs[-1].get("plan_by_study") or {}
    wall = sum(running.values()) + sum(float(planned.get(n, 0.0)) for n in later)
    each = " and ".join(f"{_duration(left)} of {name}" for name, left in running.items())
    return (
        f"about {_duration(wall)} left for the suite: {each} by {'their' if len(running) > 1 else 'its'} "
        f"estimate, and the plan this run began with for the {len(later)} "
        f"{'study' if len(later) == 1 else 'studies'} after {'them' if len(running) > 1 else 'it'}"
    )


def cmd_status(args: argparse.Namespace) -> int:
    import pandas as pd

    from ablations.results import study_runner, unended_progress
    from ablations.suite import is_suite

    if is_suite(Path(args.study)):
        return _status_suite(args)
    study_dir = _results_root(args) / args.study
    _consolidate(study_dir)
    path, spec_path = study_dir / "trials.parquet", study_dir / "study.json"
    if not path.exists() and not spec_path.exists():
        print(f"no results for study {args.study!r} in {study_dir}", file=sys.stderr)
        return 2
    recorded = (
        pd.read_parquet(path)
        if path.exists()
        else pd.DataFrame(columns=["trial_id", "arm", "seed", "status"])
    )
    spec = json.loads(spec_path.read_text()) if spec_path.exists() else {}
    runner = study_runner(study_dir)
    ended = set(recorded["trial_id"])
    progress = unended_progress(study_dir, ended)
    unrecorded = _unrecorded(spec, ended, progress)
    pending = []
    for trial in unrecorded:
        done = progress.get(trial["trial_id"])
        if done is None:
            state, how_far = "to run", ""
        else:
            state = "running" if runner else "interrupted"
            ago = time.time() - done.reported_at
            how_far = f"{done.stage} {done.step}/{done.total_steps}, {_duration(ago)} ago"
        pending.append(trial | {"status": state, "progress": how_far})
    trials = pd.concat([recorded, pd.DataFrame(pending)], ignore_index=True) if pending else recorded
    print(f"{args.study}: " + (f"running ({runner})" if runner else "not running"))
    print(trials.groupby("status").size().to_string())
    left = _time_left(spec.get("estimate"), unrecorded, progress)
    if left:
        print(left)
    if runner is None and any(p["status"] != "to run" for p in pending):
        print(
            "`mm1ablate run` on the study's file resumes the interrupted trials from their last checkpoints"
        )
    cols = [
        c
        for c in (
            "arm",
            "seed",
            "trial_id",
            "status",
            "progress",
            "stopped_at_step",
            "wall_time_s",
            *HEADLINE_METRICS,
            *file_task_headlines(list(trials.columns)),
        )
        if c in trials
    ]
    if "seed" in trials:
        trials["seed"] = trials["seed"].astype("Int64")  # a search's unplanned runs have none yet
    print(trials[cols].to_string(index=False, na_rep=""))
    return 0


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 90
        else f"{seconds / 60:.0f} min"
        if seconds < 5400
        else f"{seconds / 3600:.1f} h"
    )


def _unrecorded(spec: dict, ended: set[str], progress: dict) -> list[dict]:
    """The planned trials that have no row yet (study.json's `planned`), and any run reporting beyond the plan (a
    search's configurations)."""
    unrecorded = [p for p in spec.get("planned", []) if p["trial_id"] not in ended]
    planned_ids = {p["trial_id"] for p in unrecorded}
    return unrecorded + [{"trial_id": t} for t in progress if t not in planned_ids]


def _seconds_left(estimate: dict | None, unrecorded: list[dict], progress: dict) -> tuple[float, int] | None:
    """The plan's estimate of the trials left, less what their runs have done, spread over the study's slots (a trial
    uses one, so the longest left is a floor), and the slots; None where the plan priced none of them."""
    per_trial = (estimate or {}).get("trials", {})
    left = [
        per_trial[t["trial_id"]]
        * (1 - (progress[t["trial_id"]].multimodal_share if t["trial_id"] in progress else 0))
        for t in unrecorded
        if t["trial_id"] in per_trial
    ]
    if not left:
        return None
    slots = max(int(estimate.get("slots", 1)), 1)
    return max(sum(left) / slots, max(left)), slots


def _time_left(estimate: dict | None, unrecorded: list[dict], progress: dict) -> str:
    """Rough, but what a user watching a long study wants to know."""
    left = _seconds_left(estimate, unrecorded, progress)
    if left is None:
        return ""
    wall, slots = left
    return f"about {_duration(wall)} of trials left on {slots} slot{'s' * (slots > 1)} (the plan's estimate)"


def cmd_report(args: argparse.Namespace) -> int:
    """One study's report; or, for a suite, every study of it that has results (after a change to the statistics,
    say), a study not yet run named and passed over."""
    from ablations.suite import is_suite, load_suite

    if not is_suite(Path(args.study)):
        return _report_one(args.study, args)
    codes = []
    for study in load_suite(Path(args.study)).studies:
        study_dir = _results_root(args) / study.name
        _consolidate(study_dir)
        if (study_dir / "trials.parquet").exists():
            codes.append(_report_one(study.name, args))
        else:
            print(f"{study.name}: no trial of it has ended yet, so no report")
    return max(codes, default=0)


def _report_one(name: str, args: argparse.Namespace) -> int:
    from ablations.handoff import write_report
    from ablations.tracking import redacted, resolve_tracking_uri

    study_dir = _results_root(args) / name
    _consolidate(study_dir)
    if not (study_dir / "trials.parquet").exists():
        print(
            f"no results for study {name!r} in {study_dir}; run it first (mm1ablate run STUDY.yaml)",
            file=sys.stderr,
        )
        return 2
    uri = resolve_tracking_uri(args.tracking_uri, _results_root(args))
    try:
        print(write_report(study_dir, _results_root(args), tracking_uri=redacted(uri)))
    except RuntimeError as err:
        print(f"error: the report of {name!r} failed: {err}", file=sys.stderr)
        return 1
    print(_results_root(args) / "index.html")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from ablations.tracking import redacted, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, _results_root(args))
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)]
    if uri.startswith("sqlite:"):
        command += ["--default-artifact-root", (_results_root(args) / "mlartifacts").resolve().as_uri()]
    base = f"http://127.0.0.1:{args.port}/"
    # MLflow 3 opens an experiment on its GenAI overview; a study's runs table (parent run, trials nested under it)
    # is at #/experiments/<id>/runs: that is the address to open.
    studies = _experiment_ids(_results_root(args), [args.study] if args.study else None)
    if args.study and args.study not in studies:
        print(f"error: no study {args.study!r} has run in {_results_root(args)}", file=sys.stderr)
        return 2
    print(f"MLflow UI on {base} for {redacted(uri)}", flush=True)
    for name, experiment_id in studies.items():
        print(f"  {name}: {base}#/experiments/{experiment_id}/runs", flush=True)
    # MLflow 3's server also starts a runner of GenAI jobs (scorers, prompt optimisation): seven huey consumer
    # processes, each importing MLflow, about 14 CPU-s on 2 cores beside a UI that shows studies' runs and never
    # submits a job. Off unless the caller asks for it.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    return subprocess.call(command, env=env)


def _experiment_ids(results_root: Path, names: list[str] | None) -> dict[str, str]:
    """study -> its MLflow experiment id, as its last run recorded it in study.json."""
    found = {}
    for path in sorted(results_root.glob("*/study.json")):
        if names is not None and path.parent.name not in names:
            continue
        runs = json.loads(path.read_text()).get("runs") or []
        ids = [r["mlflow_experiment_id"] for r in runs if r.get("mlflow_experiment_id")]
        if ids:
            found[path.parent.name] = ids[-1]
    return found


def cmd_clean(args: argparse.Namespace) -> int:
    from ablations.disk import removals, remove, running_studies

    root = _results_root(args)
    running = running_studies(root)
    if running and args.yes:
        print(f"error: {', '.join(running)} running now: clean once it has ended", file=sys.stderr)
        return 2
    found = removals(root)
    if not found:
        print(f"nothing to clean in {root}")
        return 0
    for removal in found:
        print(f"{removal.bytes / 1e6:10.1f} MB  {removal.path}  ({removal.why})")
    total = sum(r.bytes for r in found) / 1e6
    if not args.yes:
        print(f"{len(found)} items, {total:,.1f} MB: a dry run; `mm1ablate clean --yes` removes them")
        return 0
    freed = remove(found) / 1e6
    print(f"removed {len(found)} items, {freed:,.1f} MB")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from ablations.tracking import TrackingUnreachable, redacted, resolve_tracking_uri, sync

    uri = resolve_tracking_uri(args.tracking_uri, _results_root(args))
    try:
        sent, left = sync(_results_root(args) / args.study, uri)
    except TrackingUnreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not sent and not left:
        print(f"nothing queued for {args.study!r}: MLflow has everything")
        return 0
    print(f"sent {sent} queued MLflow calls of {args.study!r} to {redacted(uri)}; {left} still queued")
    return 0 if not left else 1


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(study_json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm1ablate", description=__doc__)
    parser.add_argument(
        "--results-dir",
        default=os.environ.get("MM1ABLATE_RESULTS", "results"),
        help="where studies write (default: ./results, or MM1ABLATE_RESULTS)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="validate a study, list its trials and estimate what they will cost")
    p.add_argument("study", help="study YAML file, or a suite (a YAML file listing studies, or its folder)")
    p.add_argument(
        "--no-estimate",
        dest="estimate",
        action="store_false",
        help="skip the time estimate (which may calibrate the trial shapes on this machine first)",
    )
    p.add_argument(
        "--drivers", type=int, default=None, help="for a suite: as `run --drivers`, what the estimate assumes"
    )
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("run", help="run a study on Ray Tune, tracked in MLflow")
    p.add_argument("study", help="study YAML file, or a suite (a YAML file listing studies, or its folder)")
    p.add_argument(
        "--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else embedded Ray)"
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite under the results dir)",
    )
    p.add_argument(
        "--rerun-diverged",
        action="store_true",
        help="run again the trials whose loss became non-finite (by default their outcome stands)",
    )
    p.add_argument(
        "--rerun-other-code",
        action="store_true",
        help="train again the finished trials another version of mm1core trained (by default they count as "
        "finished; their results are kept aside and their MLflow runs marked superseded), and from step 0 the "
        "unfinished ones it began (by default they resume from their checkpoints)",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="retries of a trial whose process died, each from its last checkpoint (default 2)",
    )
    p.add_argument(
        "--drivers",
        type=int,
        default=None,
        help="for a suite: how many of its studies run at once, their trials sharing the slots (default: 2 where "
        "this machine has slots for two trials, so that none idles while a study's last trial runs alone)",
    )
    p.add_argument("--suite-driver", default=None, help=argparse.SUPPRESS)  # one of --drivers' drivers
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="trials of a study (or of each study of a suite) and their status")
    p.add_argument("study", type=_study_name, help="study name or YAML file, or a suite (its file or folder)")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "report", help="write results/<study>/report.html (for a suite, every study's that has run)"
    )
    p.add_argument("study", type=_study_name, help="study name or YAML file, or a suite (its file or folder)")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser(
        "clean",
        help="list (then, with --yes, remove) checkpoints of finished trials, stale cache entries and old shards",
    )
    p.add_argument("--yes", action="store_true", help="remove what the dry run lists")
    p.set_defaults(func=cmd_clean)
    p = sub.add_parser(
        "sync", help="send to MLflow what a study could not while the tracking server was down"
    )
    p.add_argument("study", type=_study_name, help="study name or YAML file")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser("ui", help="the MLflow UI on the studies' store, on 127.0.0.1")
    p.add_argument(
        "study", nargs="?", default=None, type=_study_name, help="print the address of this study's runs only"
    )
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=cmd_ui)
    p = sub.add_parser("schema", help="print the JSON Schema of the study format")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    # `mm1ablate plan big.yaml | head` should stop quietly when head does, like any Unix tool.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        return args.func(args)
    except StudyError as err:
        print(f"error: the study is invalid; nothing was run:\n{err}", file=sys.stderr)
        return 2
    finally:
        if os.environ.get("MM1ABLATE_TIMING"):
            print(f"({time.perf_counter() - started:.3f}s)", file=sys.stderr)
        if argv is None:
            # The process ends here. Its last garbage collection would walk every object that Ray, Tune, pandas and
            # MLflow made, a second after a study for nothing (bench/README.md, run overhead): frozen, it is skipped.
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
