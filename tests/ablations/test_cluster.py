"""`mm1ablate run --address` joins a Ray cluster that is already running instead of starting its own."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli

from mm1core.hardware import cpu_model_name

pytestmark = pytest.mark.slow

STUDY = """
name: joined
reference:
  preset: tiny
axes:
  - name: resolution
    values: [32]
seeds: [0]
resources: {cpu: 3}
"""


# `ray start` clusters authenticate clients with a token. The test's cluster gets one of its own, passed to the head
# and to the client alike, so it neither needs nor touches the user's ~/.ray/auth_token.
_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_joins_a_running_cluster(tmp_path: Path):
    # The head claims 3 CPUs on this 2-core machine: a trial asking for 3 can only be placed on this cluster, and the
    # banner's CPU count says which cluster the run joined.
    port = _free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=3",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **_AUTH},
    )
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 90
        status = [ray, "status", f"--address={address}"]
        while subprocess.run(status, capture_output=True, env={**os.environ, **_AUTH}).returncode != 0:
            assert head.poll() is None, head.stdout.read()
            assert time.time() < deadline, "the Ray head did not come up within 90 s"
            time.sleep(2)
        (tmp_path / "joined.yaml").write_text(STUDY.lstrip())
        done = run_cli("run", "joined.yaml", "--address", address, cwd=tmp_path, timeout=300, env=_AUTH)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"joined the Ray cluster at {address}: 3 CPUs" in done.stdout
        trials = pd.read_parquet(tmp_path / "results" / "joined" / "trials.parquet")
        assert list(trials["status"]) == ["finished"]
        assert trials["device"].iloc[0] == "cpu x3 threads"
        assert trials["cpu_model"].iloc[0] == cpu_model_name()  # what its stage times are rates of, for plans
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
