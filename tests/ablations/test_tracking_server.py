"""Studies against a real `mlflow server` on 127.0.0.1 (SQLite behind it, artifacts served by it): a server that is
down when a run starts, and one that goes down in the middle of a run and comes back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import read_until, run_cli, start_cli
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

STUDY = """
name: served
reference:
  preset: tiny
  overrides:
    train.steps: 150
    train.eval_every: 50
axes:
  - name: train.lr
    values: [0.001, 0.002]
seeds: [0]
resources: {cpu: 1}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """`mlflow server` in its own process group, on a fixed port so that it can come back at the same address."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        mlflow = str(Path(sys.executable).with_name("mlflow"))
        self.process = subprocess.Popen(
            [
                mlflow, "server",
                "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                "--artifacts-destination", (self.root / "served-artifacts").as_uri(),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            ],
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # as `mm1ablate ui` starts it
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                assert self.process.poll() is None, "mlflow server exited"
                assert time.time() < deadline, "mlflow server did not answer within 180 s"
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)


@pytest.fixture
def server(tmp_path):
    served = _Server(tmp_path, _free_port())
    yield served
    served.stop()


def test_a_server_that_is_down_is_said_at_once_in_one_line(tmp_path):
    (tmp_path / "s.yaml").write_text(STUDY.lstrip())
    uri = f"http://alice:s3cret@127.0.0.1:{_free_port()}"
    done = run_cli("run", "s.yaml", "--tracking-uri", uri, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"the MLflow tracking server at http://alice:***@127.0.0.1:{uri.rsplit(':', 1)[1]}" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    assert not (tmp_path / "results" / "served" / "trials.parquet").exists()


def test_a_uri_that_names_no_store_is_said_at_once_in_one_line(tmp_path):
    (tmp_path / "s.yaml").write_text(STUDY.lstrip())
    done = run_cli("run", "s.yaml", "--tracking-uri", "htp://127.0.0.1:5000", cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "htp://127.0.0.1:5000 names no store MLflow has (scheme 'htp'" in done.stderr
    assert not (tmp_path / "results" / "served" / "study.json").exists()


def test_a_server_that_goes_down_mid_run_loses_nothing(tmp_path, server):
    (tmp_path / "s.yaml").write_text(STUDY.lstrip())
    server.start()
    driver = start_cli("run", "s.yaml", "--tracking-uri", server.uri, cwd=tmp_path)
    seen = read_until(driver, "multimodal step 50/150")
    server.stop()
    rest, _ = driver.communicate(timeout=600)
    output = "".join(seen) + rest
    assert driver.returncode == 0, output
    assert "did not take a call" in output and "mm1ablate sync served" in output
    study_dir = tmp_path / "results" / "served"
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert sorted(trials["status"]) == ["finished", "finished"]  # Parquet first: nothing waited on MLflow
    assert (study_dir / "report.html").exists() and (study_dir / "mlflow-queue.jsonl").exists()

    down = run_cli("sync", "served", "--tracking-uri", server.uri, cwd=tmp_path, timeout=60)
    assert down.returncode == 2 and "does not answer" in down.stderr
    server.start()
    synced = run_cli("sync", "served", "--tracking-uri", server.uri, cwd=tmp_path, timeout=300)
    assert synced.returncode == 0 and "0 still queued" in synced.stdout, synced.stdout + synced.stderr
    assert not (study_dir / "mlflow-queue.jsonl").exists()

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("served")
    runs = client.search_runs([experiment.experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get("mm1ablate.role") == "trial"]
    parent = next(r for r in runs if r.data.tags.get("mm1ablate.role") == "study")
    assert sorted(r.info.status for r in trial_runs) == ["FINISHED", "FINISHED"]
    assert parent.info.status == "FINISHED"
    for run in trial_runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(5, 151, 5))
        assert "0shot/avg" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "summary.md"} <= artifacts
    assert "nothing queued" in run_cli("sync", "served", "--tracking-uri", server.uri, cwd=tmp_path).stdout


def test_calls_gathered_into_fewer_keep_each_runs_order():
    """Each run's metrics that arrive together become one call, placed before anything sent to that run after
    them: a run is never terminated before the metrics that preceded its end."""
    from ablations.tracking import _merged

    def metrics(ref, step):
        return {"op": "log_batch", "ref": ref, "metrics": [["loss", 1.0, 0, step]]}

    ops = [
        metrics("trial:a", 1),
        metrics("trial:b", 1),
        metrics("trial:a", 2),
        {"op": "terminate", "ref": "trial:a", "status": "FINISHED"},
        metrics("trial:b", 2),
        metrics("trial:a", 3),
    ]
    merged = _merged(ops)
    assert [(op["op"], op["ref"]) for op in merged] == [
        ("log_batch", "trial:a"),
        ("log_batch", "trial:b"),
        ("terminate", "trial:a"),
        ("log_batch", "trial:b"),
        ("log_batch", "trial:a"),
    ]
    assert [m[3] for m in merged[0]["metrics"]] == [1, 2] and ops[0]["metrics"] == [["loss", 1.0, 0, 1]]
    many = _merged([metrics("trial:a", step) for step in range(2500)])
    assert [len(op["metrics"]) for op in many] == [1000, 1000, 500]  # MLflow's limit per call


def test_every_metric_sent_in_the_background_reaches_its_run(tmp_path):
    """The tracker sends from a thread of its own: what the driver logged is all in MLflow, under the right run and
    step, once the study ends, and the trial's MLflow run id is there to be asked for once it has started."""
    from ablations.plan import Trial
    from ablations.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "background", "", tmp_path)
    trials = [Trial(name, "arm", {}, 0, {"train": {"lr": 0.001}}) for name in ("t1", "t2")]
    for trial in trials:
        tracker.start_trial(trial, config_hash=trial.trial_id)
        assert tracker.run_id(trial.trial_id)
    for step in range(50):
        for trial in trials:
            tracker.log_metrics(trial.trial_id, step, {"train/loss": 1.0 / (step + 1), "step_seen": step})
    for trial in trials:
        tracker.end_trial(trial.trial_id, status="finished")
    tracker.end_study(failed=False, summary={"planned": 2})
    client = MlflowClient(uri)
    for trial in trials:
        run = client.get_run(tracker.run_id(trial.trial_id))
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(50))
        assert all(m.value == 1.0 / (m.step + 1) for m in history)
    assert client.get_run(tracker.parent_id).info.status == "FINISHED"


