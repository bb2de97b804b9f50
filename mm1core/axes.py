"""The axes a study may vary, by the paper's names or by dotted config path: the vocabulary that a study file, the
planner and the reports share. Torch-free."""

from __future__ import annotations

import difflib

from mm1core.config import ConfigError, field_paths, unknown_path_message
from mm1core.presets import ENCODER_SIZES

__all__ = ["ALIASES", "SIZED_AXES", "resolve_axis"]

# The paper's names for the axes it ablates, and the config field each one sets.
ALIASES: dict[str, str] = {
    "resolution": "encoder.resolution",
    "encoder_loss": "encoder_pretrain.loss",
    "image_tokens": "connector.num_image_tokens",
    "connector": "connector.name",
    "data_ratio": "data.ratio",
}
# Axes whose values are named sizes that set several fields of one config section at once.
SIZED_AXES: dict[str, tuple[str, dict[str, dict[str, int]]]] = {"encoder_size": ("encoder", ENCODER_SIZES)}


def resolve_axis(name: str) -> str:
    """The dotted config path an axis name sets; raises ConfigError with the nearest names.

    A sized axis (SIZED_AXES) names its config section rather than one field.
    """
    if name in ALIASES:
        return ALIASES[name]
    if name in SIZED_AXES:
        return SIZED_AXES[name][0]
    if name in field_paths():
        return name
    if "." not in name:
        known = [*ALIASES, *SIZED_AXES]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            name,
            f"unknown axis {name!r}{hint} (known names: {', '.join(known)}, or a dotted "
            "config path such as connector.num_image_tokens)",
        )
    raise ConfigError(name, unknown_path_message(name))
