"""Faults injected for real: a driver killed with SIGKILL, damaged cache files and checkpoints, a diverging trial,
bounds no one means, a trial larger than the cluster. What must hold: nothing finished is lost, nothing is done or
recorded twice, nothing is left running, and a damaged file is rebuilt rather than trusted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CLI_ENV, MM1ABLATE, read_until, run_cli, start_cli
from mlflow.tracking import MlflowClient

from ablations.leftovers import descendants
from mm1core.hardware import cpu_model_name
from mm1core.stage_cache import cache_state, cached_stage, code_version
from mm1core.storage import DamagedFile, load_checked, save_checked

STUDY = """
name: {name}
reference:
  preset: tiny
  overrides:
    encoder_pretrain.loss: clip
    train.steps: 400
    train.eval_every: 100
    train.checkpoint_every: 100
axes:
  - name: train.lr
    values: [0.001, 0.002]
seeds: [0]
resources: {{cpu: 1}}
budget:
  encoder: {{steps: 60}}
"""
METRICS = ["0shot/avg", "4shot/avg", "8shot/avg", "heldout/loss", "0shot/vqa"]


def _runs(root: Path, study: str) -> list:
    client = MlflowClient(f"sqlite:///{root / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study)
    return client, client.search_runs([experiment.experiment_id])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(process: dict) -> bool:
    try:
        stat = Path(f"/proc/{process['pid']}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[19] == process["start"]


def _study_dir(root: Path) -> Path:
    return root / "results" / "faults"


def _start(root: Path) -> subprocess.Popen:
    (root / "s.yaml").write_text(STUDY.format(name="faults").lstrip())
    return start_cli("run", "s.yaml", cwd=root)


def _curves(root: Path, part: str) -> pd.DataFrame:
    """The trials' own curves, or the curve of the encoder they share. Which trial builds a shared encoder (and so
    reports its curve) is whichever takes its lock first, in any run; the curve itself must be whole and the same."""
    curve = pd.read_parquet(_study_dir(root) / "curves.parquet")
    # What took how long differs between any two runs; nothing else may.
    timing = curve["metric"].str.startswith(("time/", "cost/")) | curve["metric"].str.endswith("/steps_per_s")
    curve = curve[~timing]
    encoder = curve["metric"].str.startswith("encoder/")
    if part == "encoder":
        curve = curve[encoder].drop_duplicates(["metric", "step"]).assign(trial_id="shared")
    else:
        curve = curve[~encoder]
    columns = ["trial_id", "metric", "step", "value"]
    return curve.sort_values(columns[:3])[columns].reset_index(drop=True)


def _trials(root: Path) -> pd.DataFrame:
    return pd.read_parquet(_study_dir(root) / "trials.parquet").set_index("trial_id").sort_index()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    driver = _start(root)
    out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out
    return root


def _kill(driver: subprocess.Popen, root: Path) -> list[dict]:
    """SIGKILL of a driver: the Ray processes it leaves behind, still running."""
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    left_behind = json.loads((_study_dir(root) / ".ray-processes.json").read_text())
    time.sleep(2)
    assert any(_alive(p) for p in left_behind), (
        "the experiment no longer shows the leftovers it guards against"
    )
    return left_behind


@pytest.mark.slow
def test_a_killed_driver_resumes_to_the_same_study(tmp_path, uninterrupted):
    """SIGKILL of the driver during the encoder's pre-training, again mid-training and again during the final
    evaluation, each time `run` again: the study an uninterrupted run gives, one MLflow run per trial, whole learning
    curves, and none of a killed driver's processes left. One study killed three times rather than three studies
    killed once: each resume starts from what the kills before it left, which is no weaker, and CI pays one study."""
    driver = _start(tmp_path)
    printed = read_until(driver, "encoder step 25/60")
    left_behind = _kill(driver, tmp_path)
    for marker in ("multimodal step 250/400", "multimodal step 400/400"):
        driver = start_cli("run", "s.yaml", cwd=tmp_path)
        seen = read_until(driver, marker)
        printed += seen
        assert any("Ray processes a killed run had left behind" in line for line in seen), "".join(seen)
        assert not any(_alive(p) for p in left_behind)
        if marker.endswith("400/400"):  # killed mid-training: the estimate prices what is left of the runs
            assert any("resume from their checkpoints" in line for line in seen), "".join(seen)
        if marker.startswith("multimodal step 250"):
            watching = run_cli("status", "faults", cwd=tmp_path, timeout=120)
            assert f"faults: running (pid {driver.pid} " in watching.stdout, watching.stdout + watching.stderr
            assert re.search(r" running +multimodal \d+/400, \d+ s ago", watching.stdout), watching.stdout
        left_behind = _kill(driver, tmp_path)
        if marker.startswith("multimodal step 250"):
            after = run_cli("status", "faults", cwd=tmp_path, timeout=120)
            assert "faults: not running" in after.stdout, after.stdout + after.stderr
            assert re.search(r" interrupted +multimodal \d+/400", after.stdout), after.stdout
            assert "resumes the interrupted trials" in after.stdout

    # Each go at a trial logs its machine beside the checkpoint. Say the go that began one trial's run ran on
    # another machine: its row names both, in order (the test has one machine to resume on).
    logs = sorted((_study_dir(tmp_path) / "checkpoints").glob("*.machines.jsonl"))
    assert len(logs) == 2, logs
    goes = [json.loads(line) for line in logs[0].read_text().splitlines()]
    assert goes[-1]["resumed"] and not goes[0]["resumed"], goes
    began = max(i for i, went in enumerate(goes) if not went["resumed"])
    goes[began]["cpu_model"] = "Another CPU"
    logs[0].write_text("".join(json.dumps(went) + "\n" for went in goes))
    handed_on = logs[0].name.split(".")[0]

    again = run_cli("run", "s.yaml", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Ray processes a killed run had left behind" in again.stdout
    assert not any(_alive(p) for p in left_behind)
    # A resumed run replays the reports it had logged and retrains from its checkpoint; the driver says only what is new.
    steps = re.findall(r"\| (\S+ seed=\d+: \w+ step \d+)/", "".join(printed) + again.stdout)
    assert steps and len(steps) == len(set(steps)), sorted(s for s in steps if steps.count(s) > 1)

    resumed, whole = _trials(tmp_path), _trials(uninterrupted)
    assert list(resumed["status"]) == ["finished", "finished"]
    # Resumed runs' times are their last go's: they say so, and price no plan (ablations.cost).
    assert list(resumed["resumed"]) == [True, True] and not whole["resumed"].any()
    for trial_id, machines in resumed["machines_json"].items():
        expected = ["Another CPU", cpu_model_name()] if trial_id == handed_on else [cpu_model_name()]
        assert [m["cpu_model"] for m in json.loads(machines)] == expected, machines
    pd.testing.assert_frame_equal(resumed[METRICS], whole[METRICS])
    for part in ("trials", "encoder"):
        pd.testing.assert_frame_equal(_curves(tmp_path, part), _curves(uninterrupted, part))

    client, runs = _runs(tmp_path, "faults")
    trials = [r for r in runs if r.data.tags.get("mm1ablate.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("mm1ablate.role") == "study"]
    assert sorted(r.info.status for r in trials) == ["FINISHED", "FINISHED"]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED", "KILLED", "KILLED"]
    finished_parent = next(p for p in parents if p.info.status == "FINISHED").info.run_id
    for run in trials:
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(5, 401, 5))  # once each, none lost
        assert run.data.tags["mlflow.parentRunId"] == finished_parent


@pytest.mark.slow
def test_a_killed_trial_process_is_retried_from_its_checkpoint(tmp_path, uninterrupted):
    """A trial's own process killed (as by the OOM killer): Tune retries it and the study goes on to the same end."""
    driver = _start(tmp_path)
    seen = read_until(driver, "multimodal step 250/400")
    workers = [pid for pid in descendants(driver.pid) if _cmdline(pid).startswith("ray::ImplicitFunc")]
    assert workers, "".join(seen[-20:])
    os.kill(workers[0], signal.SIGKILL)
    rest, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, "".join(seen) + rest
    retried = _trials(tmp_path)
    assert list(retried["status"]) == ["finished", "finished"]
    pd.testing.assert_frame_equal(retried[METRICS], _trials(uninterrupted)[METRICS])
    for part in ("trials", "encoder"):
        pd.testing.assert_frame_equal(_curves(tmp_path, part), _curves(uninterrupted, part))


