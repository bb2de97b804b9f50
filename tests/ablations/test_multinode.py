"""A real two-node Ray cluster on one machine: each node in a network namespace of its own (ip netns), joined by a
veth pair, so that the nodes talk over a network as two hosts do. The study's trials land on both nodes, results and
checkpoints sit on storage both reach, and the worker node killed in the middle of a trial costs nothing: Tune
retries that trial on the head from its checkpoint.

Needs root (to make namespaces) and iproute2; skipped where they are missing. Every address is in a private subnet
that exists only inside the namespaces the test makes, and removes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import MM1ABLATE


def _can_make_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"mmprobe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not _can_make_namespaces(), reason="network namespaces need root, iproute2 and CAP_SYS_ADMIN"
    ),
]

STUDY = """
name: two-nodes
reference:
  preset: tiny
  overrides:
    train.steps: 400
    train.eval_every: 0
    train.checkpoint_every: 50
axes:
  - name: train.lr
    values: [0.001, 0.0015, 0.002, 0.0025]
seeds: [0]
resources: {cpu: 1}
"""
RAY = str(Path(sys.executable).with_name("ray"))
_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class _Hosts:
    """Two namespaces, `head` at 10.231.<n>.1 and `worker` at 10.231.<n>.2, linked by a veth pair."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        subnet = int(tag, 16) % 200 + 20
        self.names = {"head": f"mmh-{tag}", "worker": f"mmw-{tag}"}
        self.addresses = {"head": f"10.231.{subnet}.1", "worker": f"10.231.{subnet}.2"}
        self.nodes: dict[str, subprocess.Popen] = {}
        self.temp = {role: Path(f"/tmp/rn-{role[0]}-{tag}") for role in self.names}
        for name in self.names.values():
            _ip("netns", "add", name)
        _ip("link", "add", f"vh-{tag}", "type", "veth", "peer", "name", f"vw-{tag}")
        for role, link in (("head", f"vh-{tag}"), ("worker", f"vw-{tag}")):
            ns = self.names[role]
            _ip("link", "set", link, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.addresses[role]}/24", "dev", link)
            _ip("-n", ns, "link", "set", link, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def run_in(self, role: str, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.names[role], *command]

    def start_node(self, role: str, port: int) -> None:
        common = [f"--node-ip-address={self.addresses[role]}", "--num-cpus=1", "--num-gpus=0", "--block"]
        common += ["--disable-usage-stats", f"--temp-dir={self.temp[role]}"]
        if role == "head":
            command = [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common]
        else:
            command = [RAY, "start", f"--address={self.addresses['head']}:{port}", *common]
        self.nodes[role] = subprocess.Popen(
            self.run_in(role, command),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **_AUTH},
        )

    def kill_node(self, role: str) -> None:
        node = self.nodes.pop(role)
        os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=30)
        # What the node's raylet started lives in the node's namespace: end it as a lost host's would end.
        pids = subprocess.run(
            ["ip", "netns", "pids", self.names[role]], capture_output=True, text=True
        ).stdout
        for pid in pids.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for role in list(self.nodes):
            self.kill_node(role)
        for role, name in self.names.items():
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
            for pid in pids.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            shutil.rmtree(self.temp[role], ignore_errors=True)


@pytest.fixture
def hosts():
    made = _Hosts()
    yield made
    made.close()


def _wait_for_nodes(hosts: _Hosts, address: str, count: int) -> None:
    deadline = time.time() + 180
    while True:
        status = subprocess.run(
            hosts.run_in("head", [RAY, "status", f"--address={address}"]),
            capture_output=True,
            text=True,
            env={**os.environ, **_AUTH},
        )
        if status.returncode == 0 and status.stdout.count("node_") >= count:
            return
        assert time.time() < deadline, (
            f"the cluster did not show {count} nodes within 180 s:\n{status.stdout}"
        )
        time.sleep(2)


def _run(hosts: _Hosts, root: Path, address: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")} | _AUTH
    return subprocess.Popen(
        hosts.run_in("head", [MM1ABLATE, "run", "s.yaml", "--address", address]),
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_study_runs_on_two_nodes_and_survives_losing_one(tmp_path, hosts):
    port = 6380
    address = f"{hosts.addresses['head']}:{port}"
    hosts.start_node("head", port)
    hosts.start_node("worker", port)
    _wait_for_nodes(hosts, address, 2)
    (tmp_path / "s.yaml").write_text(STUDY.lstrip())

    started = time.time()
    driver = _run(hosts, tmp_path, address)
    seen = []
    killed_at = None
    for line in driver.stdout:
        seen.append(line)
        # Once two trials have finished (one on each node), lose the worker node in the middle of the next pair.
        if killed_at is None and "2/4 done, 2 running" in line and "multimodal step 150/400" in line:
            hosts.kill_node("worker")
            killed_at = time.time() - started
    driver.wait(timeout=900)
    output = "".join(seen)
    assert driver.returncode == 0, output
    assert f"joined the Ray cluster at {address}: 2 CPUs" in output
    assert killed_at is not None, output

    trials = pd.read_parquet(tmp_path / "results" / "two-nodes" / "trials.parquet")
    assert sorted(trials["status"]) == ["finished"] * 4
    first_two = trials.sort_values("finished_at").head(2)
    assert set(first_two["node"]) == set(hosts.addresses.values())  # the trials ran on both nodes
    assert set(trials.sort_values("finished_at").tail(2)["node"]) == {
        hosts.addresses["head"]
    }  # retried there
    wall = time.time() - started
    print(f"two nodes: {wall:.0f} s for 4 trials, the worker lost at {killed_at:.0f} s")
