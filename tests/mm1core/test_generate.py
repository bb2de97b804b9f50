"""Batched greedy generation with a KV cache: parity with a naive no-cache loop, left padding, stopping, limits,
and the training forward pass left as it was."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import mm1core.blocks
from mm1core.data.sources import build_tokenizer
from mm1core.generate import generate
from mm1core.lm import DecoderLM
from mm1core.mm1 import MM1, build_mm1
from mm1core.presets import get_preset

CFG = get_preset("tiny")
TOK = build_tokenizer(CFG.data)
K = CFG.connector.num_image_tokens
FIRST_WORD = max(TOK.pad_id, TOK.bos_id, TOK.eos_id, TOK.image_id) + 1
NEVER = -1  # an id no logit has: rows run to max_new_tokens
LM_VARIANTS = {
    "learned": {},
    "rope": {"positions": "rope"},
    "moe": {"num_experts": 4, "moe_every": 1},
    # The convolution's past must come from the cache, and left padding must read as zeros.
    "dconv": {"qkv_conv_width": 3},
    "dconv-rope": {"qkv_conv_width": 3, "positions": "rope"},
}


def _ban_image_token(module, inputs, logits):
    return logits.index_fill(-1, torch.tensor([TOK.image_id]), -1e4)


def build(variant: str) -> MM1:
    torch.manual_seed(0)
    model = build_mm1(replace(CFG, lm=replace(CFG.lm, **LM_VARIANTS[variant])), TOK)
    # Random weights may rank <image> first, and the naive loop's full forward has no image for a generated one.
    model.lm.head.register_forward_hook(_ban_image_token)
    return model


def make_prompt(words: int, images: int, seed: int) -> list[int]:
    """BOS, two words, `images` expanded placeholders, then the rest of the words."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(FIRST_WORD, TOK.vocab_size, (words,), generator=g).tolist()
    return [TOK.bos_id] + text[:2] + [TOK.image_id] * (K * images) + text[2:]


def make_images(count: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + count)
    return torch.rand(count, 3, CFG.encoder.resolution, CFG.encoder.resolution, generator=g)


@torch.no_grad()
def naive_generate(
    model: MM1, prompt: list[int], images: torch.Tensor, max_new_tokens: int, stops: set[int]
) -> list[int]:
    """The reference: a full MM1 forward over the whole growing sequence at every step."""
    model.eval()
    seq, out = list(prompt), []
    for _ in range(max_new_tokens):
        next_id = int(model(torch.tensor([seq]), images)[0, -1].argmax())
        if next_id in stops:
            break
        out.append(next_id)
        seq.append(next_id)
    return out


def cut(row: list[int], stops: set[int]) -> list[int]:
    return row[: next((i for i, t in enumerate(row) if t in stops), len(row))]


BATCH = [(3, 1), (12, 0), (5, 2), (1, 0)]  # (words, images) per prompt: different lengths and image counts


def batch() -> tuple[list[list[int]], torch.Tensor]:
    prompts = [make_prompt(words, images, seed) for seed, (words, images) in enumerate(BATCH)]
    return prompts, make_images(sum(images for _, images in BATCH))


@pytest.mark.parametrize("variant", LM_VARIANTS)
@pytest.mark.parametrize("num_images", [0, 2])
def test_cached_generation_matches_naive_loop(variant, num_images):
    model = build(variant)
    prompt, images = make_prompt(6, num_images, seed=7), make_images(num_images)
    out = generate(model, [prompt], images, max_new_tokens=12, eos_id=NEVER, pad_id=TOK.pad_id)
    assert len(out[0]) == 12
    assert out == [naive_generate(model, prompt, images, 12, {NEVER})]
    assert len(set(out[0])) > 1, "a constant continuation would not exercise the cache"


@pytest.mark.parametrize("variant", LM_VARIANTS)
def test_left_padded_batch_matches_each_prompt_alone(variant):
    model = build(variant)
    prompts, images = batch()
    batched = generate(model, prompts, images, max_new_tokens=10, eos_id=NEVER, pad_id=TOK.pad_id)
    first = 0
    for (_, count), prompt, row in zip(BATCH, prompts, batched, strict=True):
        alone = generate(
            model, [prompt], images[first : first + count], max_new_tokens=10, eos_id=NEVER, pad_id=TOK.pad_id
        )
        assert row == alone[0]
        first += count


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_left_padding_leaves_real_positions_logits_unchanged(positions):
    torch.manual_seed(0)
    lm = DecoderLM(replace(CFG.lm, positions=positions), vocab_size=TOK.vocab_size, max_seq_len=32).eval()
    x = torch.randn(1, 9, CFG.lm.width)  # (B, T, D)
    padded = torch.cat((torch.randn(1, 4, CFG.lm.width), x), dim=1)  # (B, 4 + T, D)
    mask = torch.tensor([[False] * 4 + [True] * 9])
    with torch.no_grad():
        torch.testing.assert_close(lm(padded, attention_mask=mask)[:, 4:], lm(x), atol=1e-5, rtol=1e-5)


