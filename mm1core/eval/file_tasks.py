"""Evaluation tasks from a researcher's own files: captioning, VQA and text-only items, scored like the world's.

A file task (EvalTaskConfig, kind caption / vqa / text) reads its items from Parquet/Arrow files in the schemas of
`mm1core.data.byo.TASK_SCHEMAS`, prompts the model 0-shot and k-shot with demonstrations from a named file or split,
and records `<task>/<k>shot/<score>` with per-item scores, floors and a protocol whose fingerprint covers the files'
contents, so two arms scored on different files are never compared. Templates (docs/data-formats.md):

- caption: k x (`<image> caption`) + `<image>`; CIDEr-D against the item's references, and corpus BLEU-4;
- vqa:     k x (`<image> question Q answer A .`) + `<image> question Q answer`; VQA accuracy over the answers;
- text:    k x (`P A .`) + `P`; exact match (VQA-normalised) against any accepted answer.

A demonstration's answer is its most frequent reference. Demonstrations are drawn by a seed of the evaluation set, the
task's name, k and the item alone, never the trial's, so every arm answers the same prompts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mm1core.config import FILE_TASK_KINDS, DataConfig, EvalConfig, EvalTaskConfig
from mm1core.data.byo import expand_paths, read_task_rows
from mm1core.data.documents import IMAGE_PLACEHOLDER
from mm1core.data.sources import encode_document
from mm1core.data.tokenizer import Tokenizer
from mm1core.eval.floors import (
    best_constant_accuracy,
    blind_caption_cider,
    caption_oracle_cider,
    floor_metrics,
)
from mm1core.eval.prompt import Prompt
from mm1core.eval.scoring import cider, exact_match, normalize_answer, vqa_accuracy
from mm1core.eval.suite import EvalResult, answer_prompts
from mm1core.mm1 import MM1, eval_mode

__all__ = [
    "TaskItem",
    "evaluate_file_task",
    "task_items",
    "task_prompt",
    "task_prompt_problems",
]

# The score each kind is read by first (the report's headline of the task), per-item.
PRIMARY_SCORE = {kind: spec.scores[0] for kind, spec in FILE_TASK_KINDS.items()}
# Generation budgets in tokens beyond the longest reference: a caption may say a little more than its references.
_CAPTION_SLACK, _ANSWER_SLACK = 4, 2


@dataclass(frozen=True)
class TaskItem:
    image: bytes | None  # encoded image bytes (caption, vqa); None for text
    prompt: str  # the question (vqa) or prompt (text), whitespace-normalised; "" for captions
    references: tuple[str, ...]  # reference captions or accepted answers
    category: str  # the file's `category` column, or "" without one

    @property
    def demonstrated_answer(self) -> str:
        """The answer a demonstration shows: the most frequent reference (the first among equals)."""
        return Counter(self.references).most_common(1)[0][0]


def _words(text: str) -> str:
    return " ".join(text.split())


@functools.cache
def _rows(kind: str, files: str, split: str) -> tuple[TaskItem, ...]:
    items = []
    for row in read_task_rows(files, kind, split=split):
        prompt = row.get("question") or row.get("prompt") or ""
        references = row.get("references") or row.get("answers")
        items.append(
            TaskItem(
                row.get("image"),
                _words(prompt),
                tuple(_words(r) for r in references),
                row.get("category") or "",
            )
        )
    return tuple(items)


def task_items(task: EvalTaskConfig) -> tuple[TaskItem, ...]:
    """The items the task scores, in file order (the first `max_items` when that is set)."""
    items = _rows(task.kind, task.files, task.split)
    return items[: task.max_items] if task.max_items else items


def demo_pool(task: EvalTaskConfig) -> tuple[TaskItem, ...]:
    """Where the task's demonstrations come from: `demos` (or the items' files), rows of `demos_split` if set."""
    return _rows(task.kind, task.demos or task.files, task.demos_split)


def task_prompt(task: EvalTaskConfig, cfg: EvalConfig, k: int, index: int) -> Prompt:
    """The k-shot prompt of item `index` of the task (k = 0: zero-shot)."""
    item = task_items(task)[index]
    pool = demo_pool(task)
    if k > len(pool):
        raise ValueError(
            f"task {task.name!r}: {k}-shot prompts need {k} demonstrations, the pool has {len(pool)}"
        )
    rng = random.Random(f"demos/{cfg.set_seed}/{task.name}/{k}/{index}")
    demos = [pool[i] for i in rng.sample(range(len(pool)), k)]
    if task.kind == "caption":
        shown = [f"{IMAGE_PLACEHOLDER} {d.demonstrated_answer}" for d in demos]
        text = " ".join([*shown, IMAGE_PLACEHOLDER])
    elif task.kind == "vqa":
        shown = [f"{IMAGE_PLACEHOLDER} question {d.prompt} answer {d.demonstrated_answer} ." for d in demos]
        text = " ".join([*shown, f"{IMAGE_PLACEHOLDER} question {item.prompt} answer"])
    else:
        shown = [f"{d.prompt} {d.demonstrated_answer} ." for d in demos]
        text = " ".join([*shown, item.prompt])
    images = [d.image for d in demos if d.image is not None] + (
        [item.image] if item.image is not None else []
    )
    return Prompt(text, images, list(item.references), item.category or task.kind)


def _generation_budget(task: EvalTaskConfig, tokenizer: Tokenizer) -> int:
    """Tokens an answer may take: the longest reference's, and a little more (its stop included)."""
    longest = max(len(tokenizer.encode(r)) for item in task_items(task) for r in item.references)
    return longest + (_CAPTION_SLACK if task.kind == "caption" else _ANSWER_SLACK)


