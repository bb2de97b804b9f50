"""Mixture-of-experts feed-forward (the MM1 MoE variants): top-k routing over SwiGLU experts, with the
load-balancing loss of Switch Transformer and the router z-loss of ST-MoE.

Shape suffixes: B batch, T sequence length, S tokens (B * T), D width, E experts, K experts per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mm1core.blocks import SwiGLU, swiglu_hidden

__all__ = ["MoEFeedForward", "load_balance_loss", "router_z_loss"]


def load_balance_loss(
    router_probs: torch.Tensor, expert_index: torch.Tensor, num_experts: int
) -> torch.Tensor:
    """E * sum_e f_e * P_e: f_e the share of routed slots that went to expert e, P_e its mean router probability.

    router_probs (S, E); expert_index (S, K). Equals 1 for perfectly even routing, E when all goes to one expert.
    """
    routed = F.one_hot(expert_index, num_experts).float().sum(dim=(0, 1))  # (E,)
    share = routed / expert_index.numel()
    return num_experts * (share * router_probs.mean(dim=0)).sum()


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared log-partition of the router logits (S, E): keeps them small so routing stays stable."""
    return torch.logsumexp(router_logits, dim=-1).pow(2).mean()


class MoEFeedForward(nn.Module):
    def __init__(self, width: int, *, num_experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k {top_k} must be between 1 and num_experts {num_experts}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.router = nn.Linear(width, num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(width, swiglu_hidden(width)) for _ in range(num_experts))
        # The auxiliary terms of the last forward pass, read by the loss (the block's output is hidden states only).
        self.aux: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        tokens = x.reshape(B * T, D)  # (S, D)
        logits = self.router(tokens).float()  # (S, E)
        probs = logits.softmax(dim=-1)
        weights, index = probs.topk(self.top_k, dim=-1)  # (S, K)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows, slot = (index == e).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, expert(tokens[rows]) * weights[rows, slot, None].to(tokens.dtype))
        self.aux = {
            "balance": load_balance_loss(probs, index, self.num_experts),
            "router_z": router_z_loss(logits),
        }
        return out.reshape(B, T, D)