def test_a_damaged_cache_entry_is_moved_aside_and_rebuilt(tmp_path, capsys):
    builds = []

    def build(progress: Path) -> dict:
        builds.append(progress)
        return {"encoder": {"w": torch.arange(1000.0)}}

    result, built = cached_stage(tmp_path, "encoder-x", build)
    assert built and cache_state(tmp_path, "encoder-x") == "cached"
    assert cached_stage(tmp_path, "encoder-x", build)[1] is False
    entry = tmp_path / "encoder-x.pt"
    entry.write_bytes(entry.read_bytes()[:-200])  # a disk that filled up mid-copy
    assert cache_state(tmp_path, "encoder-x") == "damaged"
    again, built = cached_stage(tmp_path, "encoder-x", build)
    assert built and len(builds) == 2 and torch.equal(again["encoder"]["w"], result["encoder"]["w"])
    assert "is damaged" in capsys.readouterr().err
    assert len(list(tmp_path.glob("encoder-x.pt.damaged-*"))) == 1
    assert cache_state(tmp_path, "encoder-x") == "cached"


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mm1ablate-pwned",))


def test_a_cache_file_that_would_run_code_is_never_unpickled(tmp_path):
    """Even with a matching checksum (a file planted with its sidecar), loads are weights_only."""
    path = tmp_path / "encoder-evil.pt"
    save_checked({"encoder": _Payload()}, path)
    Path("/tmp/mm1ablate-pwned").unlink(missing_ok=True)
    with pytest.raises(DamagedFile, match="without running code"):
        load_checked(path)
    assert not Path("/tmp/mm1ablate-pwned").exists()


