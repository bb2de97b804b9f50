"""Training documents from the world's four sources, mixed in exact proportions, and batches made of them.

Sources, as in the paper's data: `caption` (one image, a short alt-text caption), `recaption` (one image, a complete
synthetic caption: the VeCap analogue), `interleaved` (pages of several images with text about each: either a list of
captions or a list of question-answer pairs of one kind, so a page's first items teach the format of the later ones)
and `text` (no images: scene descriptions followed by questions about them, and arithmetic).

A sequence is token ids with `<image>` placeholders, each expanded to `num_image_tokens` copies so that the model can
overwrite them with the connector's output; images are listed in the order their placeholders appear.
Batches are a pure function of (seed, step): a resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mm1core.config import DataConfig, MM1Config, WorldConfig, parse_ratio
from mm1core.data.documents import IMAGE_PLACEHOLDER, Document, ImageRef
from mm1core.data.render import render_scene
from mm1core.data.text import (
    QUESTION_CATEGORIES,
    alt_caption,
    arithmetic_question,
    qa_words,
    question,
    recaption,
    world_vocabulary,
)
from mm1core.data.tokenizer import Tokenizer, WordTokenizer
from mm1core.data.world import Scene, sample_scene

__all__ = [
    "EVAL_SEED_OFFSET",
    "SOURCES",
    "Batch",
    "batch_from_documents",
    "build_tokenizer",
    "data_files",
    "fit_document",
    "encode_document",
    "images_to_tensor",
    "make_batch",
    "mixture_weights",
    "pad_rows",
    "source_counts",
    "sft_batch",
    "source_document",
    "uses_world_text",
]

SOURCES = ("caption", "recaption", "interleaved", "text")
# Scene seeds for evaluation live far away from training seeds, so held-out scenes are never trained on.
EVAL_SEED_OFFSET = 10**9


def data_files(cfg: DataConfig) -> dict[str, str]:
    """The sources whose documents come from the user's files, and those files."""
    given = {"caption": cfg.caption_files, "interleaved": cfg.interleaved_files, "text": cfg.text_files}
    return {source: paths for source, paths in given.items() if paths}


def uses_world_text(cfg: MM1Config) -> bool:
    """Whether the trial reads any of the world's words: a source the files do not replace, or the world's suite."""
    files = data_files(cfg.data)
    generated = [s for s, w in mixture_weights(cfg.data).items() if w > 0 and s not in files]
    return bool(generated) or cfg.eval.scores_world


def build_tokenizer(cfg: DataConfig, cache_dir: Path | None = None, *, world_text: bool = True) -> Tokenizer:
    """The world's word-level tokenizer, or, when the study brings its own data, a BPE trained on that data and, if
    the trial reads any (`uses_world_text`), on the world's text."""
    files = data_files(cfg)
    if not files:
        return WordTokenizer(world_vocabulary(cfg.world))
    if cache_dir is None:
        raise ValueError(
            "a tokenizer for a study's own files needs cache_dir, where it is trained once and kept"
        )
    from mm1core.data.bpe import (
        tokenizer_for_files,  # only studies that bring data need the tokenizers library
    )

    rng = random.Random("tokenizer")
    world_texts = (
        [source_document(s, rng, cfg, num_image_tokens=0).text for s in SOURCES for _ in range(500)]
        if world_text
        else []
    )
    return tokenizer_for_files(files, cfg.bpe_vocab_size, cache_dir, extra_texts=world_texts)


@functools.cache
def _file_documents(source: str, paths: str) -> tuple[Document, ...]:
    from mm1core.data.byo import read_documents  # pyarrow and Pillow only for studies that bring data

    return tuple(read_documents(paths, source))


def mixture_weights(cfg: DataConfig) -> dict[str, float]:
    """Each source's share: the caption part of `ratio` is split between alt-text and synthetic captions."""
    caption, interleaved, text = parse_ratio(cfg.ratio)
    return {
        "caption": caption * (1 - cfg.recaption_share),
        "recaption": caption * cfg.recaption_share,
        "interleaved": interleaved,
        "text": text,
    }


def source_counts(weights: dict[str, float], start: int, count: int) -> dict[str, int]:
    """How many of samples [start, start + count) come from each source.

    The first n samples hold round(W_s * n) samples from the sources up to s (W_s the cumulative share), so every
    prefix of the stream matches the ratio to within one sample per source, and any window is computable alone.
    """
    names = list(weights)
    total = sum(weights.values())
    cumulative, running = [], 0.0
    for name in names[:-1]:
        running += weights[name] / total
        cumulative.append(running)

    def upto(n: int) -> list[int]:
        return [math.floor(w * n + 0.5) for w in cumulative] + [n]

    before, after = upto(start), upto(start + count)
    counts, prev_before, prev_after = {}, 0, 0
    for name, b, a in zip(names, before, after, strict=True):
        counts[name] = (a - prev_after) - (b - prev_before)
        prev_before, prev_after = b, a
    return counts


