"""Config validation."""

from __future__ import annotations

from mm1core.config import (
    apply_overrides,
    config_from_dict,
    config_problems,
    config_to_dict,
)
from mm1core.presets import get_preset


def test_unknown_freeze_stage_is_a_config_problem():
    cfg = config_from_dict(
        apply_overrides(config_to_dict(get_preset("tiny")), {"train.freeze": "encoder-only"})
    )
    assert [p.path for p in config_problems(cfg)] == ["train.freeze"]
