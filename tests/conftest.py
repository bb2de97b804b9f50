from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MM1ABLATE = str(Path(sys.executable).with_name("mm1ablate"))


def tiny_model(cfg):
    """(model, tokenizer) for a config, built from a fixed seed."""
    from mm1core.data.sources import build_tokenizer
    from mm1core.mm1 import build_mm1

    tokenizer = build_tokenizer(cfg.data)
    torch.manual_seed(0)
    return build_mm1(cfg, tokenizer), tokenizer


# A user's shell, without the tracking server or Ray cluster the test process may have been pointed at.
CLI_ENV = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The real console script, in a fresh process, as a user runs it."""
    return subprocess.run(
        [MM1ABLATE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=CLI_ENV | (env or {}),
    )


def start_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """The console script started and left running, its output (stderr with stdout) read line by line by the test,
    which may stop a server, kill or interrupt it meanwhile."""
    return subprocess.Popen(
        [MM1ABLATE, *args],
        cwd=cwd,
        env=CLI_ENV | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(driver: subprocess.Popen, marker: str) -> list[str]:
    """The driver's lines up to and including the first that holds `marker`; fails if it ends first."""
    seen = []
    for line in driver.stdout:
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"the run ended before {marker!r}:\n" + "".join(seen[-30:]))


@pytest.fixture
def one_thread():
    """Torch on one thread, as a trial runs: model tests stay fast beside whatever else shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def write_study(tmp_path: Path):
    def write(text: str, name: str = "study.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write
