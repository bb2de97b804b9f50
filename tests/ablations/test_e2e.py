"""End to end through the real CLI, a real local Ray runtime and a real MLflow SQLite store.

One tiny study (2 resolutions x 2 learning rates, the huge one diverging at run time) runs once per module; the
tests read what it left: MLflow runs, Parquet tables, the report, a re-run that skips finished work, and the UI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import MM1ABLATE, run_cli
from mlflow.tracking import MlflowClient

from ablations.leftovers import descendants
from mm1core import schema
from mm1core.stage_cache import code_version

pytestmark = pytest.mark.slow

STUDY = """
name: tiny-e2e
description: "tiny <script>window.pwned = 1</script> study"
reference:
  preset: tiny
  overrides:
    encoder_pretrain.loss: clip
axes:
  - name: resolution
    values: [16, 32]
  - name: train.lr
    values: [0.003, 100.0]
design: grid
seeds: [0]
resources: {cpu: 1, gpu: 0.5}
budget:
  encoder: {steps: 10}
  multimodal: {steps: 20}
"""
GOOD_ARMS = {"resolution=16,train.lr=0.003", "resolution=32,train.lr=0.003"}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    (root / "tiny.yaml").write_text(STUDY.lstrip())
    # Ray's own folder for this run, where its logs say which processes it started (outside tmp_path, whose long
    # name would not fit the Unix sockets Ray makes there); root/ray-tmp points to it.
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    (root / "ray-tmp").symlink_to(ray_tmp)
    done = run_cli("run", "tiny.yaml", cwd=root, env={"RAY_TMPDIR": str(ray_tmp)})
    yield root, done
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'results' / 'mlflow.db'}")


def test_run_reports_progress_and_failures(finished_study):
    root, done = finished_study
    assert done.returncode == 0, done.stdout + done.stderr  # a diverged trial is an outcome, not a failure
    assert "4 trials planned, 0 already finished, 4 to run" in done.stdout
    assert (
        "encoder step 10/10" in done.stdout and "multimodal step 20/20" in done.stdout
    )  # per-trial progress
    assert "2 finished, 0 failed, 2 diverged" in done.stdout
    assert "the Ray cluster has no GPU: running the trials on CPU" in done.stdout
    assert "DIVERGED" in done.stdout and "non-finite gradient norm" in done.stdout


def test_the_embedded_ray_starts_no_helper_a_study_does_not_use(finished_study):
    """No autoscaler monitor (an embedded Ray has nothing to scale), no log monitor (the driver takes no worker
    output) and no API server (a study talks to none of its modules): three Python processes fewer at every study's
    start, two seconds less of ray.init and one of its end (bench/README.md)."""
    root, _ = finished_study
    (logs,) = (root / "ray-tmp").glob("ray/session_2*/logs")
    started = {p.name for p in logs.iterdir()}
    assert {"gcs_server.out", "raylet.out"} <= started  # the folder of the study's Ray, which did start
    helpers = {"monitor", "log_monitor", "dashboard"}  # "dashboard" is the API server's log, not its agent's
    assert not started & {f"{helper}.{ext}" for helper in helpers for ext in ("out", "err", "log")}


def test_mlflow_holds_parent_and_child_runs(finished_study):
    root, _ = finished_study
    client = _client(root)
    experiment = client.get_experiment_by_name("tiny-e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mm1ablate.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mm1ablate.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"report.html", "summary.md", "arms.csv"} <= artifacts
    # Per-arm aggregates on the parent run: the MLflow UI shows them beside the study.
    aggregates = parents[0].data.metrics
    for arm in GOOD_ARMS:
        key = "arm/" + re.sub(r"[^A-Za-z0-9_\-. /]", "_", arm) + "/0shot/avg mean"
        assert key in aggregates and aggregates[key] >= 0
    # The floors are the evaluation's levels, not the arms' results: they stay on the trials' runs.
    assert not [key for key in aggregates if "/floor/" in key]
    for child in children:
        tags = child.data.tags
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"trial_id", "arm", "seed", "study", "git_commit", "config_hash"} <= set(tags)
        assert child.data.params["encoder.resolution"] in ("16", "32")
        assert child.data.params["train.steps"] == "20"
        artifacts = [a.path for a in client.list_artifacts(child.info.run_id)]
        assert "config.json" in artifacts
        if tags["arm"] in GOOD_ARMS:
            assert child.info.status == "FINISHED"
            assert "0shot/avg" in child.data.metrics
            history = client.get_metric_history(child.info.run_id, "train/loss")
            assert [m.step for m in history] == [5, 10, 15, 20]
        else:
            assert child.info.status == "FAILED" and tags["diverged"] == "true"
            assert "non-finite gradient norm" in tags["error"]


def test_parquet_tables(finished_study):
    root, _ = finished_study
    trials = pd.read_parquet(root / "results" / "tiny-e2e" / "trials.parquet")
    assert len(trials) == 4
    assert set(trials.loc[trials.status == "finished", "arm"]) == GOOD_ARMS
    diverged = trials[trials.status == "diverged"]
    assert len(diverged) == 2 and diverged["error"].str.contains("non-finite gradient norm").all()
    assert (diverged["stopped_at_step"] > 0).all()
    assert {"resolution", "train.lr", "seed", "trial_id", "wall_time_s", "0shot/avg"} <= set(trials.columns)
    # The tables are what dashboards.schema declares: every column is bookkeeping, a metric, a fingerprint, or an
    # axis, and the axes are exactly the study's.
    assert schema.axis_columns(trials.columns) == ["resolution", "train.lr"]
    assert set(trials["status"]) <= set(schema.STATUSES)
    finished = trials[trials.status == "finished"]
    assert (finished["0shot/avg"] >= 0).all() and (finished["wall_time_s"] > 0).all()
    curves = pd.read_parquet(root / "results" / "tiny-e2e" / "curves.parquet")
    assert set(curves["trial_id"]) >= set(finished["trial_id"])
    assert set(curves.columns) == set(schema.CURVE_COLUMNS)
    items = pd.read_parquet(root / "results" / "tiny-e2e" / "items.parquet")
    assert len(items) > 0 and set(items["trial_id"]) == set(finished["trial_id"])
    assert set(items.columns) == set(schema.ITEM_COLUMNS)


def test_status_lists_the_trials(finished_study):
    root, _ = finished_study
    done = run_cli("status", "tiny-e2e", cwd=root, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "finished    2" in done.stdout and "diverged    2" in done.stdout
    assert run_cli("status", "no-such-study", cwd=root, timeout=120).returncode == 2


def test_shared_encoders_are_built_once(finished_study):
    root, _ = finished_study
    # Two resolutions -> two encoders; the learning-rate arms of a resolution share its encoder.
    assert len(list((root / "results" / "cache").glob("encoder-clip-*.pt"))) == 2
    curves = pd.read_parquet(root / "results" / "tiny-e2e" / "curves.parquet")
    builders = curves.loc[curves["metric"] == "encoder/contrastive_loss", "trial_id"].unique()
    assert len(builders) == 2
    trials = pd.read_parquet(root / "results" / "tiny-e2e" / "trials.parquet")
    builder_resolutions = trials.set_index("trial_id").loc[builders, "resolution"]
    assert sorted(builder_resolutions) == [16, 32]


def test_report_is_self_contained_and_escapes_the_study(finished_study):
    root, _ = finished_study
    done = run_cli("report", "tiny-e2e", cwd=root, timeout=180)
    assert done.returncode == 0, done.stderr
    page = (root / "results" / "tiny-e2e" / "report.html").read_text()
    for arm in GOOD_ARMS:
        assert arm in page
    assert "avg vs resolution" in page  # plotly escapes the "/" inside its JSON
    assert page.count('class="plotly-graph-div"') >= 2
    assert "<script>window.pwned" not in page and "&lt;script&gt;" in page
    assert "Diverged: 2 trials" in page and "non-finite gradient norm" in page
    assert "<script src=" not in page and "<link " not in page  # nothing to fetch: plotly.js is inline
    assert "Plotly.newPlot" in page and len(page) > 3_000_000


def test_rerun_skips_finished_trials(finished_study):
    root, _ = finished_study
    trials_before = pd.read_parquet(root / "results" / "tiny-e2e" / "trials.parquet")
    done = run_cli("run", "tiny.yaml", cwd=root)
    # Diverged trials are an outcome too: left alone unless asked.
    assert "4 trials planned, 2 already finished, 2 diverged (left as they are), 0 to run" in done.stdout
    plan = run_cli("plan", "tiny.yaml", cwd=root, timeout=120)
    assert plan.stdout.count("diverged") >= 2 and "4 finished, 0 to run" in plan.stdout
    done = run_cli("run", "tiny.yaml", "--rerun-diverged", cwd=root)
    assert "4 trials planned, 2 already finished, 2 to run" in done.stdout, done.stdout
    assert "2 diverged" in done.stdout
    client = _client(root)
    runs = client.search_runs([client.get_experiment_by_name("tiny-e2e").experiment_id])
    assert sum(r.data.tags.get("mm1ablate.role") == "trial" for r in runs) == 4  # reopened, not added
    trials_after = pd.read_parquet(root / "results" / "tiny-e2e" / "trials.parquet")
    keep = trials_before.status == "finished"
    pd.testing.assert_frame_equal(
        trials_before[keep].set_index("trial_id").sort_index(),
        trials_after[trials_after.status == "finished"].set_index("trial_id").sort_index(),
    )
    assert "pre-trained encoders: 0 to build" in plan.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # ended since it was listed
        return b""


def _start_ui(root: Path, port: int, *study: str) -> subprocess.Popen:
    return subprocess.Popen(
        [MM1ABLATE, "ui", *study, "--port", str(port)],
        cwd=root,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_ui_serves_the_study(finished_study):
    root, _ = finished_study
    port = _free_port()
    ui = _start_ui(root, port)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.time() + 120
        while True:
            try:
                experiment = _get(f"{base}/experiments/get-by-name?experiment_name=tiny-e2e")["experiment"]
                break
            except OSError:
                assert ui.poll() is None, ui.stdout.read()
                assert time.time() < deadline, "the MLflow UI did not answer within 120 s"
                time.sleep(1)
        runs = _post(
            f"{base}/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100}
        )["runs"]
        roles = [next(t["value"] for t in r["data"]["tags"] if t["key"] == "mm1ablate.role") for r in runs]
        assert roles.count("study") >= 1 and roles.count("trial") >= 4
        # Without MLflow's GenAI job runner: it would be seven more processes importing MLflow beside the UI.
        started = [_cmdline(pid) for pid in descendants(ui.pid)]
        assert started and not [c for c in started if b"huey" in c or b"_job_runner" in c], started
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def test_ui_prints_the_study_runs_table_and_a_browser_lands_on_its_runs(finished_study):
    """MLflow 3 opens an experiment on an empty GenAI overview; `mm1ablate ui` prints the runs table's address, and
    that page, in headless Chromium, shows the study's parent run and its trials. The report links its own run."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Debian's chromium")
    from playwright.sync_api import sync_playwright

    root, _ = finished_study
    client = _client(root)
    experiment = client.get_experiment_by_name("tiny-e2e")
    parent = next(
        r
        for r in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
        if r.data.tags.get("mm1ablate.role") == "study"
    )
    report = (root / "results" / "tiny-e2e" / "report.html").read_text()
    assert f"#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}" in report

    port = _free_port()
    ui = _start_ui(root, port, "tiny-e2e")
    try:
        printed = [ui.stdout.readline(), ui.stdout.readline()]
        address = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs"
        assert f"tiny-e2e: {address}" in "".join(printed), printed
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert ui.poll() is None and time.time() < deadline, "the MLflow UI did not come up"
                time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(address)
            name = page.get_by_text(parent.info.run_name).first
            name.wait_for(timeout=60_000)
            # The trials are nested under the study's run: its row's expander shows them.
            name.locator("xpath=ancestor::*[@role='presentation'][1]").locator("button").first.click()
            nested = [
                r.info.run_name
                for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
            ]
            assert nested
            for run_name in nested:
                page.get_by_text(run_name).first.wait_for(timeout=60_000)
            browser.close()
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


