"""Transformer building blocks shared by the image encoder and the language model.

Shape suffixes: B batch, T sequence length, D width, H heads, Dh head width (D / H).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Block", "KVCache", "RMSNorm", "SwiGLU"]


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class KVCache:
    """One attention layer's keys and values during generation.

    Preallocated for max_len positions and written in place, so a decoding step does not copy the whole cache the
    way concatenating would.
    """

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self.k: torch.Tensor | None = None  # (B, H, max_len, Dh), allocated by the first append
        self.v: torch.Tensor | None = None
        # The last (conv width - 1) positions' q, k, v before the attention's causal convolution, (B, W-1, 3D):
        # what a new position's convolution needs of the past.
        self.conv_tail: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, H, T, Dh) -> every key and value so far, each (B, H, S, Dh)."""
        B, H, T, Dh = k.shape
        if self.length + T > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; {self.length} + {T} do not fit")
        if self.k is None or self.v is None:
            self.k, self.v = k.new_empty(B, H, self.max_len, Dh), v.new_empty(B, H, self.max_len, Dh)
        self.k[:, :, self.length : self.length + T] = k
        self.v[:, :, self.length : self.length + T] = v
        self.length += T
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class Attention(nn.Module):
    """Multi-head attention; with conv_width > 1, Primer's multi-dconv-head attention (So et al. 2021): a causal
    depthwise convolution over the last conv_width positions after the q, k, v projections.

    Why the convolution: a question names what it asks about a few tokens before the answer starts ("... the object
    at r1c2 ? answer"). Plain attention must first learn a head that moves that name forward by position, and small
    models trained from scratch learn such offset moves slowly (measured: a 2-layer LM learns associative recall in
    ~400 steps with the key just before the answer, and not in 1,400 steps with two tokens between). With the
    convolution, a query already holds its last few tokens, so a single head can look the name up.
    """

    def __init__(self, width: int, num_heads: int, *, conv_width: int = 0) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.conv_width = conv_width
        if conv_width > 1:
            self.conv = nn.Conv1d(3 * width, 3 * width, conv_width, groups=3 * width, bias=False)
            with torch.no_grad():  # each position starts by seeing itself most, its predecessors a little
                self.conv.weight.uniform_(-0.5, 0.5)
                self.conv.weight[:, 0, -1] += 1.0

    def _convolve(
        self, qkv: torch.Tensor, token_mask: torch.Tensor | None, cache: KVCache | None
    ) -> torch.Tensor:
        """qkv (B, T, 3D) -> (B, T, 3D), each position mixing its own and its conv_width - 1 predecessors'."""
        if token_mask is not None:  # left padding in generation must look like the zeros before a sequence
            qkv = qkv * token_mask[..., None].to(qkv.dtype)
        B, T, C = qkv.shape
        W = self.conv_width
        past = (
            cache.conv_tail
            if cache is not None and cache.conv_tail is not None
            else qkv.new_zeros(B, W - 1, C)
        )
        window = torch.cat((past.to(qkv.dtype), qkv), dim=1)  # (B, W - 1 + T, 3D)
        if cache is not None:
            cache.conv_tail = window[:, -(W - 1) :]
        return self.conv(window.transpose(1, 2)).transpose(1, 2)  # (B, T, 3D)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D).

        token_mask (B, T) bool, False = padding: the convolution treats padded positions as zeros.

        rope: (cos, sin) tables, each (T, Dh), or per row (B, 1, T, Dh). attn_mask (T, S) or (B, 1, T, S) bool,
        True = may attend, over all S keys: the cached ones, then this call's. cache: extended in place.
        """
        B, T, D = x.shape
        qkv = self.qkv(x)  # (B, T, 3D)
        if self.conv_width > 1:
            qkv = self._convolve(qkv, token_mask, cache)
        q, k, v = qkv.view(B, T, 3, self.num_heads, D // self.num_heads).permute(
            2, 0, 3, 1, 4
        )  # (B, H, T, Dh)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            if attn_mask is None:
                # is_causal aligns queries with the first keys, which is wrong once earlier keys are cached.
                raise ValueError("attention over a KV cache needs an explicit attn_mask")
            k, v = cache.append(k, v)  # (B, H, S, Dh)
        if attn_mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, Dh)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, T, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


def rotary_tables(
    seq_len: int, head_dim: int, *, device: torch.device, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (T, Dh): RoFormer's rotary position tables in the rotate-half layout."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)  # (Dh/2,)
    angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)  # (T, Dh/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, Dh)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, Dh) rotated by position; cos, sin (T, Dh), or per row (B, 1, T, Dh)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-second, first), dim=-1) * sin.to(x.dtype)


def swiglu_hidden(width: int) -> int:
    """SwiGLU's hidden width: 8/3 of the model width (LLaMA's choice for parameter parity with a 4x GELU MLP)."""
    return 8 * round(width * 8 / 3 / 8)


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

    def __init__(
        self, width: int, num_heads: int, mlp: nn.Module | None = None, *, conv_width: int = 0
    ) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(width)
        self.attn = Attention(width, num_heads, conv_width=conv_width)
        self.mlp_norm = RMSNorm(width)
        self.mlp = mlp if mlp is not None else SwiGLU(width, swiglu_hidden(width))

    def forward(self, x: torch.Tensor, **attention: Any) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D); `attention` is Attention.forward's keywords (causal, rope, cache, ...)."""
        x = x + self.attn(self.attn_norm(x), **attention)
        return x + self.mlp(self.mlp_norm(x))
