"""The paper's three evaluation columns on held-out scenes: zero-shot, few-shot (k demonstrations) and text-only.

Within zero- and few-shot, two tasks: captioning, scored with CIDEr against five alt-text references per image, and
visual questions, scored with VQA accuracy, one category at a time so that a study sees where an axis helps
(reading fine glyphs, colour, shape, size, counting, position, relations). Text-only (the TextCore analogue):
questions about a scene given only as text, and arithmetic. Every answer is generated greedily, batched, with a KV
cache.

Query scenes, demonstration scenes and the choice of demonstrations are pure functions of `eval.set_seed` and never
of the trial's seed, so every arm of a study answers the same items and can be compared item by item. A k-shot
prompt holds exactly k demonstrations of the query's own task (for VQA, of the query's category), drawn from a pool
of held-out demonstration scenes, as an interleaved page would present them.

Every metric family comes with its floors (floors.py: `floor/chance/<metric>`, a blind model's score on the same
items, and `floor/oracle/<metric>`), and the held-out losses with each image's own scene and another's measure how
much the model relies on its images at all (heldout.py: `heldout/image_reliance`).
"""

from __future__ import annotations

import functools
import random
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import torch

from mm1core.config import DataConfig, EvalConfig, WorldConfig
from mm1core.data.byo import decode_image
from mm1core.data.documents import IMAGE_PLACEHOLDER
from mm1core.data.render import render_scene
from mm1core.data.sources import EVAL_SEED_OFFSET, encode_document, images_to_tensor
from mm1core.data.text import (
    QUESTION_CATEGORIES,
    alt_caption,
    arithmetic_question,
    caption_references,
    qa_words,
    question,
    recaption,
)
from mm1core.data.tokenizer import Tokenizer
from mm1core.data.world import Scene, sample_scene
from mm1core.eval.floors import fewshot_floors, textcore_floors
from mm1core.eval.heldout import heldout_metrics
from mm1core.eval.prompt import Prompt
from mm1core.eval.scoring import cider, vqa_accuracy
from mm1core.generate import generate
from mm1core.mm1 import MM1, eval_mode

__all__ = ["EvalResult", "Prompt", "answer_prompts", "evaluate", "fewshot_prompt", "textcore_prompt"]

_DEMO_POOL = 64  # demonstration scenes per eval set
_DEMO_SEED_OFFSET = 5 * 10**8  # demonstrations come from seeds disjoint from the query scenes
_ANSWER_WORDS = 6  # longest answer: a sign's digits


@dataclass
class EvalResult:
    metrics: dict[str, float]
    items: list[dict]  # one row per scored item: metric, item_id, category, score
    protocol: dict  # per metric family: task, template, k, decoding, items, eval-set seed


def _query_scene(data: DataConfig, cfg: EvalConfig, item: int) -> Scene:
    return sample_scene(data.world, EVAL_SEED_OFFSET + cfg.set_seed * 1_000_003 + item)


def _demo_scenes(data: DataConfig, cfg: EvalConfig, k: int, key: str) -> list[Scene]:
    rng = random.Random(f"demos/{cfg.set_seed}/{key}")
    picks = rng.sample(range(_DEMO_POOL), k)
    base = EVAL_SEED_OFFSET + _DEMO_SEED_OFFSET + cfg.set_seed * 1_000_003
    return [sample_scene(data.world, base + p) for p in picks]


def fewshot_prompt(data: DataConfig, cfg: EvalConfig, task: str, k: int, item: int) -> Prompt:
    """The k-shot prompt of item `item` of `task` ("caption" or "vqa"); k = 0 is the zero-shot prompt."""
    world = data.world
    scene = _query_scene(data, cfg, item)
    demos = _demo_scenes(data, cfg, k, f"{task}/{k}/{item}") if k else []
    # Separate streams for the query and the demonstrations, so the query is the same at every k.
    rng = random.Random(f"{task}/{cfg.set_seed}/{item}")
    demo_rng = random.Random(f"{task}/{cfg.set_seed}/{item}/{k}")
    if task == "caption":
        shown = [f"{IMAGE_PLACEHOLDER} {alt_caption(d, world, demo_rng)}" for d in demos]
        text = " ".join([*shown, IMAGE_PLACEHOLDER])
        return Prompt(text, [*demos, scene], caption_references(scene, world), "caption")
    if task == "vqa":
        category = QUESTION_CATEGORIES[item % len(QUESTION_CATEGORIES)]
        shown = [f"{IMAGE_PLACEHOLDER} {qa_words(*question(d, world, category, demo_rng))}" for d in demos]
        asked, answer = question(scene, world, category, rng)
        text = " ".join([*shown, f"{IMAGE_PLACEHOLDER} {qa_words(asked, None)}"])
        return Prompt(text, [*demos, scene], [answer], category)
    raise ValueError(f"unknown few-shot task {task!r}; known: caption, vqa")


