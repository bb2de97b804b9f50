"""A study's wall time on a two-node Ray cluster against one node: the nodes are network namespaces on this machine
(tests/ablations/test_multinode.py builds them), each with 1 CPU, so two nodes have the machine's two cores and one node one.

    sudo .venv/bin/python bench/two_nodes.py     # needs root for ip netns

Runs the multinode test's study (4 `tiny` trials of 400 steps, 1 CPU each) on both nodes, then with the worker
node gone, each from a fresh results folder, and prints the two wall times of `mm1ablate run`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "ablations")]  # conftest, and the test that builds the hosts

from test_multinode import STUDY, _Hosts, _run, _wait_for_nodes  # noqa: E402


def timed(hosts: _Hosts, address: str) -> float:
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "s.yaml").write_text(STUDY.lstrip())
        started = time.perf_counter()
        driver = _run(hosts, Path(root), address)
        out, _ = driver.communicate(timeout=1800)
        if driver.returncode != 0:
            raise SystemExit(out)
        return time.perf_counter() - started


def main() -> None:
    hosts = _Hosts()
    try:
        port = 6380
        address = f"{hosts.addresses['head']}:{port}"
        hosts.start_node("head", port)
        hosts.start_node("worker", port)
        _wait_for_nodes(hosts, address, 2)
        two = timed(hosts, address)
        hosts.kill_node("worker")
        time.sleep(40)  # until the head no longer counts the lost node's CPU
        one = timed(hosts, address)
    finally:
        hosts.close()
    print(f"two nodes: {two:.1f} s; one node: {one:.1f} s; {one / two:.2f}x")


if __name__ == "__main__":
    main()
