"""design: search and early stopping through the real CLI, Ray Tune (OptunaSearch, ASHAScheduler), Optuna's SQLite
storage and MLflow; the plan's cost estimate and each trial's recorded cost."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import optuna
import pandas as pd
import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow

SEARCH = """
name: tiny-search
reference:
  preset: tiny
  overrides:
    train.steps: 60
    train.eval_every: 10
design: search
search:
  sampler: tpe
  trials: {trials}
  metric: heldout/loss
  mode: min
  seeds: {seeds}
  scheduler: {{name: asha, grace_period: 10, reduction_factor: 2}}
axes:
  - name: train.lr
    loguniform: [1.0e-5, 1.0e-2]
  - name: lm.width
    values: [32, 48]
resources: {{cpu: 1}}
"""
LR_BOUNDS = (1.0e-5, 1.0e-2)


def _optuna(root) -> optuna.Study:
    storage = f"sqlite:///{root / 'results' / 'tiny-search' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    (root / "search.yaml").write_text(SEARCH.format(trials=8, seeds=1).lstrip())
    done = run_cli("run", "search.yaml", cwd=root)
    return root, done


def test_a_search_samples_in_bounds_stops_some_and_stores_every_trial(searched):
    root, done = searched
    assert done.returncode == 0, done.stderr[-3000:]
    study = _optuna(root)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 8
    states = {t.state for t in trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE in states
    for t in trials:
        assert LR_BOUNDS[0] <= t.params["train.lr"] <= LR_BOUNDS[1] and t.params["lm.width"] in (32, 48)
        assert t.value is not None and math.isfinite(
            t.value
        )  # a pruned trial keeps its last intermediate value
        assert t.intermediate_values  # reported at the evaluation rounds, keyed by training step
        assert set(t.intermediate_values) <= set(range(10, 61, 10))
    # Every Optuna trial is a training run in the study's tables, stopped ones with their own status and step.
    rows = pd.read_parquet(root / "results" / "tiny-search" / "trials.parquet")
    assert len(rows) == 8 and set(rows["status"]) == {"finished", "stopped"}
    stopped = rows[rows["status"] == "stopped"]
    assert (stopped["stopped_at_step"] < 60).all() and (stopped["stopped_at_step"] >= 10).all()
    assert len(stopped) == sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    # A complete trial's value is its run's final held-out loss.
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            lr = rows["train.lr"].astype(float)
            row = rows[(lr - t.params["train.lr"]).abs() < 1e-12 * t.params["train.lr"] + 1e-15]
            assert row["heldout/loss"].iloc[0] == pytest.approx(t.value)


def test_a_stopped_run_trains_no_further_than_where_it_was_stopped(searched):
    """With reused actors, a run that trained on after ASHA stopped it piled up in the worker beside the next trial
    (workers of 7 GB, until Ray's memory monitor killed one and the study with it) and moved its checkpoint past the
    step it was stopped at."""
    root, done = searched
    study_dir = root / "results" / "tiny-search"
    rows = pd.read_parquet(study_dir / "trials.parquet")
    stopped = rows[rows["status"] == "stopped"]
    assert len(stopped)
    for trial_id, at_step in zip(stopped["trial_id"], stopped["stopped_at_step"], strict=True):
        log = study_dir / "checkpoints" / f"{trial_id}.reports.jsonl"
        steps = [
            event["step"]
            for event in map(json.loads, log.read_text().splitlines())
            if event.get("stage") == "multimodal"
        ]
        assert max(steps) == at_step, (
            f"{trial_id} was stopped at step {at_step:g} and trained to {max(steps)}"
        )


def test_the_search_report_names_the_best_configuration_and_keeps_stopped_runs_apart(searched):
    root, _ = searched
    report = (root / "results" / "tiny-search" / "report.html").read_text()
    best = _optuna(root).best_trial
    assert (
        "The best configuration, as a study&#x27;s reference" in report or "as a study's reference" in report
    )
    assert f"lm.width: {best.params['lm.width']}" in report
    assert "Stopped early:" in report and "Parameter importances" in report and "Cost" in report
    spec = json.loads((root / "results" / "tiny-search" / "study.json").read_text())
    assert spec["estimate"]["wall_s"] > 0 and spec["runs"][-1]["wall_s"] > 0
    # Stopped runs never stand in the arm table.
    arms = pd.read_csv(root / "results" / "tiny-search" / "arms.csv")
    rows = pd.read_parquet(root / "results" / "tiny-search" / "trials.parquet")
    assert set(arms["arm"]) == set(rows.loc[rows["status"] == "finished", "arm"])


def test_a_rerun_resumes_the_search_instead_of_starting_again(searched):
    root, _ = searched
    again = run_cli("run", "search.yaml", cwd=root)
    assert again.returncode == 0 and "8 already tried, 0 to try" in again.stdout
    assert len(_optuna(root).get_trials(deepcopy=False)) == 8
    (root / "search.yaml").write_text(SEARCH.format(trials=10, seeds=1).lstrip())
    more = run_cli("run", "search.yaml", cwd=root)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "8 already tried, 2 to try" in more.stdout
    trials = _optuna(root).get_trials(deepcopy=False)
    assert len(trials) == 10
    # The sampler continues; it does not replay the configurations of the run before.
    params = [(round(t.params["train.lr"], 12), t.params["lm.width"]) for t in trials]
    assert len(set(params)) == len(params)


def test_finished_trials_record_their_cost(searched):
    root, _ = searched
    rows = pd.read_parquet(root / "results" / "tiny-search" / "trials.parquet")
    done = rows[rows["status"] == "finished"]
    for column in (
        "cost/wall_s",
        "cost/cpu_s",
        "cost/gpu_s",
        "time/encoder_s",
        "time/train_s",
        "time/eval_s",
    ):
        assert done[column].notna().all(), column
    assert (done["cost/cpu_s"] > 0).all() and (done["cost/gpu_s"] == 0).all()
    # The worker's memory at the run's end: torch and the model alone are a few hundred MB.
    assert (done["cost/worker_rss_mb"] > 100).all()


def test_seeds_per_configuration_are_averaged_for_the_searcher(tmp_path):
    (tmp_path / "search.yaml").write_text(
        SEARCH.format(trials=2, seeds=2)
        .replace("  scheduler: {name: asha, grace_period: 10, reduction_factor: 2}\n", "")
        .lstrip()
    )
    done = run_cli("run", "search.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_parquet(tmp_path / "results" / "tiny-search" / "trials.parquet")
    assert len(rows) == 4 and set(rows["seed"]) == {0, 1} and (rows["status"] == "finished").all()
    for t in _optuna(tmp_path).get_trials(deepcopy=False):
        runs = rows[rows["arm"].str.startswith(f"train.lr={t.params['train.lr']:.4g},")]
        assert len(runs) == 2
        assert t.value == pytest.approx(runs["heldout/loss"].mean())


GRID = """
name: tiny-asha
reference:
  preset: tiny
  overrides:
    train.steps: 60
    train.eval_every: 10
axes:
  - name: train.lr
    values: [3.0e-3, 1.0e-4, 3.0e-5, 1.0e-5]
seeds: [0]
{scheduler}
"""
# Best first: ASHA judges a run against those that reached its rung before it, so whichever of the first two arrives
# first goes on; the two slowest learners, which start last, fall below the cutoff whatever the timing.


def test_early_stopping_in_a_grid_and_resuming_what_it_stopped(tmp_path):
    scheduler = "scheduler: {grace_period: 10, reduction_factor: 4, metric: heldout/loss, mode: min}"
    (tmp_path / "grid.yaml").write_text(GRID.format(scheduler=scheduler).lstrip())
    done = run_cli("run", "grid.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_parquet(tmp_path / "results" / "tiny-asha" / "trials.parquet")
    stopped = rows[rows["status"] == "stopped"]
    assert len(stopped) >= 1 and (rows["status"] == "finished").sum() >= 1
    # With the scheduler, its decision stands: a re-run leaves the stopped trials alone.
    again = run_cli("run", "grid.yaml", cwd=tmp_path)
    assert "0 to run" in again.stdout
    # Without it, they resume from their checkpoints and finish.
    (tmp_path / "grid.yaml").write_text(GRID.format(scheduler="").lstrip())
    resumed = run_cli("run", "grid.yaml", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(stopped)} to run" in resumed.stdout
    rows = pd.read_parquet(tmp_path / "results" / "tiny-asha" / "trials.parquet")
    assert (rows["status"] == "finished").all() and len(rows) == 4


def test_a_plan_made_beside_other_work_does_not_cache_that_load_as_the_machines_rates(tmp_path):
    """A calibration measured while other processes keep the cores busy (a study running on this machine) prices
    this plan and no later one: nothing goes into the machine's calibration cache."""
    (tmp_path / "grid.yaml").write_text(GRID.format(scheduler="").lstrip())
    machine = {"MM1ABLATE_CALIBRATION": str(tmp_path / "calibration.json")}
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)
    ]
    try:
        out = run_cli("plan", "grid.yaml", cwd=tmp_path, env=machine).stdout
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert "this machine is busy with other work" in out and "estimate: 4 trials" in out
    assert "on a busy machine" in out and not (tmp_path / "calibration.json").exists()


