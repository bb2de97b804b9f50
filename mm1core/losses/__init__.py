"""Losses as small functions returning named terms; a training step sums the `*_loss` keys and logs every term."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mm1core.losses.aim import aim_loss
from mm1core.losses.clip import clip_loss
from mm1core.losses.lm import lm_loss

__all__ = ["LOSSES", "total_loss"]

LOSSES: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "lm": lm_loss,
    "clip": clip_loss,
    "aim": aim_loss,
}


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in terms.items() if k.endswith("_loss"))  # type: ignore[return-value]