def test_a_damaged_checkpoint_restarts_the_stage_instead_of_failing(tmp_path, capsys):
    from mm1core.config import TrainConfig
    from mm1core.train import train

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    cfg = TrainConfig(
        steps=6, batch_size=2, lr=1e-2, warmup_steps=0, checkpoint_every=3, log_every=1, eval_every=0
    )
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    seen: list[int] = []

    def step_loss(step: int) -> dict:
        seen.append(step)
        return {"ce_loss": torch.nn.functional.mse_loss(model(x), y)}

    checkpoint = tmp_path / "trial.pt"
    train(model, step_loss, cfg, device=torch.device("cpu"), checkpoint_path=checkpoint)
    checkpoint.write_bytes(b"\0" * 64)
    seen.clear()
    train(model, step_loss, cfg, device=torch.device("cpu"), checkpoint_path=checkpoint)
    assert seen == list(range(6))  # from step 0: the damaged checkpoint was not resumed from
    assert "is damaged" in capsys.readouterr().err


BAD_BOUNDS = """
name: bounds
reference:
  preset: tiny
  overrides:
    encoder.resolution: 1000000
    train.steps: 5.0e+9
axes:
  - name: train.lr
    values: [0.001, .inf]
seeds: [0, -3]
"""


def test_bounds_no_one_means_are_refused_at_plan_time(tmp_path):
    (tmp_path / "s.yaml").write_text(BAD_BOUNDS.lstrip())
    out = run_cli("plan", "s.yaml", cwd=tmp_path, timeout=120)
    assert out.returncode != 0 and "nothing was run" in out.stderr
    assert "s.yaml:10: seeds[1]" in out.stderr
    (tmp_path / "s.yaml").write_text(BAD_BOUNDS.replace("[0, -3]", "[0, 3]").lstrip())
    out = run_cli("plan", "s.yaml", cwd=tmp_path, timeout=120)
    assert "s.yaml:5: reference.overrides.encoder.resolution: 1000000 is beyond" in out.stderr
    assert "s.yaml:6: reference.overrides.train.steps" in out.stderr
    assert "s.yaml:9: axes[0].values[1]: must be a finite number" in out.stderr


def test_too_many_trials_are_refused(tmp_path):
    (tmp_path / "s.yaml").write_text(
        STUDY.format(name="huge")
        .replace("values: [0.001, 0.002]", f"values: {[1e-4 * (i + 1) for i in range(200)]}")
        .replace("seeds: [0]", f"seeds: {list(range(60))}")
        .lstrip()
    )
    out = run_cli("plan", "s.yaml", cwd=tmp_path, timeout=120)
    assert "200 arms x 60 seeds = 12,000 trials, more than the 10,000" in out.stderr


