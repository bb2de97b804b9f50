"""Training sequences from the world: image-caption pairs, interleaved documents, text-only documents, mixed.

A sequence is token ids with `<image>` placeholders, each expanded to `num_image_tokens` copies so that the model can
overwrite them with the connector's output; images are listed in the order their placeholders appear.
Batches are a pure function of (seed, step): a resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from mm1core.config import DataConfig, MM1Config, WorldConfig, parse_ratio
from mm1core.data.tokenizer import WordTokenizer
from mm1core.data.world import Scene, positions, render_scene, sample_scene, world_vocabulary

__all__ = [
    "EVAL_SEED_OFFSET",
    "SOURCES",
    "Batch",
    "DataConfig",
    "build_tokenizer",
    "caption_fields",
    "caption_text",
    "encode_document",
    "images_to_tensor",
    "make_batch",
    "trial_batch",
    "pad_rows",
    "parse_ratio",
]

SOURCES = ("caption", "interleaved", "text")
# Scene seeds for evaluation live far away from training seeds, so held-out scenes are never trained on.
EVAL_SEED_OFFSET = 10**9


def build_tokenizer(cfg: DataConfig) -> WordTokenizer:
    return WordTokenizer(world_vocabulary(cfg.world))


def caption_fields(scene: Scene, world: WorldConfig) -> list[tuple[str, str | None]]:
    """The caption as (word, field) pairs; field names what a word reports about the image (None: filler)."""
    # Each phrase names its place first: the model then knows where to look before it names what is there, which
    # a small model learns far sooner than binding a trailing position back to an object it already described.
    names = positions(world.grid_size)
    words: list[tuple[str, str | None]] = [("the", None), ("sign", None), ("at", None)]
    words += [(names[scene.sign.cell], "position"), ("reads", None)]
    words += [(digit, "sign") for digit in scene.sign.text] + [(".", None)]
    for o in scene.objects:
        words += [("at", None), (names[o.cell], "position"), ("a", None)]
        words += [(o.size, "size"), (o.color, "color"), (o.shape, "shape"), (".", None)]
    return words


def caption_text(scene: Scene, world: WorldConfig) -> str:
    return " ".join(word for word, _ in caption_fields(scene, world))


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, T) int64, image placeholders expanded
    targets: torch.Tensor  # (B, T) int64, -100 where no loss is taken
    images: torch.Tensor  # (M, 3, R, R) float in [0, 1], M = number of <image> placeholders in the batch
    sources: list[str]


def _document(source: str, rng: random.Random, cfg: DataConfig) -> tuple[str, list[Scene]]:
    if source == "caption":
        scene = sample_scene(cfg.world, rng.getrandbits(62))
        return f"<image> {caption_text(scene, cfg.world)}", [scene]
    if source == "interleaved":
        scenes = [sample_scene(cfg.world, rng.getrandbits(62)) for _ in range(cfg.images_per_document)]
        return " ".join(f"<image> {caption_text(s, cfg.world)}" for s in scenes), scenes
    if source == "text":
        scene = sample_scene(cfg.world, rng.getrandbits(62))
        return caption_text(scene, cfg.world), []
    raise ValueError(f"unknown data source {source!r}; known: {', '.join(SOURCES)}")


def encode_document(
    text: str, tokenizer: WordTokenizer, num_image_tokens: int, max_seq_len: int
) -> tuple[list[int], list[int]]:
    """Token ids with expanded placeholders, and next-token targets that skip image positions."""
    ids = [tokenizer.bos_id]
    for token in tokenizer.encode(text):
        ids.extend([token] * (num_image_tokens if token == tokenizer.image_id else 1))
    ids.append(tokenizer.eos_id)
    if len(ids) > max_seq_len + 1:
        raise ValueError(f"a document of {len(ids)} tokens does not fit max_seq_len={max_seq_len}")
    targets = [t if t != tokenizer.image_id else -100 for t in ids[1:]]
    return ids[:-1], targets


def pad_rows(rows: list[list[int]], pad_value: int) -> torch.Tensor:
    """(B, T) tensor, T the longest row: padding to the batch's longest document, not to max_seq_len, keeps
    short caption batches cheap."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad_value] * (width - len(r)) for r in rows], dtype=torch.long)


def make_batch(
    cfg: DataConfig,
    tokenizer: WordTokenizer,
    *,
    batch_size: int,
    resolution: int,
    num_image_tokens: int,
    seed: int,
    step: int,
) -> Batch:
    rng = random.Random(f"{seed}/{step}")
    weights = parse_ratio(cfg.ratio)
    sources = rng.choices(SOURCES, weights=weights, k=batch_size)
    tokens, targets, images = [], [], []
    for source in sources:
        text, scenes = _document(source, rng, cfg)
        inputs, tgt = encode_document(text, tokenizer, num_image_tokens, cfg.max_seq_len)
        tokens.append(inputs)
        targets.append(tgt)
        images.extend(render_scene(s, cfg.world, resolution) for s in scenes)
    return Batch(
        tokens=pad_rows(tokens, tokenizer.pad_id),
        targets=pad_rows(targets, -100),
        images=images_to_tensor(images, resolution),
        sources=sources,
    )


def trial_batch(cfg: MM1Config, tokenizer: WordTokenizer, step: int) -> Batch:
    """The multimodal stage's batch at `step` for a trial's config."""
    return make_batch(
        cfg.data,
        tokenizer,
        batch_size=cfg.train.batch_size,
        resolution=cfg.encoder.resolution,
        num_image_tokens=cfg.connector.num_image_tokens,
        seed=cfg.seed,
        step=step,
    )


def images_to_tensor(images: list[np.ndarray], resolution: int) -> torch.Tensor:
    if not images:
        return torch.zeros(0, 3, resolution, resolution)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)  # (M, 3, R, R)