def _scene(world: WorldConfig, rng: random.Random) -> Scene:
    return sample_scene(world, rng.getrandbits(62))


def _item_tokens(words: str, num_image_tokens: int) -> int:
    return num_image_tokens + len(words.split())


def source_document(source: str, rng: random.Random, cfg: DataConfig, *, num_image_tokens: int) -> Document:
    """One document of `source`; an interleaved page holds as many images as fit max_seq_len."""
    world = cfg.world
    files = data_files(cfg)
    if source in files:
        documents = _file_documents(source, files[source])
        return documents[rng.randrange(len(documents))]
    if source == "caption":
        scene = _scene(world, rng)
        return Document(f"{IMAGE_PLACEHOLDER} {alt_caption(scene, world, rng)}", (scene,), source)
    if source == "recaption":
        scene = _scene(world, rng)
        return Document(f"{IMAGE_PLACEHOLDER} {recaption(scene, world, rng)}", (scene,), source)
    if source == "interleaved":
        wanted = rng.randint(2, cfg.max_images_per_document)
        category = rng.choice(QUESTION_CATEGORIES) if rng.random() < cfg.interleaved_qa_share else None
        parts, scenes, used = [], [], 2  # <bos> and <eos>
        for _ in range(wanted):
            scene = _scene(world, rng)
            if category is None:
                text = alt_caption(scene, world, rng)
            else:
                asked = [question(scene, world, category, rng) for _ in range(cfg.questions_per_image)]
                text = " ".join(qa_words(q, a) for q, a in dict(asked).items())  # each question once
            used += _item_tokens(text, num_image_tokens) + 1
            if scenes and used > cfg.max_seq_len + 1:
                break
            parts.append(f"{IMAGE_PLACEHOLDER} {text}")
            scenes.append(scene)
        return Document(" ".join(parts), tuple(scenes), source)
    if source == "text":
        if rng.random() < 0.5:
            scene = _scene(world, rng)
            asked = [question(scene, world, c, rng) for c in rng.sample(QUESTION_CATEGORIES, k=2)]
            text = f"scene : {recaption(scene, world, rng)} " + " ".join(qa_words(q, a) for q, a in asked)
        else:
            text = " ".join(qa_words(*arithmetic_question(rng)) for _ in range(3))
        return Document(text, (), source)
    raise ValueError(f"unknown data source {source!r}; known: {', '.join(SOURCES)}")


