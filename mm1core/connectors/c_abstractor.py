"""C-Abstractor connector (Honeybee, Cha et al. 2023; used by MM1): residual convolutions on the patch grid,
adaptive average pooling to n x n, more residual convolutions, then a two-layer projection to the LM width.

Shape suffixes: B images, N patches (= G^2), G patch-grid side, n pooled side, K image tokens (= n^2),
C channels (= Dv), Dv vision width, Dl LM width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CAbstractorConnector"]


class _ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each grid cell (Honeybee's LayerNorm2d): unlike GroupNorm, it never mixes
    statistics across cells, so what a token sees stays within the convolutions' receptive field."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, G, G) -> (B, C, G, G)."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class _ResBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions (receptive field 5x5) with norm and SiLU, plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = _ChannelNorm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _ChannelNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, G, G) -> (B, C, G, G)."""
        y = F.silu(self.norm1(self.conv1(x)))  # (B, C, G, G)
        return F.silu(x + self.norm2(self.conv2(y)))  # (B, C, G, G)


class CAbstractorConnector(nn.Module):
    def __init__(self, *, vision_dim: int, grid_size: int, lm_dim: int, num_image_tokens: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.side = math.isqrt(num_image_tokens)
        if self.side * self.side != num_image_tokens:
            raise ValueError(f"c-abstractor needs a square number of image tokens, got {num_image_tokens}")
        self.num_image_tokens = num_image_tokens
        # One block per stage, not Honeybee's three: at these grid sizes more would let every token see the
        # whole image and lose the locality that sets this connector apart from attention pooling.
        self.before_pool = _ResBlock(vision_dim)
        self.after_pool = _ResBlock(vision_dim)
        self.proj = nn.Sequential(nn.Linear(vision_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, Dv) -> (B, K, Dl)."""
        B, N, Dv = patches.shape
        # Contiguous before the convolutions: a strided input broke the bf16 convolution backward.
        grid = (
            patches.transpose(1, 2).reshape(B, Dv, self.grid_size, self.grid_size).contiguous()
        )  # (B, C, G, G)
        grid = self.before_pool(grid)  # (B, C, G, G)
        pooled = F.adaptive_avg_pool2d(grid, self.side).contiguous()  # (B, C, n, n)
        pooled = self.after_pool(pooled)  # (B, C, n, n)
        return self.proj(pooled.flatten(2).transpose(1, 2).contiguous())  # (B, K, Dl)
