"""Held-out caption-field accuracy: how often the model names what is in an image it has never seen.

Each held-out scene's caption is fed with its image; at every word that reports something about the image (sign
digits, size, colour, shape, position) the model's top prediction, given the true words before it, is scored.
A sign is read correctly only if all its digits are. Scenes are drawn from a seed range disjoint from training and
independent of the trial's seed, so every arm of a study is scored on the same items (pairable per item).

Shape suffixes: B batch, T sequence length, V vocabulary.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import torch

from mm1core.config import DataConfig, EvalConfig
from mm1core.data.sources import (
    EVAL_SEED_OFFSET,
    caption_fields,
    encode_document,
    images_to_tensor,
    pad_rows,
)
from mm1core.data.tokenizer import WordTokenizer
from mm1core.data.world import render_scene, sample_scene
from mm1core.mm1 import MM1

__all__ = ["FIELDS", "EvalResult", "evaluate_heldout"]

FIELDS = ("sign", "size", "color", "shape", "position")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    items: list[dict]  # one row per (scene, field): item_id, field, score
    protocol: dict


@torch.no_grad()
def evaluate_heldout(
    model: MM1,
    tokenizer: WordTokenizer,
    data: DataConfig,
    cfg: EvalConfig,
    *,
    resolution: int,
    num_image_tokens: int,
    device: torch.device,
) -> EvalResult:
    model.eval()
    items: list[dict] = []
    loss_sum, loss_count = 0.0, 0
    for start in range(0, cfg.num_items, cfg.batch_size):
        ids = range(start, min(start + cfg.batch_size, cfg.num_items))
        scenes = [sample_scene(data.world, EVAL_SEED_OFFSET + cfg.set_seed * 1_000_003 + i) for i in ids]
        tokens, targets, field_at = [], [], []
        for scene in scenes:
            fields = caption_fields(scene, data.world)
            text = "<image> " + " ".join(word for word, _ in fields)
            inputs, tgt = encode_document(text, tokenizer, num_image_tokens, data.max_seq_len)
            tokens.append(inputs)
            targets.append(tgt)
            # Target index of caption word j: after <bos> and the image tokens, word j is input position K + 1 + j,
            # so the logits that predict it sit at position K + j.
            field_at.append({num_image_tokens + j: field for j, (_, field) in enumerate(fields) if field})
        images = images_to_tensor([render_scene(s, data.world, resolution) for s in scenes], resolution)
        tokens_t = pad_rows(tokens, tokenizer.pad_id).to(device)
        targets_t = pad_rows(targets, -100).to(device)
        logits = model(tokens_t, images.to(device)).float()  # (B, T, V)
        mask = targets_t != -100
        loss_sum += torch.nn.functional.cross_entropy(logits[mask], targets_t[mask], reduction="sum").item()
        loss_count += int(mask.sum())
        correct = (logits.argmax(-1) == targets_t).cpu()  # (B, T)
        for row, item_id in enumerate(ids):
            per_field: dict[str, list[bool]] = defaultdict(list)
            for pos, field in field_at[row].items():
                per_field[field].append(bool(correct[row, pos]))
            for field, hits in per_field.items():
                # A sign is read only if every digit is right; other fields score each mention.
                score = float(all(hits)) if field == "sign" else sum(hits) / len(hits)
                items.append({"item_id": item_id, "field": field, "score": score})
    metrics = {}
    for field in FIELDS:
        scores = [it["score"] for it in items if it["field"] == field]
        if scores:
            metrics[f"heldout/{field}"] = sum(scores) / len(scores)
    metrics["heldout/accuracy"] = sum(
        metrics[f"heldout/{f}"] for f in FIELDS if f"heldout/{f}" in metrics
    ) / sum(f"heldout/{f}" in metrics for f in FIELDS)
    metrics["heldout/loss"] = loss_sum / max(1, loss_count)
    protocol = {"task": "caption-field accuracy", "decoding": "teacher-forced argmax"} | asdict(cfg)
    return EvalResult(metrics=metrics, items=items, protocol=protocol)
