"""Held-out teacher-forced losses, with each document's own image and with another scene's: image reliance.

The held-out set is one caption document (`<image> caption`) and one question-answer document (`<image> question Q ?
answer A .`, categories in turn) per evaluation scene: the two single-image kinds whose words need their image.
`heldout/loss` is the mean token loss with the true images, a smooth signal for learning curves; `heldout/loss_other
_images` the same documents with every image replaced by the next scene's (a fixed derangement of the held-out
scenes); `heldout/image_reliance` their difference. A model that ignores its images loses nothing when they are
swapped, so a reliance near zero says its scores cannot come from vision, whatever they are.

Shape suffixes: B documents, T tokens, S scenes, K image tokens per image, D LM width, V vocabulary.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from mm1core.config import DataConfig
from mm1core.data.documents import IMAGE_PLACEHOLDER, Document
from mm1core.data.render import render_scene
from mm1core.data.sources import encode_document, fit_document, images_to_tensor, pad_rows
from mm1core.data.text import QUESTION_CATEGORIES, caption_references, qa_words, question
from mm1core.data.tokenizer import Tokenizer
from mm1core.data.world import Scene
from mm1core.mm1 import MM1

__all__ = ["heldout_documents", "heldout_metrics"]


def heldout_documents(scenes: list[Scene], data: DataConfig, set_seed: int) -> list[tuple[Document, int]]:
    """(document, index of its scene in `scenes`): per scene, its caption, then a question-answer about it."""
    documents = []
    for i, scene in enumerate(scenes):
        caption = caption_references(scene, data.world)[0]
        documents.append((Document(f"{IMAGE_PLACEHOLDER} {caption}", (scene,), "caption"), i))
        rng = random.Random(f"heldout/{set_seed}/{i}")
        asked = question(scene, data.world, QUESTION_CATEGORIES[i % len(QUESTION_CATEGORIES)], rng)
        documents.append((Document(f"{IMAGE_PLACEHOLDER} {qa_words(*asked)}", (scene,), "qa"), i))
    return documents


def _summed_loss(
    model: MM1, tokens: torch.Tensor, targets: torch.Tensor, image_tokens: torch.Tensor
) -> float:
    """Summed next-token loss of tokens (B, T) with image_tokens (M, K, D) already encoded."""
    logits = model.lm(model.embed_inputs(tokens, image_tokens, encoded=True)).float()  # (B, T, V)
    mask = targets != -100  # (B, T)
    return F.cross_entropy(logits[mask], targets[mask], reduction="sum").item()


def heldout_metrics(
    model: MM1,
    tokenizer: Tokenizer,
    data: DataConfig,
    scenes: list[Scene],
    *,
    set_seed: int,
    batch_size: int,
    resolution: int,
    num_image_tokens: int,
    device: torch.device,
) -> dict[str, float]:
    """`heldout/loss`, `heldout/loss_other_images` and `heldout/image_reliance` on the scenes' held-out documents.

    Call under torch.no_grad() with the model in eval mode (evaluate does). Document i's swapped image is scene
    (i + 1) mod S's: a derangement for S >= 2 that is the same for every trial, so reliance compares across arms.
    """
    if len(scenes) < 2:
        raise ValueError(
            f"image reliance needs two or more held-out scenes to swap images, got {len(scenes)}"
        )
    documents = heldout_documents(scenes, data, set_seed)
    own_sum = other_sum = 0.0
    count = 0
    for start in range(0, len(documents), batch_size):
        chunk = documents[start : start + batch_size]
        rows = [
            encode_document(
                fit_document(doc, tokenizer, num_image_tokens, data.max_seq_len).text,
                tokenizer,
                num_image_tokens,
                data.max_seq_len,
            )
            for doc, _ in chunk
        ]
        tokens = pad_rows([ids for ids, _ in rows], tokenizer.pad_id).to(device)  # (B, T)
        targets = pad_rows([tgt for _, tgt in rows], -100).to(device)  # (B, T)
        # A caption and its question share their scene: encode each distinct scene of the chunk once, own and next.
        own = [index for _, index in chunk]
        other = [(index + 1) % len(scenes) for index in own]
        distinct = list(dict.fromkeys(own + other))
        slot = {index: i for i, index in enumerate(distinct)}
        pixels = images_to_tensor(
            [render_scene(scenes[i], data.world, resolution) for i in distinct], resolution
        )
        encoded = model.encode_images(pixels.to(device))  # (S, K, D)
        own_sum += _summed_loss(model, tokens, targets, encoded[[slot[i] for i in own]])
        other_sum += _summed_loss(model, tokens, targets, encoded[[slot[i] for i in other]])
        count += int((targets != -100).sum())
    loss_own, loss_other = own_sum / count, other_sum / count
    return {
        "heldout/loss": loss_own,
        "heldout/loss_other_images": loss_other,
        "heldout/image_reliance": loss_other - loss_own,
    }