def _answer_stops(tokenizer: Tokenizer) -> set[int]:
    """`<image>` and the token that ends a demonstration's answer (" ."), where the tokenizer has one for it.

    A bare "." is no stop for a subword tokenizer: it would cut "3.5" after the 3."""
    stops = {tokenizer.image_id}
    ending = tokenizer.encode(" .")
    if len(ending) == 1:
        stops.add(ending[0])
    return stops


def _cut(reply: str) -> str:
    """The answer up to the template's end mark, wherever a tokenizer without a single stop token put it."""
    return reply.split(" .")[0].split("\n")[0].strip()


def task_prompt_problems(
    task: EvalTaskConfig, cfg: EvalConfig, tokenizer: Tokenizer, *, num_image_tokens: int, max_seq_len: int
) -> list[str]:
    """Why the task cannot be prompted with this tokenizer: text it cannot encode (a word-level tokenizer has no
    `<unk>`), or a prompt and its answer longer than the LM's sequence length."""
    problems: list[str] = []
    for where, item in [("item", i) for i in task_items(task)] + [
        ("demonstration", d) for d in demo_pool(task)
    ]:
        for text in (item.prompt, *item.references):
            try:
                tokenizer.encode(text)
            except ValueError as err:
                problems.append(f"task {task.name!r}: {where} text {text!r}: {err}")
                if len(problems) >= 5:
                    return problems + [
                        "(and maybe more: the study's tokenizer cannot encode this task's text)"
                    ]
    if problems:
        return problems
    budget = _generation_budget(task, tokenizer)
    for k in cfg.task_shots(task):
        if k > len(demo_pool(task)):
            problems.append(
                f"task {task.name!r}: {k}-shot prompts need {k} demonstrations, the pool has {len(demo_pool(task))}"
            )
            continue
        longest = max(
            len(encode_document(task_prompt(task, cfg, k, i).text, tokenizer, num_image_tokens, 10**9)[0])
            for i in range(len(task_items(task)))
        )
        if longest + budget > max_seq_len:
            problems.append(
                f"task {task.name!r}: its longest {k}-shot prompt ({longest} tokens) and answer ({budget}) exceed "
                f"data.max_seq_len {max_seq_len}; use fewer shots or a longer max_seq_len"
            )
    return problems


@functools.cache
def _files_digest(files: str) -> str:
    digest = hashlib.sha256()
    for path in expand_paths(files):
        digest.update(path.name.encode())
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _floors(task: EvalTaskConfig, prefix: str, items: Sequence[TaskItem]) -> dict[str, float]:
    references = [list(item.references) for item in items]
    if task.kind == "caption":
        out = {}
        if len(items) >= 2:
            out[f"floor/chance/{prefix}/cider"] = blind_caption_cider(references)
        if all(len(r) >= 2 for r in references):
            out[f"floor/oracle/{prefix}/cider"] = caption_oracle_cider(references)
        return out
    score = PRIMARY_SCORE[task.kind]
    grouped: dict[str, list[list[str]]] = defaultdict(list)
    for item, refs in zip(items, references, strict=True):
        grouped[item.category].append(refs)
    levels = {f"{prefix}/{score}": references}
    if any(item.category for item in items):
        levels |= {f"{prefix}/{score}/{category}": refs for category, refs in grouped.items()}
    out = {}
    for metric, refs in levels.items():
        if task.kind == "vqa":
            chance = best_constant_accuracy(refs)
            # With fewer than 4 agreeing answers even a perfect model cannot reach 1.0 (vqa_accuracy's formula).
            oracle = sum(max(vqa_accuracy(a, r) for a in r) for r in refs) / len(refs)
        else:
            counts = Counter(a for r in refs for a in {normalize_answer(x) for x in r})
            chance, oracle = counts.most_common(1)[0][1] / len(refs), 1.0
        out |= floor_metrics(metric, chance, oracle)
    return out


