"""Vision-language connectors, one file each, in a registry keyed by the names a study uses."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mm1core.config import ConnectorConfig, connector_problem
from mm1core.connectors.attn_pool import AttnPoolConnector
from mm1core.connectors.avg_pool import AvgPoolConnector
from mm1core.connectors.c_abstractor import CAbstractorConnector

__all__ = ["CONNECTORS", "build_connector"]

CONNECTORS: dict[str, Callable[..., nn.Module]] = {
    "attn-pool": AttnPoolConnector,
    "avg-pool": AvgPoolConnector,
    "c-abstractor": CAbstractorConnector,
}


def build_connector(cfg: ConnectorConfig, *, vision_dim: int, grid_size: int, lm_dim: int) -> nn.Module:
    problem = connector_problem(cfg, grid_size=grid_size)
    if problem:
        raise ValueError(problem)
    return CONNECTORS[cfg.name](
        vision_dim=vision_dim, grid_size=grid_size, lm_dim=lm_dim, num_image_tokens=cfg.num_image_tokens
    )
