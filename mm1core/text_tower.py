"""A small bidirectional text transformer for contrastive encoder pre-training: tokens -> one embedding per text.

Shape suffixes: B texts, T tokens, D width.
"""

from __future__ import annotations

import torch
from torch import nn

from mm1core.blocks import Block, RMSNorm

__all__ = ["TextTower"]


class TextTower(nn.Module):
    def __init__(self, *, vocab_size: int, width: int, depth: int, max_len: int, pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.randn(1, max_len, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, num_heads=4) for _ in range(depth))
        self.norm = RMSNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, D): mean over non-padding positions."""
        x = self.embed(tokens) + self.pos_embed[:, : tokens.shape[1]]  # (B, T, D)
        for block in self.blocks:
            x = block(x, causal=False)
        x = self.norm(x)
        keep = (tokens != self.pad_id).unsqueeze(-1).float()  # (B, T, 1)
        return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
