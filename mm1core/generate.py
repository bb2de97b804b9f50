"""Batched greedy generation with a KV cache: the prompts are encoded once, then each step feeds one token per row.

Prompts of different lengths are left-padded to a common length so that every row's next token sits in the same
column; padding is masked out of attention and positions count from each row's first real token, so a row's result
does not depend on what it was batched with.

Shape suffixes: B prompts, T padded prompt length, S keys so far, M images, R resolution.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from mm1core.blocks import KVCache
from mm1core.mm1 import MM1, eval_mode

__all__ = ["generate"]


@torch.no_grad()
def generate(
    model: MM1,
    prompts: list[list[int]],
    images: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    stop_ids: Collection[int] = (),
    images_encoded: bool = False,
) -> list[list[int]]:
    """Greedy continuations of `prompts`, one list per prompt, without the prompt.

    prompts hold expanded image placeholders; images (M, 3, R, R) fill them in order, prompt 0's first (or, with
    images_encoded, MM1.encode_images' output (M, K, D)). A row ends before its first eos_id or stop id, or after
    max_new_tokens.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token (its BOS)")
    if not prompts or max_new_tokens == 0:
        return [[] for _ in prompts]
    T = max(len(p) for p in prompts)
    if model.lm.cfg.positions == "learned" and T + max_new_tokens > model.lm.pos_embed.shape[1]:
        raise ValueError(
            f"the longest prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) = {T + max_new_tokens} "
            f"exceeds the {model.lm.pos_embed.shape[1]} positions of the LM's learned position table"
        )
    device = next(model.parameters()).device
    tokens = torch.full((len(prompts), T), pad_id, dtype=torch.long)  # (B, T)
    real = torch.zeros(len(prompts), T, dtype=torch.bool)  # (B, T)
    for row, prompt in enumerate(prompts):
        tokens[row, T - len(prompt) :] = torch.tensor(prompt)
        real[row, T - len(prompt) :] = True
    tokens, real = tokens.to(device), real.to(device)
    stops = torch.tensor(sorted({eos_id, *stop_ids}), device=device)

    with eval_mode(model):
        # The last new token is never fed back, so the cache needs one position less than the full sequence.
        cache = [KVCache(T + max_new_tokens - 1) for _ in model.lm.blocks]
        embeds = model.embed_inputs(tokens, images, encoded=images_encoded)  # (B, T, D)
        logits = model.lm(embeds, attention_mask=real, cache=cache)  # (B, T, V)
        steps: list[torch.Tensor] = []
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)  # (B,)
        for step in range(max_new_tokens):
            next_ids = logits[:, -1].argmax(dim=-1)  # (B,)
            steps.append(next_ids)
            done |= torch.isin(next_ids, stops)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            real = torch.cat((real, real.new_ones(len(prompts), 1)), dim=1)  # (B, S)
            step_embeds = model.lm.embed(next_ids[:, None])  # (B, 1, D)
            logits = model.lm(step_embeds, attention_mask=real, cache=cache)  # (B, 1, V)

    stop_set = set(stops.tolist())
    out = []
    for row in torch.stack(steps, dim=1).tolist():
        end = next((i for i, t in enumerate(row) if t in stop_set), len(row))
        out.append(row[:end])
    return out
