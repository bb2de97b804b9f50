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


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The real console script, in a fresh process, as a user runs it."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    full_env |= env or {}
    return subprocess.run(
        [MM1ABLATE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


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
