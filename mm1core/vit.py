"""Vision transformer image encoder with a selectable stem ("patchify" or a small convolutional "conv" stem).

Shape suffixes: B images, C channels, R resolution, N patches (= (R / patch_size)^2), D width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mm1core.blocks import Block, RMSNorm
from mm1core.config import STEMS, ViTConfig

__all__ = ["ViT", "conv_stem", "patchify_stem"]


def patchify_stem(cfg: ViTConfig) -> nn.Module:
    return nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)


def conv_stem(cfg: ViTConfig) -> nn.Module:
    # A stride-2 conv pair before patchifying learns edges and strokes far faster than a bare patchify projection
    # (the feasibility run measured 3-5x on this world), which is what a minutes-long CPU trial needs.
    hidden = max(16, cfg.width // 4)
    return nn.Sequential(
        nn.Conv2d(3, hidden, kernel_size=3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(hidden, hidden, kernel_size=3, stride=1, padding=1),
        nn.GELU(),
        nn.Conv2d(hidden, cfg.width, kernel_size=cfg.patch_size // 2, stride=cfg.patch_size // 2),
    )


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.stem not in STEMS:
            raise ValueError(STEMS.unknown(cfg.stem))
        if cfg.resolution % cfg.patch_size:
            raise ValueError(f"resolution {cfg.resolution} is not divisible by patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.stem = STEMS.load(cfg.stem)(cfg)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_patches, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.num_heads) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width)

    @property
    def embed_dim(self) -> int:
        return self.cfg.width

    @property
    def num_patches(self) -> int:
        return self.cfg.num_patches

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.cfg.num_patches)

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> None:
        """Load encoder weights trained at any resolution: the position grid is resized bicubically to ours."""
        pos = state["pos_embed"]  # (1, N_old, D)
        if pos.shape != self.pos_embed.shape:
            old = math.isqrt(pos.shape[1])
            grid = pos.reshape(1, old, old, -1).permute(0, 3, 1, 2)  # (1, D, G_old, G_old)
            grid = F.interpolate(
                grid, size=(self.grid_size, self.grid_size), mode="bicubic", align_corners=False
            )
            state = {**state, "pos_embed": grid.permute(0, 2, 3, 1).reshape(1, self.num_patches, -1)}
        self.load_state_dict(state)

    def forward(self, images: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, R, R) in [0, 1] -> (B, N, D) patch features in row-major grid order.

        attn_mask (N, N) bool, True = may attend: AIM pre-training's prefix-causal mask; None: full attention.
        """
        x = self.stem(images * 2.0 - 1.0)  # (B, D, R/p, R/p)
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        for block in self.blocks:
            x = block(x, causal=False, attn_mask=attn_mask)
        return self.norm(x)
