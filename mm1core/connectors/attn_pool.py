"""Attention-pooling connector (MM1's "attention pooling", a one-layer Flamingo-style resampler): K learned queries
cross-attend to the patches, then a residual MLP.

Shape suffixes: B images, N patches, K image tokens (= learned queries), H heads, Dh head width (Dl / H),
Dv vision width, Dl LM width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mm1core.blocks import RMSNorm

__all__ = ["AttnPoolConnector"]


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
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, H, K, Dh)
        x = self.queries + self.out(attended.transpose(1, 2).reshape(B, K, Dl))  # (B, K, Dl)
        return x + self.mlp(self.mlp_norm(x))  # (B, K, Dl)
