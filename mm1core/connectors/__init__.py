"""Vision-language connectors, one file each; `mm1core.config.CONNECTORS` registers them by the names a study uses."""

from __future__ import annotations

from torch import nn

from mm1core.config import CONNECTORS, ConnectorConfig, connector_problem

__all__ = ["build_connector"]


def build_connector(cfg: ConnectorConfig, *, vision_dim: int, grid_size: int, lm_dim: int) -> nn.Module:
    problem = connector_problem(cfg, grid_size=grid_size)
    if problem:
        raise ValueError(problem)
    return CONNECTORS.load(cfg.name)(
        vision_dim=vision_dim, grid_size=grid_size, lm_dim=lm_dim, num_image_tokens=cfg.num_image_tokens
    )
