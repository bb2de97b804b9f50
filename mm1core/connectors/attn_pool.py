"""Attention-pooling connector (MM1's "attention pooling", a one-layer Flamingo-style resampler): K learned queries
cross-attend to the patches, then a residual MLP. Its variant `attn-pool-local` starts each query looking at its
own cell of the image.

Shape suffixes: B images, N patches, K image tokens (= learned queries), H heads, Dh head width (Dl / H),
Dv vision width, Dl LM width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mm1core.blocks import RMSNorm

__all__ = ["AttnPoolConnector", "LocalAttnPoolConnector"]


class AttnPoolConnector(nn.Module):
    def __init__(self, *, vision_dim: int, grid_size: int, lm_dim: int, num_image_tokens: int) -> None:
        super().__init__()
        # grid_size is unused: queries attend to a set of patches, so the grid's layout never enters.
        self.num_image_tokens = num_image_tokens
        self.num_heads = next(h for h in (8, 4, 2, 1) if lm_dim % h == 0)
        # Small queries make the first steps' attention near uniform, i.e. start as a global average pool.
        self.queries = nn.Parameter(0.02 * torch.randn(num_image_tokens, lm_dim))
        # Keys and values come straight from the vision width; the encoder's output is already normalised.
        self.kv = nn.Linear(vision_dim, 2 * lm_dim)
        self.out = nn.Linear(lm_dim, lm_dim)
        self.mlp_norm = RMSNorm(lm_dim)
        self.mlp = nn.Sequential(nn.Linear(lm_dim, 4 * lm_dim), nn.GELU(), nn.Linear(4 * lm_dim, lm_dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, Dv) -> (B, K, Dl)."""
        B, N, _ = patches.shape
        K, Dl = self.queries.shape
        H = self.num_heads
        Dh = Dl // H
        k, v = self.kv(patches).view(B, N, 2, H, Dh).permute(2, 0, 3, 1, 4)  # (B, H, N, Dh)
        # A learned query needs no projection of its own: the projection would fold into the parameter.
        q = self.queries.to(k.dtype).view(K, H, Dh).transpose(0, 1).expand(B, H, K, Dh)  # (B, H, K, Dh)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self.attention_bias(k.dtype)
        )  # (B, H, K, Dh)
        x = self.queries + self.out(attended.transpose(1, 2).reshape(B, K, Dl))  # (B, K, Dl)
        return x + self.mlp(self.mlp_norm(x))  # (B, K, Dl)

    def attention_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """Added to the queries' attention logits, (H, K, N); None: attention by content alone."""
        return None


class LocalAttnPoolConnector(AttnPoolConnector):
    """Attention pooling whose queries start local: the K queries stand on a sqrt(K) x sqrt(K) grid of cells over
    the patches, and query k's logit for patch n is lowered by strength_h * d(k, n)^2 / (2 sigma^2), d the distance
    from the cell's centre to the patch in patches, sigma half a cell's side. So at the first step each query is a
    soft average pool of its own cell (16 cells of 2x2 patches: 0.50-0.68 of its attention on its cell, against 1/16
    for `attn-pool`); each head learns how much locality to keep (strength starts at 1 and may fall towards content
    alone). What it tests: `attn-pool`'s queries start as 16 copies of a global average and stay so in this world,
    where every question names a place (docs/studies/long-connector.md); if the missing layout is why attention
    pooling trails average pooling there, this variant closes the gap.
    """

    def __init__(self, *, vision_dim: int, grid_size: int, lm_dim: int, num_image_tokens: int) -> None:
        super().__init__(
            vision_dim=vision_dim, grid_size=grid_size, lm_dim=lm_dim, num_image_tokens=num_image_tokens
        )
        side = math.isqrt(num_image_tokens)
        cell = grid_size / side  # a cell's side, in patches
        centres = (torch.arange(side) + 0.5) * cell - 0.5  # patch coordinates of the cells' centres
        offsets = (centres[:, None] - torch.arange(grid_size)[None, :]).square()  # (side, G)
        # (side, side, G, G): a query's row and column of cells, a patch's row and column
        squared = offsets[:, None, :, None] + offsets[None, :, None, :]
        sigma = cell / 2
        # d^2 / (2 sigma^2), (K, N): a function of the shapes, so not saved with the weights
        self.register_buffer(
            "distance", squared.reshape(num_image_tokens, grid_size**2) / (2 * sigma**2), persistent=False
        )
        # One number per head, and 1-D: the optimizer's weight decay (2-D parameters only) must not pull the
        # locality towards nothing; only the loss decides how much of it stays.
        self.log_strength = nn.Parameter(torch.zeros(self.num_heads))

    def attention_bias(self, dtype: torch.dtype) -> torch.Tensor:
        return (-self.log_strength.exp()[:, None, None] * self.distance).to(dtype)  # (H, K, N)