def test_stops_at_eos_stop_ids_and_max_new_tokens():
    model = build("learned")
    prompts, images = batch()
    ref = generate(model, prompts, images, max_new_tokens=12, eos_id=NEVER, pad_id=TOK.pad_id)

    eos = ref[0][3]
    out = generate(model, prompts, images, max_new_tokens=12, eos_id=eos, pad_id=TOK.pad_id)
    assert out == [cut(row, {eos}) for row in ref]
    assert len(out[0]) <= 3

    stop_ids = {ref[1][2], ref[2][4]}
    out = generate(
        model, prompts, images, max_new_tokens=12, eos_id=NEVER, pad_id=TOK.pad_id, stop_ids=stop_ids
    )
    assert out == [cut(row, stop_ids) for row in ref]
    assert len(out[1]) <= 2 and len(out[2]) <= 4

    out = generate(model, prompts, images, max_new_tokens=5, eos_id=NEVER, pad_id=TOK.pad_id)
    assert out == [row[:5] for row in ref]
    assert generate(model, prompts, images, max_new_tokens=0, eos_id=NEVER, pad_id=TOK.pad_id) == [[]] * 4


def test_forced_eos_ends_every_row_after_one_pass():
    model = build("rope")
    passes = []
    eos = torch.tensor([TOK.eos_id])
    model.lm.head.register_forward_hook(lambda m, i, logits: logits.index_fill(-1, eos, 1e4))
    model.lm.head.register_forward_hook(lambda m, i, o: passes.append(o.shape))
    prompts, images = batch()
    out = generate(model, prompts, images, max_new_tokens=8, eos_id=TOK.eos_id, pad_id=TOK.pad_id)
    assert out == [[]] * 4
    assert len(passes) == 1


def test_learned_positions_refuse_sequences_past_their_table():
    model = build("learned")
    limit = CFG.data.max_seq_len
    fits = make_prompt(limit - 10 - 1, 0, seed=3)  # BOS + words = limit - 10 tokens
    out = generate(model, [fits], make_images(0), max_new_tokens=10, eos_id=NEVER, pad_id=TOK.pad_id)
    assert len(out[0]) == 10
    with pytest.raises(ValueError, match=rf"\({limit - 10} tokens\).*\(11\).*{limit} positions"):
        generate(model, [fits], make_images(0), max_new_tokens=11, eos_id=NEVER, pad_id=TOK.pad_id)


def test_rope_generates_past_the_learned_table_length():
    model = build("rope")
    prompt = make_prompt(CFG.data.max_seq_len + 5, 1, seed=4)
    out = generate(model, [prompt], make_images(1), max_new_tokens=4, eos_id=NEVER, pad_id=TOK.pad_id)
    assert out == [naive_generate(model, prompt, make_images(1), 4, {NEVER})]


@pytest.mark.parametrize("modes", ["train", "eval", "mixed"])
def test_generation_runs_in_eval_mode_and_restores_each_modules_mode(modes):
    model = build("moe").train(modes != "eval")
    if modes == "mixed":
        model.image_encoder.eval()
    before = {name: m.training for name, m in model.named_modules()}
    seen = []
    model.lm.head.register_forward_hook(lambda m, i, o: seen.append(m.training))
    prompts, images = batch()
    generate(model, prompts, images, max_new_tokens=3, eos_id=NEVER, pad_id=TOK.pad_id)
    assert seen and not any(seen)
    assert {name: m.training for name, m in model.named_modules()} == before


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _naive_rotate(x: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, Dh): RoFormer rotation, pairing dimension i with i + Dh/2."""
    T, Dh = x.shape[-2:]
    inv_freq = 10000.0 ** (-torch.arange(0, Dh, 2).float() / Dh)  # (Dh/2,)
    angle = torch.arange(T).float()[:, None] * inv_freq  # (T, Dh/2)
    first, second = x[..., : Dh // 2], x[..., Dh // 2 :]
    cos, sin = angle.cos(), angle.sin()
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


def _naive_lm(lm: DecoderLM, x: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (B, T, V): the dense LM spelled out, with attention through an explicit causal mask."""
    B, T, D = x.shape
    H = lm.cfg.num_heads
    if lm.cfg.positions == "learned":
        x = x + lm.pos_embed[:, :T]
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    for block in lm.blocks:
        h = _rms(x, block.attn_norm.weight, block.attn_norm.eps)
        qkv = (h @ block.attn.qkv.weight.T).view(B, T, 3, H, D // H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, T, Dh)
        if lm.cfg.positions == "rope":
            q, k = _naive_rotate(q), _naive_rotate(k)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(D // H)).masked_fill(~allowed, float("-inf"))
        x = x + (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D) @ block.attn.proj.weight.T
        h = _rms(x, block.mlp_norm.weight, block.mlp_norm.eps)
        gate, up = (h @ block.mlp.gate_up.weight.T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ block.mlp.down.weight.T
    return _rms(x, lm.norm.weight, lm.norm.eps) @ lm.head.weight.T


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_training_forward_matches_naive_reference_through_plain_causal_sdpa(positions, monkeypatch):
    torch.manual_seed(0)
    cfg = replace(CFG.lm, positions=positions, depth=2)
    lm = DecoderLM(cfg, vocab_size=TOK.vocab_size, max_seq_len=32)
    x = torch.randn(3, 11, cfg.width)  # (B, T, D)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        calls.append(kwargs)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(mm1core.blocks.F, "scaled_dot_product_attention", recording_sdpa)
    out = lm(x)
    monkeypatch.undo()
    assert calls == [{"is_causal": True}] * cfg.depth
    torch.testing.assert_close(out, _naive_lm(lm, x), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        explicit = lm(x, position_ids=torch.arange(11).expand(3, 11))
    torch.testing.assert_close(explicit, out.detach(), atol=1e-5, rtol=1e-5)
