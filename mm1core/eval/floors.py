"""Capability floors: what a blind model and a perfect one score on the very items the suite scores.

A score means something only beside its floors. For every metric family the suite reports, two levels:

- chance: for VQA categories and text-only tasks, the accuracy of the best *constant* answer over the category's
  items (a model that ignores the image but knows the answer distribution); for captioning, the CIDEr-D of a blind
  captioner that gives each item the first reference of the *next* item (a well-formed caption of another scene),
  scored against the item's own references;
- oracle: 1.0 for VQA and text-only; for captioning, the CIDEr-D of one held-out reference of each scene (reference
  0) against the scene's other references (1-4), i.e. how well one annotator agrees with the others.

Both are pure functions of the evaluation set (no model call), so every trial with the same eval config records the
same numbers, as `floor/chance/<metric>` and `floor/oracle/<metric>`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from mm1core.eval.scoring import cider, normalize_answer, vqa_accuracy

__all__ = [
    "best_constant_accuracy",
    "blind_caption_cider",
    "caption_oracle_cider",
    "fewshot_floors",
    "floor_metrics",
    "textcore_floors",
]


def best_constant_accuracy(references: Sequence[Sequence[str]]) -> float:
    """Mean VQA accuracy of the best single answer given to every item (the majority answer for one-answer items)."""
    if not references:
        raise ValueError("best_constant_accuracy needs at least one item")
    if all(len(answers) == 1 for answers in references):
        # One answer per item: VQA accuracy is exact match after normalisation, so the best constant is the most
        # frequent normalised answer (counted once, not scored candidate by candidate: arithmetic has ~200 answers).
        counts = Counter(normalize_answer(answers[0]) for answers in references)
        return max(counts.values()) / len(references)
    # The best constant is one of the answers that occur: any other answer scores 0 on every item.
    candidates = {normalize_answer(a) for answers in references for a in answers}
    return max(
        sum(vqa_accuracy(candidate, answers) for answers in references) / len(references)
        for candidate in candidates
    )


def blind_caption_cider(references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D when each item is captioned with the first reference of the next item (cyclically)."""
    if len(references) < 2:
        raise ValueError("a blind caption baseline needs two or more items")
    borrowed = [references[(i + 1) % len(references)][0] for i in range(len(references))]
    return cider(borrowed, [list(r) for r in references])[0]


def caption_oracle_cider(references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D of each item's reference 0 scored against its references 1..n-1 (inter-annotator level)."""
    if any(len(r) < 2 for r in references):
        raise ValueError("a caption oracle needs two or more references per item")
    return cider([r[0] for r in references], [list(r[1:]) for r in references])[0]


def floor_metrics(metric: str, chance: float, oracle: float) -> dict[str, float]:
    """The two recorded names of one metric's floors."""
    return {f"floor/chance/{metric}": chance, f"floor/oracle/{metric}": oracle}


def _by_category(
    references: Sequence[Sequence[str]], categories: Sequence[str]
) -> dict[str, list[Sequence[str]]]:
    grouped: dict[str, list[Sequence[str]]] = defaultdict(list)
    for answers, category in zip(references, categories, strict=True):
        grouped[category].append(answers)
    return grouped


def fewshot_floors(
    prefix: str,
    caption_references: Sequence[Sequence[str]],
    vqa_references: Sequence[Sequence[str]],
    vqa_categories: Sequence[str],
) -> dict[str, float]:
    """Floors of `{prefix}/cider`, `{prefix}/vqa/<category>`, `{prefix}/vqa` and `{prefix}/avg`."""
    out = floor_metrics(
        f"{prefix}/cider",
        blind_caption_cider(caption_references),
        caption_oracle_cider(caption_references),
    )
    grouped = _by_category(vqa_references, vqa_categories)
    chance = {category: best_constant_accuracy(answers) for category, answers in grouped.items()}
    for category, level in chance.items():
        out |= floor_metrics(f"{prefix}/vqa/{category}", level, 1.0)
    # `{prefix}/vqa` is the item-weighted mean over categories; a blind model knows each question's category from
    # its wording, so its best is each category's own constant, weighted the same way.
    overall = sum(level * len(grouped[c]) for c, level in chance.items()) / len(vqa_references)
    out |= floor_metrics(f"{prefix}/vqa", overall, 1.0)
    cider_chance, cider_oracle = out[f"floor/chance/{prefix}/cider"], out[f"floor/oracle/{prefix}/cider"]
    out |= floor_metrics(f"{prefix}/avg", (cider_chance + overall) / 2, (cider_oracle + 1.0) / 2)
    return out


def textcore_floors(references: Sequence[Sequence[str]], tasks: Sequence[str]) -> dict[str, float]:
    """Floors of `textcore/<task>` and of `textcore/avg` (the unweighted mean over tasks, as the suite's)."""
    chance = {
        task: best_constant_accuracy(answers) for task, answers in _by_category(references, tasks).items()
    }
    out: dict[str, float] = {}
    for task, level in chance.items():
        out |= floor_metrics(f"textcore/{task}", level, 1.0)
    return out | floor_metrics("textcore/avg", sum(chance.values()) / len(chance), 1.0)
