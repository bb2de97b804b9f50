"""Average-pooling connector: n x n average pooling of the patch grid, then a two-layer projection to the LM width.

Shape suffixes: B images, N patches, G patch-grid side, K image tokens (= n^2), Dv vision width, Dl LM width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AvgPoolConnector"]


class AvgPoolConnector(nn.Module):
    def __init__(self, *, vision_dim: int, grid_size: int, lm_dim: int, num_image_tokens: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.side = math.isqrt(num_image_tokens)
        self.num_image_tokens = num_image_tokens
        self.proj = nn.Sequential(nn.Linear(vision_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, Dv) -> (B, K, Dl)."""
        B, N, Dv = patches.shape
        grid = patches.transpose(1, 2).reshape(B, Dv, self.grid_size, self.grid_size)  # (B, Dv, G, G)
        pooled = F.adaptive_avg_pool2d(grid, self.side)  # (B, Dv, n, n)
        return self.proj(pooled.flatten(2).transpose(1, 2).contiguous())  # (B, K, Dl)