def _bleu4(predictions: list[str], references: list[list[str]]) -> float:
    from pycocoevalcap.bleu.bleu import Bleu  # the scorer of the COCO caption evaluation

    gts = {i: refs for i, refs in enumerate(references)}
    res = {i: [p or "<empty>"] for i, p in enumerate(predictions)}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorer prints its n-gram counts
        scores, _ = Bleu(4).compute_score(gts, res)
    return float(scores[3])


def evaluate_file_task(
    model: MM1,
    tokenizer: Tokenizer,
    data: DataConfig,
    task: EvalTaskConfig,
    cfg: EvalConfig,
    *,
    intermediate: bool,
    resolution: int,
    num_image_tokens: int,
    device: torch.device,
) -> EvalResult:
    """The task at each of its shot counts: metrics, one row per scored item, and each family's protocol.

    Intermediate rounds score the first `eval.intermediate_items` items (all where that is 0), the final round all."""
    items = task_items(task)
    count = min(cfg.intermediate_items, len(items)) if intermediate and cfg.intermediate_items else len(items)
    items = items[:count]
    score = PRIMARY_SCORE[task.kind]
    budget = _generation_budget(task, tokenizer)
    stops = _answer_stops(tokenizer)
    metrics: dict[str, float] = {}
    rows: list[dict] = []
    protocol: dict[str, dict] = {}
    with eval_mode(model), torch.no_grad():
        for k in cfg.task_shots(task):
            prefix = f"{task.name}/{k}shot"
            prompts = [task_prompt(task, cfg, k, i) for i in range(count)]
            replies = answer_prompts(
                model,
                tokenizer,
                prompts,
                data,
                cfg,
                resolution=resolution,
                num_image_tokens=num_image_tokens,
                max_words=budget,
                device=device,
                stop_ids=stops,
            )
            replies = [_cut(r) for r in replies]
            if task.kind == "caption":
                references = [p.references for p in prompts]
                corpus, per_item = cider(replies, references)
                metrics[f"{prefix}/cider"] = corpus
                metrics[f"{prefix}/bleu4"] = _bleu4(replies, references)
            else:
                judge = vqa_accuracy if task.kind == "vqa" else _any_match
                per_item = [judge(r, p.references) for r, p in zip(replies, prompts, strict=True)]
                metrics[f"{prefix}/{score}"] = sum(per_item) / len(per_item)
                by_category: dict[str, list[float]] = defaultdict(list)
                for item, value in zip(items, per_item, strict=True):
                    by_category[item.category].append(value)
                if any(item.category for item in items):
                    metrics |= {f"{prefix}/{score}/{c}": sum(v) / len(v) for c, v in by_category.items()}
            rows += [
                {"metric": f"{prefix}/{score}", "item_id": i, "category": p.category, "score": float(s)}
                for i, (p, s) in enumerate(zip(prompts, per_item, strict=True))
            ]
            metrics |= _floors(task, prefix, items)
            protocol[prefix] = {
                "task": task.name,
                "kind": task.kind,
                "k": k,
                "template": FILE_TASK_KINDS[task.kind].template,
                "decoding": f"greedy, KV cache, at most {budget} tokens",
                "items": count,
                "files_sha256": _files_digest(task.files),
                "split": task.split,
                "demonstrations": {
                    "files_sha256": _files_digest(task.demos or task.files),
                    "split": task.demos_split,
                    "seed": f"demos/{cfg.set_seed}/{task.name}/{k}/<item>",
                }
                if k
                else None,
                "score": FILE_TASK_KINDS[task.kind].scorer,
            }
    return EvalResult(metrics=metrics, items=rows, protocol=protocol)


def _any_match(prediction: str, accepted: Sequence[str]) -> float:
    return float(any(exact_match(prediction, answer) for answer in accepted))