def textcore_prompt(data: DataConfig, cfg: EvalConfig, item: int) -> Prompt:
    """Text-only items: half questions about a scene described in words, half arithmetic."""
    rng = random.Random(f"text/{cfg.set_seed}/{item}")
    if item % 2 == 0:
        scene = _query_scene(data, cfg, 2 * 10**6 + item)
        asked, answer = question(scene, data.world, rng.choice(QUESTION_CATEGORIES), rng)
        return Prompt(
            f"scene : {recaption(scene, data.world, rng)} {qa_words(asked, None)}", [], [answer], "scene_qa"
        )
    asked, answer = arithmetic_question(rng)
    return Prompt(qa_words(asked, None), [], [answer], "arithmetic")


@functools.lru_cache(maxsize=4096)
def _render(image: Scene | bytes, world: WorldConfig, resolution: int) -> np.ndarray:
    """Few-shot prompts reuse the same demonstration images thousands of times: draw or decode each once."""
    if isinstance(image, bytes):
        return decode_image(image, resolution)
    return render_scene(image, world, resolution)


def answer_prompts(
    model: MM1,
    tokenizer: Tokenizer,
    prompts: list[Prompt],
    data: DataConfig,
    cfg: EvalConfig,
    *,
    resolution: int,
    num_image_tokens: int,
    max_words: int,
    device: torch.device,
    stop_ids: Collection[int] | None = None,
) -> list[str]:
    """Greedy answers to the prompts; generation ends at `stop_ids` (default: the world's "." and `<image>`)."""
    stop = {tokenizer.image_id, *tokenizer.encode(".")} if stop_ids is None else set(stop_ids)
    out: list[str] = []
    for start in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[start : start + cfg.batch_size]
        # No max_seq_len check here: a BPE may spend more tokens on the world's words than the word-level count the
        # config was checked with; generate() refuses what the learned position table cannot hold.
        ids = [encode_document(p.text, tokenizer, num_image_tokens, 10**9)[0] for p in chunk]
        # Few-shot prompts repeat the same demonstration images: encode each distinct scene once per chunk.
        scenes = [s for p in chunk for s in p.scenes]
        distinct = list(dict.fromkeys(scenes))
        images = torch.zeros(0, 3, resolution, resolution, device=device)
        if distinct:
            pixels = images_to_tensor([_render(s, data.world, resolution) for s in distinct], resolution)
            slot = {scene: i for i, scene in enumerate(distinct)}
            with torch.no_grad():
                images = model.encode_images(pixels.to(device))[[slot[s] for s in scenes]]  # (M, K, D)
        generated = generate(
            model,
            ids,
            images,
            max_new_tokens=max_words,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            stop_ids=stop,
            images_encoded=bool(distinct),
        )
        out.extend(tokenizer.decode(g) for g in generated)
    return out


