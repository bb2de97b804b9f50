"""Decoder-only language model (RMSNorm, SwiGLU or MoE, learned or rotary positions) over input embeddings.

Shape suffixes: B batch, T sequence length, D width, V vocabulary size.
"""

from __future__ import annotations

import torch
from torch import nn

from mm1core.blocks import Block, RMSNorm, rotary_tables
from mm1core.config import LMConfig
from mm1core.moe import MoEFeedForward

__all__ = ["DecoderLM"]


class DecoderLM(nn.Module):
    def __init__(self, cfg: LMConfig, *, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.width)
        if cfg.positions == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, max_seq_len, cfg.width) * 0.02)
        elif cfg.positions != "rope":
            raise ValueError(f"position encoding {cfg.positions!r} is not supported; known: learned, rope")
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.num_heads, mlp=self._moe(cfg) if self._is_moe_layer(cfg, i) else None)
            for i in range(cfg.depth)
        )
        self.norm = RMSNorm(cfg.width)
        self.head = nn.Linear(cfg.width, vocab_size, bias=False)

    @staticmethod
    def _is_moe_layer(cfg: LMConfig, layer: int) -> bool:
        return cfg.num_experts > 0 and (layer + 1) % cfg.moe_every == 0

    @staticmethod
    def _moe(cfg: LMConfig) -> MoEFeedForward:
        return MoEFeedForward(cfg.width, num_experts=cfg.num_experts, top_k=cfg.experts_top_k)

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """The MoE layers' weighted auxiliary loss terms from the last forward pass (empty for a dense LM)."""
        layers = [b.mlp.aux for b in self.blocks if isinstance(b.mlp, MoEFeedForward) and b.mlp.aux]
        if not layers:
            return {}
        return {
            "moe_balance_loss": self.cfg.moe_balance_coef * sum(a["balance"] for a in layers) / len(layers),
            "router_z_loss": self.cfg.router_z_coef * sum(a["router_z"] for a in layers) / len(layers),
        }

    @property
    def embed_dim(self) -> int:
        return self.cfg.width

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, V) logits."""
        T = inputs_embeds.shape[1]
        rope = None
        if self.cfg.positions == "rope":
            rope = rotary_tables(T, self.cfg.width // self.cfg.num_heads, device=inputs_embeds.device)
            x = inputs_embeds
        else:
            x = inputs_embeds + self.pos_embed[:, :T]
        for block in self.blocks:
            x = block(x, causal=True, rope=rope)
        return self.head(self.norm(x))
