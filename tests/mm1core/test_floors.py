"""Capability floors and image reliance: chance and oracle levels by hand, and reliance on models that see or cannot."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from conftest import tiny_model

from mm1core.config import EvalConfig
from mm1core.data.sources import batch_from_documents
from mm1core.data.text import QUESTION_CATEGORIES
from mm1core.eval.floors import (
    best_constant_accuracy,
    blind_caption_cider,
    caption_oracle_cider,
    fewshot_floors,
    textcore_floors,
)
from mm1core.eval.heldout import heldout_documents, heldout_metrics
from mm1core.eval.scoring import cider, normalize_answer
from mm1core.eval.suite import _query_scene, evaluate, fewshot_prompt, textcore_prompt
from mm1core.losses import LOSSES
from mm1core.mm1 import eval_mode
from mm1core.presets import get_preset

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def _small_eval(num_items: int = 42):
    cfg = get_preset("tiny")
    return dataclasses.replace(cfg, eval=EvalConfig(num_items=num_items, batch_size=num_items, shots=(0, 2)))


def test_best_constant_is_the_majority_answer():
    assert best_constant_accuracy([["red"], ["red"], ["blue"]]) == pytest.approx(2 / 3)
    # Answers count as one after the VQA normalisation: "Two" is "2", "a circle." is "circle".
    assert best_constant_accuracy([["Two"], ["2"], ["3"], ["a circle."], ["circle"]]) == pytest.approx(2 / 5)
    # Several human answers per item: the best constant scores VQA accuracy, not exact match. "yes" on item 0
    # (three "yes" of four): leaving out a "yes" leaves 2 of 3 needed, leaving out the "no" leaves 3 -> 0.75.
    many = [["yes", "yes", "yes", "no"], ["no"] * 4, ["yes"] * 4]
    assert best_constant_accuracy(many) == pytest.approx((0.75 + 0.0 + 1.0) / 3)


def test_vqa_and_text_chance_levels_match_a_hand_count_on_the_eval_set():
    cfg = _small_eval()
    questions = [fewshot_prompt(cfg.data, cfg.eval, "vqa", 0, i) for i in range(cfg.eval.num_items)]
    captions = [fewshot_prompt(cfg.data, cfg.eval, "caption", 0, i) for i in range(cfg.eval.num_items)]
    floors = fewshot_floors(
        "0shot",
        [p.references for p in captions],
        [p.references for p in questions],
        [p.category for p in questions],
    )
    total = 0
    for category in QUESTION_CATEGORIES:
        answers = [normalize_answer(p.references[0]) for p in questions if p.category == category]
        majority = Counter(answers).most_common(1)[0][1]
        assert floors[f"floor/chance/0shot/vqa/{category}"] == pytest.approx(majority / len(answers))
        assert floors[f"floor/oracle/0shot/vqa/{category}"] == 1.0
        total += majority
    assert floors["floor/chance/0shot/vqa"] == pytest.approx(total / cfg.eval.num_items)
    texts = [textcore_prompt(cfg.data, cfg.eval, i) for i in range(cfg.eval.num_items)]
    text_floors = textcore_floors([p.references for p in texts], [p.category for p in texts])
    per_task = []
    for task in ("scene_qa", "arithmetic"):
        answers = [normalize_answer(p.references[0]) for p in texts if p.category == task]
        per_task.append(Counter(answers).most_common(1)[0][1] / len(answers))
        assert text_floors[f"floor/chance/textcore/{task}"] == pytest.approx(per_task[-1])
    assert text_floors["floor/chance/textcore/avg"] == pytest.approx(sum(per_task) / 2)


def test_caption_oracle_beats_the_blind_caption():
    cfg = _small_eval()
    references = [
        fewshot_prompt(cfg.data, cfg.eval, "caption", 0, i).references for i in range(cfg.eval.num_items)
    ]
    blind, oracle = blind_caption_cider(references), caption_oracle_cider(references)
    assert 0 < blind < oracle
    # The blind caption is the next item's first reference, scored against this item's references.
    shifted = [references[(i + 1) % len(references)][0] for i in range(len(references))]
    assert blind == pytest.approx(cider(shifted, references)[0])
    assert oracle == pytest.approx(cider([r[0] for r in references], [r[1:] for r in references])[0])


def test_evaluate_records_floors_for_every_metric_family_identically_for_any_model():
    cfg = _small_eval(num_items=14)
    runs = []
    for seed in (0, 1):
        model, tokenizer = tiny_model(cfg)
        torch.manual_seed(seed)
        for p in model.parameters():
            p.data.normal_(0, 0.02)
        runs.append(
            evaluate(
                model, tokenizer, cfg.data, cfg.eval, resolution=32, num_image_tokens=4, device=CPU
            ).metrics
        )
    first, second = runs
    scored = [m for m in first if not m.startswith(("floor/", "heldout/"))]
    for metric in scored:
        assert f"floor/chance/{metric}" in first and f"floor/oracle/{metric}" in first, metric
        assert first[f"floor/chance/{metric}"] <= first[f"floor/oracle/{metric}"]
    floors = {k: v for k, v in first.items() if k.startswith("floor/")}
    assert floors == {k: v for k, v in second.items() if k.startswith("floor/")}
    # The VQA queries do not depend on k, so neither do their floors.
    assert first["floor/chance/0shot/vqa/color"] == first["floor/chance/2shot/vqa/color"]
    reliance = first["heldout/loss_other_images"] - first["heldout/loss"]
    assert first["heldout/image_reliance"] == pytest.approx(reliance)


def _trained_reliance(constant_images: bool, steps: int = 250) -> tuple[dict[str, float], object]:
    """A tiny model fitted to the held-out documents (with their own images, or one image for all), then measured."""
    cfg = _small_eval(num_items=14)
    model, tokenizer = tiny_model(cfg)
    scenes = [_query_scene(cfg.data, cfg.eval, i) for i in range(cfg.eval.num_items)]
    documents = [doc for doc, _ in heldout_documents(scenes, cfg.data, cfg.eval.set_seed)]
    batch = batch_from_documents(
        documents,
        tokenizer,
        cfg.data.world,
        resolution=32,
        num_image_tokens=4,
        max_seq_len=cfg.data.max_seq_len,
    )
    images = batch.images[:1].expand_as(batch.images) if constant_images else batch.images  # (M, 3, R, R)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = LOSSES["lm"](model(batch.tokens, images), batch.targets, z_loss_coef=0.0)["ce_loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def measure() -> dict[str, float]:
        with eval_mode(model), torch.no_grad():
            return heldout_metrics(
                model,
                tokenizer,
                cfg.data,
                scenes,
                set_seed=cfg.eval.set_seed,
                batch_size=10,  # several batches, one splitting a scene's caption from its question
                resolution=32,
                num_image_tokens=4,
                device=CPU,
            )

    return measure(), (model, measure)


def test_image_reliance_is_positive_for_a_model_that_uses_its_images_and_zero_for_one_that_cannot():
    seeing, (model, measure) = _trained_reliance(constant_images=False)
    assert seeing["heldout/image_reliance"] > 0.1  # five times the report's "blind" threshold
    # The same model with its image path cut: swapping images cannot change a thing.
    for p in model.connector.parameters():
        p.data.zero_()
    cut = measure()
    assert cut["heldout/image_reliance"] == pytest.approx(0.0, abs=1e-6)
    # Trained as long, but shown one image for every document: it has nothing to learn from images.
    blind, _ = _trained_reliance(constant_images=True)
    assert abs(blind["heldout/image_reliance"]) < 0.005
    assert blind["heldout/loss"] == pytest.approx(blind["heldout/loss_other_images"], abs=0.005)


def test_heldout_documents_pair_a_caption_and_a_question_per_scene():
    cfg = _small_eval(num_items=14)
    scenes = [_query_scene(cfg.data, cfg.eval, i) for i in range(cfg.eval.num_items)]
    documents = heldout_documents(scenes, cfg.data, cfg.eval.set_seed)
    assert [i for _, i in documents] == [i for i in range(14) for _ in range(2)]
    assert all(doc.images == (scenes[i],) for doc, i in documents)
    assert [doc.source for doc, _ in documents[:2]] == ["caption", "qa"]
    assert " question " in documents[1][0].text and documents[1][0].text.endswith(" .")
    with pytest.raises(ValueError, match="two or more held-out scenes"):
        model, tokenizer = tiny_model(cfg)
        heldout_metrics(
            model,
            tokenizer,
            cfg.data,
            scenes[:1],
            set_seed=0,
            batch_size=4,
            resolution=32,
            num_image_tokens=4,
            device=CPU,
        )