def test_a_trial_trained_again_by_new_model_code_gets_a_run_of_its_own(tmp_path):
    """`--rerun-other-code`: the trial's run from other model code is marked superseded and a new run opens; a run
    this code trained (a retraining that was interrupted) stays the trial's and is reopened, however often the call
    is repeated."""
    from ablations.plan import Trial
    from ablations.tracking import Tracker
    from mm1core.stage_cache import code_version

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trial = Trial("t1", "arm", {}, 0, {"train": {"lr": 0.001}})
    first = Tracker(uri, "again", "", tmp_path)
    first.start_trial(trial, config_hash=trial.trial_id)
    first.end_trial(trial.trial_id, status="finished")
    first.end_study(failed=False, summary={"planned": 1})
    client = MlflowClient(uri)
    old = first.run_id(trial.trial_id)
    client.set_tag(old, "code_version", "0123456789ab")  # as an earlier mm1core would have tagged it

    def retrain() -> str:
        tracker = Tracker(uri, "again", "", tmp_path)
        tracker.supersede({trial.trial_id})
        tracker.start_trial(trial, config_hash=trial.trial_id)
        tracker.end_trial(trial.trial_id, status="failed")  # say, killed: the next run retrains it
        tracker.end_study(failed=True, summary={"planned": 1})
        return tracker.run_id(trial.trial_id)

    new = retrain()
    assert new != old
    assert client.get_run(old).data.tags["mm1ablate.role"] == "superseded"
    assert client.get_run(new).data.tags["code_version"] == code_version()
    assert retrain() == new  # its own code's run is reopened, not superseded
    roles = sorted(
        r.data.tags["mm1ablate.role"]
        for r in client.search_runs(
            [client.get_experiment_by_name("again").experiment_id], "tags.trial_id = 't1'"
        )
    )
    assert roles == ["superseded", "trial"]
