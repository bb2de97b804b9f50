"""Decoder-only language model (RMSNorm, SwiGLU or MoE, learned or rotary positions) over input embeddings.

Shape suffixes: B batch, T sequence length, S keys (cached + T), D width, V vocabulary size.
"""

from __future__ import annotations

import torch
from torch import nn

from mm1core.blocks import Block, KVCache, RMSNorm, rotary_tables
from mm1core.config import LM_POSITIONS, LMConfig
from mm1core.moe import MoEFeedForward

__all__ = ["DecoderLM"]


class DecoderLM(nn.Module):
    def __init__(self, cfg: LMConfig, *, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.width)
        if cfg.positions == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, max_seq_len, cfg.width) * 0.02)
        elif cfg.positions not in LM_POSITIONS:
            raise ValueError(LM_POSITIONS.unknown(cfg.positions))
        self.blocks = nn.ModuleList(
            Block(
                cfg.width,
                cfg.num_heads,
                mlp=self._moe(cfg) if self._is_moe_layer(cfg, i) else None,
                conv_width=cfg.qkv_conv_width,
            )
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

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """(B, T, D) -> (B, T, V) logits.

        For generation: attention_mask (B, S) bool, False = padding, over the cached positions and these T;
        position_ids (B, T), by default counted from each row's first real token; cache: one per block, extended in
        place. With none of them: a plain causal pass over positions 0..T-1 (training).
        """
        B, T, _ = inputs_embeds.shape
        mask = None
        token_mask = None if attention_mask is None else attention_mask[:, -T:]  # (B, T)
        if attention_mask is not None or position_ids is not None or cache is not None:
            past = cache[0].length if cache else 0
            if attention_mask is None:
                attention_mask = torch.ones(B, past + T, dtype=torch.bool, device=inputs_embeds.device)
            if position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            mask = _causal_padding_mask(attention_mask, T)  # (B, 1, T, S)
        rope = None
        if self.cfg.positions == "rope":
            table_len = T if position_ids is None else int(position_ids.max()) + 1
            rope = rotary_tables(table_len, self.cfg.width // self.cfg.num_heads, device=inputs_embeds.device)
            if position_ids is not None:
                cos, sin = rope
                rope = (cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1))  # (B, 1, T, Dh)
            x = inputs_embeds
        elif position_ids is None:
            x = inputs_embeds + self.pos_embed[:, :T]
        else:
            x = inputs_embeds + self.pos_embed[0, position_ids]  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                causal=True,
                rope=rope,
                attn_mask=mask,
                cache=None if cache is None else cache[i],
                token_mask=token_mask,
            )
        return self.head(self.norm(x))


def _causal_padding_mask(attention_mask: torch.Tensor, T: int) -> torch.Tensor:
    """attention_mask (B, S) -> (B, 1, T, S) bool: the last T positions each see the real keys up to themselves."""
    S = attention_mask.shape[1]
    query = torch.arange(S - T, S, device=attention_mask.device)[:, None]  # (T, 1)
    key = torch.arange(S, device=attention_mask.device)  # (S,)
    # A padding query also sees itself: a row with no allowed key would turn softmax into NaNs.
    return (attention_mask[:, None, None, :] & (key <= query)) | (key == query)
