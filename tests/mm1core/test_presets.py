"""Every preset is a valid config; the CPU presets build and run a batch."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import tiny_model

from mm1core.config import (
    config_from_dict,
    config_problems,
    config_to_dict,
)
from mm1core.data.shards import trial_batch
from mm1core.presets import PRESETS, get_preset


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_valid(preset):
    cfg = get_preset(preset)
    assert config_problems(cfg) == []
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("preset", ["tiny", "small"])  # base and paper-1.2b are GPU sizes
def test_cpu_presets_build_and_run_a_batch(preset):
    cfg = get_preset(preset)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    model, tokenizer = tiny_model(cfg)
    batch = trial_batch(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=2)), tokenizer, 0
    )
    logits = model(batch.tokens, batch.images)
    assert logits.shape == (*batch.tokens.shape, tokenizer.vocab_size)