def test_a_study_beside_counts_as_busy_while_our_own_work_fills_the_cores():
    """`mm1ablate run` starts Ray beside its estimate: Ray's start fills the cores, and a study already running on
    them gets little CPU during the busy check. It must still count, or its load is cached as the machine's rates
    (seen on 2026-11-28: a quickstart run beside two studies calibrated and cached). Here our own burners fill every
    core and the other process runs at nice 19, so it gets almost no CPU: it is busy because it is ready to run."""
    from ablations.cost import busy_cpus_threshold, cpus_busy_elsewhere

    burn = [sys.executable, "-c", "while True: pass"]
    own = [subprocess.Popen(burn) for _ in range(os.cpu_count() or 1)]
    # Started through a shell that exits at once: the burner is no descendant of this process.
    other = int(
        subprocess.run(
            ["sh", "-c", f"nice -n 19 {sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    try:
        busy = cpus_busy_elsewhere()
    finally:
        os.kill(other, 9)
        for burner in own:
            burner.kill()
            burner.wait()
    assert busy is not None and busy >= 0.9 and busy > busy_cpus_threshold()


def test_plan_estimates_a_study_and_a_search(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID.format(scheduler="").lstrip())
    # Cached however busy the machine is with other work (a developer's study beside the tests).
    machine = {"MM1ABLATE_CALIBRATION": str(tmp_path / "calibration.json"), "MM1ABLATE_BUSY_CPUS": "1000"}
    out = run_cli("plan", "grid.yaml", cwd=tmp_path, env=machine).stdout
    assert "calibrating" in out and "estimate: 4 trials" in out and "of wall time on" in out
    assert "calibration on" in out and (tmp_path / "calibration.json").exists()
    # The calibration is cached for the machine: a second plan, from another results folder, does not run it again.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "grid.yaml").write_text(GRID.format(scheduler="").lstrip())
    again = run_cli("plan", "grid.yaml", cwd=tmp_path / "elsewhere", env=machine).stdout
    assert "calibrating" not in again and "estimate: 4 trials" in again
    (tmp_path / "search.yaml").write_text(SEARCH.format(trials=8, seeds=1).lstrip())
    out = run_cli("plan", "search.yaml", cwd=tmp_path, env=machine).stdout
    assert "search: 8 configurations x 1 seed(s), sampler tpe" in out
    assert "train.lr: loguniform [1e-05, 0.01]" in out and "early stopping: ASHA on heldout/loss" in out
    assert "without early stopping" in out