@pytest.mark.slow
def test_a_trial_larger_than_any_node_is_refused_not_queued_forever(tmp_path):
    (tmp_path / "s.yaml").write_text(STUDY.format(name="big").replace("{cpu: 1}", "{cpu: 64}").lstrip())
    out = run_cli("run", "s.yaml", cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert "resources.cpu is 64 per trial, but the largest node" in out.stderr


@pytest.mark.slow
def test_sigterm_and_a_background_jobs_ctrl_c_stop_a_run_as_ctrl_c_does(tmp_path):
    """A run started as a shell's background job (SIGINT ignored) stops on SIGINT even before Tune runs its trials,
    and SIGTERM (a batch scheduler's notice) stops it as Ctrl-C does: exit 130, the trials interrupted and resumable,
    rather than the driver gone at once. Then the model code changes under them: a run says that resuming them
    would mix two codes, and `--rerun-other-code` trains them from step 0 in MLflow runs of their own."""
    (tmp_path / "s.yaml").write_text(STUDY.format(name="faults").lstrip())

    def stopped(marker: str, signum: int) -> str:
        """A run started as a background job, sent `signum` once it prints `marker`: what it printed after."""
        driver = subprocess.Popen(
            [MM1ABLATE, "run", "s.yaml"],
            cwd=tmp_path,
            env=CLI_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        seen = read_until(driver, marker)
        driver.send_signal(signum)
        rest, _ = driver.communicate(timeout=300)
        assert driver.returncode == 130 and "Traceback" not in rest, "".join(seen) + rest
        return "".join(seen) + rest

    early = stopped("trials planned", signal.SIGINT)
    assert "[faults] interrupted before its trials ran to their end; run it again to resume" in early, early
    late = stopped("multimodal step 150/400", signal.SIGTERM)  # past the checkpoint at step 100
    assert "interrupted: 2 trials did not end; run the study again to resume them" in late, late
    status = run_cli("status", "faults", cwd=tmp_path, timeout=120).stdout
    assert (
        "interrupted" in status and "resumes the interrupted trials from their last checkpoints" in status
    ), status

    # Another mm1core began these runs: what their checkpoints' record and their MLflow runs say once it has.
    checkpoints = _study_dir(tmp_path) / "checkpoints"
    began = sorted(checkpoints.glob("*.code"))
    assert len(began) == 2 and {path.read_text() for path in began} == {code_version()}
    for path in began:
        path.write_text("0123456789ab")
    client, runs = _runs(tmp_path, "faults")
    for run in runs:
        if run.data.tags.get("mm1ablate.role") == "trial":
            client.set_tag(run.info.run_id, "code_version", "0123456789ab")
    told = stopped("trials planned", signal.SIGINT)
    assert (
        "2 to run (2 of them resume from checkpoints that other model code began, mm1core 0123456789ab: each "
        "would be part one code's run and part this one's; `--rerun-other-code` starts them over)" in told
    ), told
    again = run_cli("run", "s.yaml", "--rerun-other-code", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 to run (2 of them, begun by other model code, mm1core 0123456789ab, start over)" in again.stdout
    assert {path.read_text() for path in began} == {code_version()}
    # From step 0: a resumed run's log beside its checkpoint would go back from step 150 to its checkpoint's 100.
    for log in checkpoints.glob("*.reports.jsonl"):
        steps = [
            e["step"] for e in map(json.loads, log.read_text().splitlines()) if e["stage"] == "multimodal"
        ]
        assert steps == sorted(steps) and steps[-1] == 400, (log.name, steps)
    _, runs = _runs(tmp_path, "faults")
    roles = sorted(r.data.tags["mm1ablate.role"] for r in runs if r.data.tags.get("trial_id"))
    assert roles == ["superseded", "superseded", "trial", "trial"], roles
    for run in runs:
        if run.data.tags.get("mm1ablate.role") == "trial":
            history = client.get_metric_history(run.info.run_id, "train/loss")
            assert sorted(m.step for m in history) == list(range(5, 401, 5))


def test_trials_set_aside_leave_the_study_with_their_checkpoints_and_keep_their_records(tmp_path):
    """`run --rerun-other-code`: the trials another mm1core trained leave the study's tables, their parts kept aside
    and their checkpoints gone (a retraining must not resume from the old code's); the other trials stay. Tables
    with no parts behind them (an older results folder) lose those trials' rows too, and only theirs."""
    from ablations.results import ResultsStore

    store = ResultsStore(tmp_path / "study")
    checkpoints = store.dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    for trial_id in ("aaa", "bbb"):
        row = {"trial_id": trial_id, "status": "finished", "0shot/avg": 0.5}
        store.save_trial(row, [{"trial_id": trial_id, "step": 5, "metric": "train/loss", "value": 1.0}], [])
        for suffix in (".pt", ".pt.sha256", ".reports.jsonl"):
            (checkpoints / f"{trial_id}{suffix}").write_text("x")
    store.consolidate()
    store.set_aside({"bbb"}, "other-code")
    assert store.statuses() == {"aaa": "finished"}
    assert set(pd.read_parquet(store.curves_path)["trial_id"]) == {"aaa"}
    kept = sorted(p.name for p in (store.parts / "other-code").iterdir())
    assert kept == ["bbb.curves.parquet", "bbb.trial.parquet"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["aaa.pt", "aaa.pt.sha256", "aaa.reports.jsonl"]
    assert store.set_aside_ids("other-code") == {"bbb"}
    store.consolidate()  # the parts left say the same
    assert store.statuses() == {"aaa": "finished"}

    for part in store.parts.glob("*.parquet"):
        part.unlink()  # tables only
    store.set_aside({"aaa"}, "other-code")
    assert store.statuses() == {} and pd.read_parquet(store.curves_path).empty


def test_a_damaged_results_part_is_moved_aside_and_its_trial_runs_again(tmp_path, capsys):
    from ablations.results import ResultsStore

    store = ResultsStore(tmp_path / "study")
    for trial_id in ("aaa", "bbb"):
        row = {"trial_id": trial_id, "status": "finished", "0shot/avg": 0.5}
        store.save_trial(row, [{"trial_id": trial_id, "step": 5, "metric": "train/loss", "value": 1.0}], [])
    store.consolidate()
    assert store.statuses() == {"aaa": "finished", "bbb": "finished"}
    part = store.parts / "bbb.curves.parquet"
    part.write_bytes(part.read_bytes()[:40])
    store.consolidate()
    assert store.statuses() == {"aaa": "finished"}  # not half a trial: bbb is trained again by the next run
    assert set(pd.read_parquet(store.curves_path)["trial_id"]) == {"aaa"}
    assert "is damaged" in capsys.readouterr().err
    assert len(list(store.parts.glob("bbb.*.damaged-*"))) == 2


@pytest.mark.slow
def test_two_studies_at_once_share_the_cache_and_the_tracking_store(tmp_path):
    """Two different studies started together in one results folder, their trials different (another learning
    rate) on the same encoder: one builds the encoder, the other waits for it; both record every trial in the same
    SQLite MLflow store, nothing left queued. (The same trial in both trains once: test_suite.py.)"""
    drivers = []
    for name, lr in (("left", "0.001"), ("right", "0.002")):
        (tmp_path / f"{name}.yaml").write_text(
            STUDY.format(name=name).replace("values: [0.001, 0.002]", f"values: [{lr}]").lstrip()
        )
        drivers.append(start_cli("run", f"{name}.yaml", cwd=tmp_path))
    outputs = [driver.communicate(timeout=600)[0] for driver in drivers]
    assert [driver.returncode for driver in drivers] == [0, 0], outputs
    assert len(list((tmp_path / "results" / "cache").glob("encoder-*.pt"))) == 1  # the same stage, built once
    assert (
        sum(
            pd.read_parquet(tmp_path / "results" / n / "trials.parquet")["built_encoder"].sum()
            for n in ("left", "right")
        )
        == 1
    )
    for name in ("left", "right"):
        assert not (tmp_path / "results" / name / "mlflow-queue.jsonl").exists()
        client, runs = _runs(tmp_path, name)
        assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
        trial = next(r for r in runs if r.data.tags.get("mm1ablate.role") == "trial")
        assert len(client.get_metric_history(trial.info.run_id, "train/loss")) == 80


def test_an_evaluation_round_cut_short_by_a_kill_runs_again_on_resume(tmp_path):
    """The checkpoint is written before its evaluation round; a kill during the round must not lose it."""
    from mm1core.config import TrainConfig
    from mm1core.train import train

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    cfg = TrainConfig(
        steps=6, batch_size=2, lr=1e-2, warmup_steps=0, checkpoint_every=3, log_every=1, eval_every=3
    )
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def step_loss(step: int) -> dict:
        return {"ce_loss": torch.nn.functional.mse_loss(model(x), y)}

    def killed(step: int) -> None:
        raise KeyboardInterrupt  # the kill, in the middle of the round at step 3

    checkpoint = tmp_path / "trial.pt"
    with pytest.raises(KeyboardInterrupt):
        train(model, step_loss, cfg, device=torch.device("cpu"), checkpoint_path=checkpoint, on_eval=killed)
    evaluated: list[int] = []
    train(
        model,
        step_loss,
        cfg,
        device=torch.device("cpu"),
        checkpoint_path=checkpoint,
        on_eval=evaluated.append,
    )
    assert evaluated == [3]
