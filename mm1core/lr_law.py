"""The paper's learning-rate law (MM1, section 3.4): the optimal peak learning rate falls with model size.

eta(N) = exp(-0.4214 ln N - 0.5535) for a model of N parameters, fit on grids at 9M, 85M, 302M and 1.2B, with
weight decay 0.1 * eta.
"""

from __future__ import annotations

import math

__all__ = ["LR_LAW_SLOPE", "LR_LAW_INTERCEPT", "optimal_peak_lr", "law_weight_decay"]

LR_LAW_SLOPE = -0.4214
LR_LAW_INTERCEPT = -0.5535


def optimal_peak_lr(num_params: int) -> float:
    if num_params <= 0:
        raise ValueError(f"a model has a positive number of parameters, got {num_params}")
    return math.exp(LR_LAW_SLOPE * math.log(num_params) + LR_LAW_INTERCEPT)


def law_weight_decay(num_params: int) -> float:
    return 0.1 * optimal_peak_lr(num_params)
