"""Transformer building blocks shared by the image encoder and the language model.

Shape suffixes: B batch, T sequence length, D width, H heads, Dh head width (D / H).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Block", "RMSNorm", "SwiGLU"]


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, *, causal: bool) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (
            self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        )  # (B, H, T, Dh)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, T, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(width, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 8 / 3) -> None:
        super().__init__()
        hidden = 8 * round(width * mlp_ratio / 8)
        self.attn_norm = RMSNorm(width)
        self.attn = Attention(width, num_heads)
        self.mlp_norm = RMSNorm(width)
        self.mlp = SwiGLU(width, hidden)

    def forward(self, x: torch.Tensor, *, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), causal=causal)
        return x + self.mlp(self.mlp_norm(x))