def encode_document(
    text: str, tokenizer: Tokenizer, num_image_tokens: int, max_seq_len: int, *, answer_only: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids with expanded placeholders, and next-token targets that skip image positions.

    answer_only: take the loss only on what follows the last ` answer` (instruction tuning).
    """
    ids = _expanded(
        [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id], tokenizer, num_image_tokens
    )
    if len(ids) > max_seq_len + 1:
        raise ValueError(f"a document of {len(ids)} tokens does not fit max_seq_len={max_seq_len}")
    targets = [t if t != tokenizer.image_id else -100 for t in ids[1:]]
    if answer_only:
        prompt = text[: text.rindex(" answer") + len(" answer")]
        scored_from = len(
            _expanded([tokenizer.bos_id, *tokenizer.encode(prompt)], tokenizer, num_image_tokens)
        )
        targets = [-100] * (scored_from - 1) + targets[scored_from - 1 :]
    return ids[:-1], targets


def _expanded(ids: list[int], tokenizer: Tokenizer, num_image_tokens: int) -> list[int]:
    out: list[int] = []
    for token in ids:
        out.extend([token] * (num_image_tokens if token == tokenizer.image_id else 1))
    return out


def fit_document(doc: Document, tokenizer: Tokenizer, num_image_tokens: int, max_seq_len: int) -> Document:
    """A user's document cut to fit max_seq_len: whole trailing images (with what follows them) first, then words.
    Generated documents are built to fit; a long page of a user's data is cut as a packer would cut it."""
    while True:
        ids = _expanded(
            [tokenizer.bos_id, *tokenizer.encode(doc.text), tokenizer.eos_id], tokenizer, num_image_tokens
        )
        if len(ids) <= max_seq_len + 1:
            return doc
        words = doc.text.split()
        if doc.images and len(doc.images) > 1:
            last = len(words) - 1 - words[::-1].index(IMAGE_PLACEHOLDER)
            doc = Document(" ".join(words[:last]), doc.images[:-1], doc.source)
        else:
            keep = max(1, len(words) * (max_seq_len + 1) // len(ids) - 1)
            doc = Document(" ".join(words[:keep]), doc.images, doc.source)


def pad_rows(rows: list[list[int]], pad_value: int) -> torch.Tensor:
    """(B, T) tensor, T the longest row: padding to the batch's longest document, not to max_seq_len, keeps
    short caption batches cheap."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad_value] * (width - len(r)) for r in rows], dtype=torch.long)


def _image(ref: ImageRef, world: WorldConfig, resolution: int) -> np.ndarray:
    if isinstance(ref, bytes):
        from mm1core.data.byo import decode_image  # pyarrow and Pillow only for studies that bring data

        return decode_image(ref, resolution)
    return render_scene(ref, world, resolution)


def images_to_tensor(images: list[np.ndarray], resolution: int) -> torch.Tensor:
    if not images:
        return torch.zeros(0, 3, resolution, resolution)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)  # (M, 3, R, R)


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, T) int64, image placeholders expanded
    targets: torch.Tensor  # (B, T) int64, -100 where no loss is taken
    images: torch.Tensor  # (M, 3, R, R) float in [0, 1], M = number of <image> placeholders in the batch
    sources: list[str]
    images_per_row: list[int]

    def by_length(self, groups: int) -> list[Batch]:
        """The rows in up to `groups` batches of similar length, each padded only to its own longest row.

        A mixed batch holds 20-token captions beside 300-token interleaved pages; padding all to the longest
        wastes most of the step, so a step runs one forward pass per group instead.
        """
        lengths = [int((t != -100).nonzero().max()) + 1 if (t != -100).any() else 1 for t in self.targets]
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        starts = [0]
        for n in self.images_per_row:
            starts.append(starts[-1] + n)
        size = -(-len(order) // groups)
        parts = []
        for g in range(0, len(order), size):
            rows = order[g : g + size]
            width = max(lengths[r] for r in rows)
            image_rows = [i for r in rows for i in range(starts[r], starts[r + 1])]
            parts.append(
                Batch(
                    tokens=self.tokens[rows, :width],
                    targets=self.targets[rows, :width],
                    images=self.images[image_rows],
                    sources=[self.sources[r] for r in rows],
                    images_per_row=[self.images_per_row[r] for r in rows],
                )
            )
        return parts


def batch_from_documents(
    documents: list[Document],
    tokenizer: Tokenizer,
    world: WorldConfig,
    *,
    resolution: int,
    num_image_tokens: int,
    max_seq_len: int,
    answer_only: bool = False,
) -> Batch:
    tokens, targets, images = [], [], []
    for doc in documents:
        if any(isinstance(ref, bytes) for ref in doc.images) or not isinstance(tokenizer, WordTokenizer):
            doc = fit_document(doc, tokenizer, num_image_tokens, max_seq_len)
        inputs, tgt = encode_document(
            doc.text, tokenizer, num_image_tokens, max_seq_len, answer_only=answer_only
        )
        tokens.append(inputs)
        targets.append(tgt)
        images.extend(_image(ref, world, resolution) for ref in doc.images)
    return Batch(
        tokens=pad_rows(tokens, tokenizer.pad_id),
        targets=pad_rows(targets, -100),
        images=images_to_tensor(images, resolution),
        sources=[doc.source for doc in documents],
        images_per_row=[len(doc.images) for doc in documents],
    )


def make_batch(
    cfg: DataConfig,
    tokenizer: Tokenizer,
    *,
    batch_size: int,
    resolution: int,
    num_image_tokens: int,
    seed: int,
    step: int,
) -> Batch:
    rng = random.Random(f"{seed}/{step}")
    counts = source_counts(mixture_weights(cfg), step * batch_size, batch_size)
    sources = [name for name, n in counts.items() for _ in range(n)]
    rng.shuffle(sources)
    documents = [source_document(s, rng, cfg, num_image_tokens=num_image_tokens) for s in sources]
    return batch_from_documents(
        documents,
        tokenizer,
        cfg.world,
        resolution=resolution,
        num_image_tokens=num_image_tokens,
        max_seq_len=cfg.max_seq_len,
    )


def sft_batch(cfg: MM1Config, tokenizer: Tokenizer, step: int) -> Batch:
    """The SFT stage's batch at `step`: single-image instructions, loss on the answer only."""
    rng = random.Random(f"sft/{cfg.seed}/{step}")
    documents = []
    for _ in range(cfg.sft.batch_size):
        scene = _scene(cfg.data.world, rng)
        asked = question(scene, cfg.data.world, rng.choice(QUESTION_CATEGORIES), rng)
        documents.append(Document(f"{IMAGE_PLACEHOLDER} {qa_words(*asked)}", (scene,), "instruction"))
    return batch_from_documents(
        documents,
        tokenizer,
        cfg.data.world,
        resolution=cfg.encoder.resolution,
        num_image_tokens=cfg.connector.num_image_tokens,
        max_seq_len=cfg.data.max_seq_len,
        answer_only=True,
    )