def evaluate(
    model: MM1,
    tokenizer: Tokenizer,
    data: DataConfig,
    cfg: EvalConfig,
    *,
    resolution: int,
    num_image_tokens: int,
    device: torch.device,
) -> EvalResult:
    """Every column of the suite, in eval mode (the model's own modes are restored after)."""
    with eval_mode(model), torch.no_grad():
        answer: Callable[[list[Prompt], int], list[str]] = lambda prompts, max_words: answer_prompts(  # noqa: E731
            model,
            tokenizer,
            prompts,
            data,
            cfg,
            resolution=resolution,
            num_image_tokens=num_image_tokens,
            max_words=max_words,
            device=device,
        )
        metrics: dict[str, float] = {}
        items: list[dict] = []
        protocol: dict[str, dict] = {}
        common = {"decoding": "greedy, KV cache", "items": cfg.num_items, "eval_set_seed": cfg.set_seed}
        for k in cfg.shots:
            prefix = f"{k}shot"
            captions = [fewshot_prompt(data, cfg, "caption", k, i) for i in range(cfg.num_items)]
            predictions = answer(captions, cfg.max_caption_words)
            corpus, per_item = cider(predictions, [p.references for p in captions])
            metrics[f"{prefix}/cider"] = corpus
            items += [
                {"metric": f"{prefix}/cider", "item_id": i, "category": "caption", "score": float(s)}
                for i, s in enumerate(per_item)
            ]
            questions = [fewshot_prompt(data, cfg, "vqa", k, i) for i in range(cfg.num_items)]
            replies = answer(questions, _ANSWER_WORDS)
            by_category: dict[str, list[float]] = defaultdict(list)
            for i, (prompt, reply) in enumerate(zip(questions, replies, strict=True)):
                score = vqa_accuracy(reply, prompt.references)
                by_category[prompt.category].append(score)
                items.append(
                    {"metric": f"{prefix}/vqa", "item_id": i, "category": prompt.category, "score": score}
                )
            for category, scores in by_category.items():
                metrics[f"{prefix}/vqa/{category}"] = sum(scores) / len(scores)
            metrics[f"{prefix}/vqa"] = sum(map(sum, by_category.values())) / cfg.num_items
            # The paper's column average: CIDEr (1.0 = 100 points) and VQA accuracy weigh alike.
            metrics[f"{prefix}/avg"] = (metrics[f"{prefix}/cider"] + metrics[f"{prefix}/vqa"]) / 2
            metrics |= fewshot_floors(
                prefix,
                [p.references for p in captions],
                [p.references for p in questions],
                [p.category for p in questions],
            )
            protocol[prefix] = common | {
                "k": k,
                "caption_template": "k x (<image> caption) + <image>",
                "vqa_template": "k x (<image> question Q ? answer A .) + <image> question Q ? answer",
                "demonstrations": f"same task and VQA category, from {_DEMO_POOL} held-out scenes",
                "caption_score": "CIDEr-D (pycocoevalcap), 5 alt-text references",
                "vqa_score": "VQA accuracy, normalised exact match against one answer",
            }
        texts = [textcore_prompt(data, cfg, i) for i in range(cfg.num_items)]
        by_task: dict[str, list[float]] = defaultdict(list)
        for i, (prompt, reply) in enumerate(zip(texts, answer(texts, _ANSWER_WORDS), strict=True)):
            score = vqa_accuracy(reply, prompt.references)
            by_task[prompt.category].append(score)
            items.append(
                {"metric": "textcore/avg", "item_id": i, "category": prompt.category, "score": score}
            )
        for task, scores in by_task.items():
            metrics[f"textcore/{task}"] = sum(scores) / len(scores)
        metrics["textcore/avg"] = sum(metrics[f"textcore/{t}"] for t in by_task) / len(by_task)
        metrics |= textcore_floors([p.references for p in texts], [p.category for p in texts])
        protocol["textcore"] = common | {
            "k": 0,
            "template": "scene : DESCRIPTION question Q ? answer | question what is A plus B ? answer",
            "score": "normalised exact match, mean over tasks",
        }
        protocol["floors"] = {
            "chance": "VQA and text-only: best constant answer over the category's items; captions: CIDEr-D of "
            "each item captioned with the next item's first reference",
            "oracle": "VQA and text-only: 1.0; captions: CIDEr-D of reference 0 against references 1-4",
        }
        protocol["heldout"] = {
            "items": 2 * cfg.num_items,
            "eval_set_seed": cfg.set_seed,
            "score": "teacher-forced mean token loss (nats)",
            "documents": "per query scene: <image> caption (reference 0), <image> question Q ? answer A .",
            "image_reliance": "loss with scene (i + 1) mod items' image minus loss with the own image",
        }
        metrics |= heldout_metrics(
            model,
            tokenizer,
            data,
            [_query_scene(data, cfg, i) for i in range(cfg.num_items)],
            set_seed=cfg.set_seed,
            batch_size=cfg.batch_size,
            resolution=resolution,
            num_image_tokens=num_image_tokens,
            device=device,
        )
        return EvalResult(metrics=metrics, items=items, protocol=protocol)
