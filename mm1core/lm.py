"""Decoder-only language model (RMSNorm, SwiGLU, learned positions) that also accepts input embeddings.

Shape suffixes: B batch, T sequence length, D width, V vocabulary size.
"""

from __future__ import annotations

import torch
from torch import nn

from mm1core.blocks import Block, RMSNorm
from mm1core.config import LMConfig

__all__ = ["DecoderLM"]


class DecoderLM(nn.Module):
    def __init__(self, cfg: LMConfig, *, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.randn(1, max_seq_len, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.num_heads) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width)
        self.head = nn.Linear(cfg.width, vocab_size, bias=False)

    @property
    def embed_dim(self) -> int:
        return self.cfg.width

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, V) logits."""
        x = inputs_embeds + self.pos_embed[:, : inputs_embeds.shape[1]]
        for block in self.blocks:
            x = block(x, causal=True)
        return self.head(self.norm(x))
