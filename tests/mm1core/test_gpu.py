"""Checks that need a CUDA device; skipped where there is none."""

from __future__ import annotations

import pytest
import torch

from mm1core.pipeline import run_trial
from mm1core.presets import get_preset

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_trial_trains_on_cuda(tmp_path):
    outcome = run_trial(get_preset("tiny"), device=torch.device("cuda"), cache_dir=tmp_path)
    assert 0.0 <= outcome.metrics["0shot/avg"] <= 1.0