BUSY = """
name: busy
reference:
  preset: tiny
  overrides:
    train.steps: 20
axes:
  - name: train.lr
    values: [0.003]
seeds: [0]
resources: {cpu: 1}
"""


def test_a_second_runner_is_refused_and_trials_of_other_model_code_count_unless_rerun(tmp_path):
    # One short trial: the study is held from its first instant to its last, Ray's start alone takes seconds.
    (tmp_path / "tiny.yaml").write_text(BUSY.lstrip())
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    first = subprocess.Popen(
        [MM1ABLATE, "run", "tiny.yaml"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        lock = tmp_path / "results" / "busy" / ".run.lock"
        deadline = time.time() + 60
        while not (lock.exists() and lock.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        second = run_cli("run", "tiny.yaml", cwd=tmp_path, timeout=60)
        assert second.returncode == 2
        assert (
            "study 'busy' is already running (pid" in second.stderr
            and "mm1ablate status busy" in second.stderr
        )
    finally:
        first.communicate(timeout=600)
    # Once the first has ended, the study is free again.
    assert (
        "1 trials planned, 1 already finished, 0 to run" in run_cli("run", "tiny.yaml", cwd=tmp_path).stdout
    )
    study_dir = tmp_path / "results" / "busy"
    # A run finished on another kind of CPU counts as it is; a run that trains here beside it says the study now
    # holds runs of two machines.
    tables = (study_dir / "trials.parquet", *study_dir.glob("parts/*.trial.parquet"))
    [here] = pd.read_parquet(study_dir / "trials.parquet")["cpu_model"]
    for table in tables:
        pd.read_parquet(table).assign(cpu_model="Another CPU").to_parquet(table)
    assert (
        "1 already finished (1 of them on another CPU, Another CPU: the same trial gives another run there, so "
        "the report names the comparisons that pair runs of two machines), 0 to run"
        in run_cli("run", "tiny.yaml", cwd=tmp_path).stdout
    )
    for table in tables:
        pd.read_parquet(table).assign(cpu_model=here).to_parquet(table)
    # A run trained by an older mm1core (its recorded code_version) still counts as finished, and the run says so.
    for table in tables:
        pd.read_parquet(table).assign(code_version="0123456789ab").to_parquet(table)
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("busy").experiment_id
    [trained] = client.search_runs([experiment], "tags.`mm1ablate.role` = 'trial'")
    assert trained.data.tags["code_version"] == code_version()
    client.set_tag(trained.info.run_id, "code_version", "0123456789ab")
    again = run_cli("run", "tiny.yaml", cwd=tmp_path)
    assert (
        "1 trials planned, 1 already finished (1 of them by other model code, mm1core 0123456789ab: they count as "
        "they are; `--rerun-other-code` trains them again), 0 to run" in again.stdout
    ), again.stdout
    # Asked to, it trains the trial again with this code: the old record kept aside, its MLflow run superseded.
    [trial_id] = pd.read_parquet(study_dir / "trials.parquet")["trial_id"]
    rerun = run_cli("run", "tiny.yaml", "--rerun-other-code", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (
        "1 trials planned, 0 already finished, 1 set aside as trained by other model code (mm1core 0123456789ab), "
        "1 to run" in rerun.stdout
    ), rerun.stdout
    retrained = pd.read_parquet(study_dir / "trials.parquet")
    assert list(retrained["status"]) == ["finished"] and list(retrained["code_version"]) == [code_version()]
    [kept] = (study_dir / "parts" / "other-code").glob(f"{trial_id}.trial.parquet")
    assert list(pd.read_parquet(kept)["code_version"]) == ["0123456789ab"]
    runs = client.search_runs([experiment], f"tags.trial_id = '{trial_id}'")
    roles = sorted(r.data.tags["mm1ablate.role"] for r in runs)
    assert roles == ["superseded", "trial"], roles
    [old] = [r for r in runs if r.data.tags["mm1ablate.role"] == "superseded"]
    assert (
        old.info.run_id == trained.info.run_id
        and "trained by other model code" in old.data.tags["mm1ablate.superseded_because"]
    )
    [new] = [r for r in runs if r.data.tags["mm1ablate.role"] == "trial"]
    assert new.info.run_id == retrained["mlflow_run_id"].iloc[0] and new.info.status == "FINISHED"
    # Trained from its first step, not resumed from the old code's final checkpoint.
    assert "resume from their checkpoints" not in rerun.stdout, rerun.stdout
    steps = [m.step for m in client.get_metric_history(new.info.run_id, "train/loss")]
    assert steps and min(steps) < 20 and len(steps) == len(set(steps)), steps


def test_credentials_in_a_tracking_uri_are_never_shown():
    from ablations.tracking import redacted

    assert redacted("http://bob:s3cret@127.0.0.1:5000") == "http://bob:***@127.0.0.1:5000"
    assert redacted("https://h/x?token=abc&run=1") == "https://h/x?token=***&run=1"
    assert redacted("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_clean_lists_then_removes_what_nothing_needs(finished_study):
    """Last in this module: it removes the finished study's checkpoints."""
    root, _ = finished_study
    checkpoints = root / "results" / "tiny-e2e" / "checkpoints"
    kept = sorted(p.name for p in checkpoints.iterdir())
    assert any(name.endswith(".pt") for name in kept)
    stale = root / "results" / "cache" / "encoder-clip-0123456789abcdef.pt"
    stale.write_bytes(b"an encoder of code that no longer exists")
    dry = run_cli("clean", cwd=root, timeout=120)
    assert dry.returncode == 0 and "a dry run" in dry.stdout
    assert "checkpoint of a finished trial" in dry.stdout and "checkpoint of a diverged trial" in dry.stdout
    assert "encoder-clip-0123456789abcdef.pt  (an encoder no study plans with the current code)" in dry.stdout
    assert (
        sorted(p.name for p in checkpoints.iterdir()) == kept and stale.exists()
    )  # a dry run removes nothing
    used = [p for p in (root / "results" / "cache").glob("encoder-*.pt") if p != stale]
    assert used and all(str(p) not in dry.stdout for p in used)  # the study's own encoders stay

    done = run_cli("clean", "--yes", cwd=root, timeout=120)
    assert done.returncode == 0 and "removed" in done.stdout
    assert not any(p.name.endswith(".pt") for p in checkpoints.iterdir()) and not stale.exists()
    assert all(p.exists() for p in used)
    again = run_cli("run", "tiny.yaml", cwd=root)
    assert "0 to run" in again.stdout, again.stdout
    assert "nothing to clean" in run_cli("clean", cwd=root, timeout=120).stdout
