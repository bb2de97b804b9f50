"""The generated world and its data: determinism, exact mixture proportions, documents, prompts, answers."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import numpy as np
import pytest

from mm1core.config import DataConfig, EvalConfig, WorldConfig
from mm1core.data.documents import IMAGE_PLACEHOLDER, Document
from mm1core.data.render import render_scene
from mm1core.data.sources import (
    build_tokenizer,
    make_batch,
    mixture_weights,
    sft_batch,
    source_counts,
    source_document,
)
from mm1core.data.text import QUESTION_CATEGORIES, question, recaption
from mm1core.data.world import Scene, SceneObject, Sign, positions, sample_scene
from mm1core.encoder_pretrain import _caption_batch
from mm1core.eval.suite import fewshot_prompt, textcore_prompt
from mm1core.presets import get_preset

WORLD = WorldConfig()


def test_scenes_and_images_are_deterministic_by_seed():
    a, b = sample_scene(WORLD, 7), sample_scene(WORLD, 7)
    assert a == b
    assert render_scene(a, WORLD, 64).tobytes() == render_scene(b, WORLD, 64).tobytes()
    assert sample_scene(WORLD, 8) != a
    small, large = render_scene(a, WORLD, 32), render_scene(a, WORLD, 64)
    assert small.shape == (32, 32, 3) and large.shape == (64, 64, 3)
    # Same content at every resolution: the coarse image is the fine one averaged down (box filter), up to rounding.
    pooled = large.reshape(32, 2, 32, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(pooled - small).mean() < 2.0


def test_scenes_respect_the_difficulty_knobs():
    world = WorldConfig(grid_size=5, min_objects=3, max_objects=5, min_signs=2, max_signs=2, sign_length=4)
    for seed in range(200):
        scene = sample_scene(world, seed)
        assert 3 <= len(scene.objects) <= 5 and len(scene.signs) == 2
        assert all(len(s.text) == 4 for s in scene.signs)
        cells = [o.cell for o in scene.objects] + [s.cell for s in scene.signs]
        assert len(set(cells)) == len(cells) and max(cells) < 25


@pytest.mark.parametrize(
    "weights",
    [{"a": 5, "b": 5, "c": 1}, {"a": 1, "b": 0, "c": 0}, {"a": 0.3, "b": 0.2, "c": 0.45, "d": 0.05}],
)
def test_mixture_counts_match_the_ratio_in_every_prefix(weights):
    total = sum(weights.values())
    seen = Counter()
    for step in range(300):
        counts = source_counts(weights, step * 32, 32)
        assert sum(counts.values()) == 32 and all(n >= 0 for n in counts.values())
        seen.update(counts)
        n = (step + 1) * 32
        for name, w in weights.items():
            assert abs(seen[name] - w / total * n) <= 1.0, (name, step)


def test_batches_sample_sources_in_exact_proportions():
    data = DataConfig(ratio="5:5:1", recaption_share=0.2)
    tokenizer = build_tokenizer(data)
    seen = Counter()
    for step in range(40):
        batch = make_batch(
            data, tokenizer, batch_size=22, resolution=32, num_image_tokens=4, seed=0, step=step
        )
        seen.update(batch.sources)
    n = 40 * 22
    expected = {k: v * n for k, v in mixture_weights(data).items()}
    assert expected == pytest.approx({"caption": 320, "recaption": 80, "interleaved": 400, "text": 80})
    for source, count in expected.items():
        assert abs(seen[source] - count) <= 1


def test_batches_are_a_pure_function_of_seed_and_step():
    data = DataConfig(ratio="5:5:1")
    tokenizer = build_tokenizer(data)
    make = lambda seed, step: make_batch(  # noqa: E731
        data, tokenizer, batch_size=8, resolution=32, num_image_tokens=4, seed=seed, step=step
    )
    a, b = make(0, 3), make(0, 3)
    assert a.tokens.equal(b.tokens) and a.images.equal(b.images) and a.targets.equal(b.targets)
    assert not make(1, 3).tokens.equal(a.tokens)


def test_every_document_is_well_formed_and_fits():
    data = DataConfig(max_seq_len=200, max_images_per_document=8)
    tokenizer = build_tokenizer(data)
    rng = random.Random(0)
    pages = Counter()
    for _ in range(200):
        for source in ("caption", "recaption", "interleaved", "text"):
            doc = source_document(source, rng, data, num_image_tokens=16)
            assert doc.text.split().count(IMAGE_PLACEHOLDER) == len(doc.images)
            assert len(tokenizer.encode(doc.text)) + 15 * len(doc.images) + 1 <= data.max_seq_len
            if source == "interleaved":
                assert len(doc.images) >= 2
                qa = doc.text.count("question")
                # A page lists captions, or question-answer pairs of a single category, one per image.
                assert qa in (0, len(doc.images))
                pages["qa" if qa else "captions"] += 1
            if source == "text":
                assert not doc.images and "question" in doc.text
    assert pages["qa"] > 50 and pages["captions"] > 50


def test_a_question_page_asks_several_different_questions_about_each_image():
    one = DataConfig(max_seq_len=384)
    three = dataclasses.replace(one, questions_per_image=3)
    asked = Counter()
    for seed in range(300):
        page = source_document("interleaved", random.Random(seed), three, num_image_tokens=16)
        # Caption pages draw as before: the knob changes question pages only.
        single = source_document("interleaved", random.Random(seed), one, num_image_tokens=16)
        if "question" not in page.text:
            assert page.text == single.text
            continue
        items = page.text.split(IMAGE_PLACEHOLDER)[1:]
        assert len(items) == len(page.images)
        for item in items:
            questions = [q.split(" ? ")[0] for q in item.split("question")[1:]]
            assert 1 <= len(questions) <= 3 and len(set(questions)) == len(questions)  # each asked once
            asked[len(questions)] += 1
    assert asked[3] > asked[1] > 0  # fewer where the scene has fewer things to ask about (one or two signs)


def test_a_document_with_the_wrong_number_of_images_is_refused():
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        Document("<image> a <image> b", (sample_scene(WORLD, 0),), "interleaved")


def test_questions_have_the_right_answers_on_a_hand_made_scene():
    names = positions(WORLD.grid_size)
    scene = Scene(
        objects=(
            SceneObject("circle", "red", "large", 0),  # r0c0
            SceneObject("square", "blue", "small", 3),  # r0c3
            SceneObject("circle", "red", "small", 12),  # r3c0
        ),
        signs=(Sign("407", 2, 5),),
        jitter_seed=0,
    )
    answers = {}
    for seed in range(300):
        for category in QUESTION_CATEGORIES:
            asked, answer = question(scene, WORLD, category, random.Random(seed))
            answers[asked] = answer
    assert answers[f"what does the sign at {names[5]} read"] == "4 0 7"
    assert answers["what color is the object at r0c3"] == "blue"
    assert answers["what shape is the object at r3c0"] == "circle"
    assert answers["how many objects are there"] == "3"
    assert answers["how many red objects are there"] == "2"
    assert answers["how many green objects are there"] == "0"
    assert answers["where is the blue square"] == "r0c3"
    # Two red circles: only size tells them apart.
    assert answers["where is the large red circle"] == "r0c0"
    assert answers["is the blue square right of the large red circle"] == "yes"
    assert answers["is the large red circle right of the blue square"] == "no"
    assert answers["is the large red circle above the small red circle"] == "yes"
    assert "there are 3 objects and 1 sign ." in recaption(scene, WORLD, random.Random(0))


@pytest.mark.parametrize("k", [0, 4, 8])
@pytest.mark.parametrize("task", ["caption", "vqa"])
def test_fewshot_prompts_hold_exactly_k_demonstrations_and_the_query(task, k):
    data, cfg = DataConfig(), EvalConfig()
    for item in range(14):
        prompt = fewshot_prompt(data, cfg, task, k, item)
        assert prompt.text.split().count(IMAGE_PLACEHOLDER) == k + 1 == len(prompt.scenes)
        query = prompt.scenes[-1]
        assert query not in prompt.scenes[:-1]
        if task == "vqa":
            assert prompt.text.count("question") == k + 1 and prompt.text.endswith("answer")
            assert prompt.text.count("answer") == k + 1
        # The same item gets the same prompt whatever the trial; another eval-set seed gets another.
        assert fewshot_prompt(data, cfg, task, k, item) == prompt
        other = fewshot_prompt(data, dataclasses.replace(cfg, set_seed=1), task, k, item)
        assert other.scenes[-1] != prompt.scenes[-1]


def test_fewshot_queries_are_the_zero_shot_queries():
    """Shot counts differ only in the demonstrations, so 0-, 4- and 8-shot scores are paired per item."""
    data, cfg = DataConfig(), EvalConfig()
    for item in range(10):
        zero, eight = fewshot_prompt(data, cfg, "vqa", 0, item), fewshot_prompt(data, cfg, "vqa", 8, item)
        assert zero.scenes[-1] == eight.scenes[-1] and zero.references == eight.references
        assert eight.text.endswith(zero.text.split(maxsplit=1)[1])


def test_text_only_items_need_no_images():
    data, cfg = DataConfig(), EvalConfig()
    prompts = [textcore_prompt(data, cfg, i) for i in range(20)]
    assert {p.category for p in prompts} == {"scene_qa", "arithmetic"}
    for p in prompts:
        assert IMAGE_PLACEHOLDER not in p.text and not p.scenes and p.text.endswith("answer")
    arithmetic = next(p for p in prompts if p.category == "arithmetic")
    a, b = arithmetic.text.split(" plus ")
    left = int(a.split("is ")[1].replace(" ", ""))
    right = int(b.split(" ?")[0].replace(" ", ""))
    assert arithmetic.references == [" ".join(str(left + right))]


def test_sft_batches_take_the_loss_on_answers_only():
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, steps=5, batch_size=4))
    tokenizer = build_tokenizer(cfg.data)
    batch = sft_batch(cfg, tokenizer, 0)
    answer_id, stop_id = tokenizer.encode("answer")[0], tokenizer.encode(".")[0]
    for row in range(4):
        tokens, targets = batch.tokens[row].tolist(), batch.targets[row].tolist()
        start = tokens.index(answer_id)
        scored = [t for t in targets if t != -100]
        # Scored: the answer's words, its full stop and <eos>; nothing of the image or the question.
        assert scored == [t for t in tokens[start + 1 :] if t != tokenizer.pad_id] + [tokenizer.eos_id]
        assert scored[-2] == stop_id


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_encoder_captions_mix_in_recaptions_and_hard_negatives_differ(share):
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(
        cfg, encoder_pretrain=dataclasses.replace(cfg.encoder_pretrain, recaption_share=share, batch_size=16)
    )
    scenes, texts = _caption_batch(cfg, 0)
    captions, negatives = texts[:16], texts[16:]
    complete = sum(c.startswith("there are") for c in captions)
    assert complete == round(16 * share)
    assert len(negatives) == 16 * cfg.encoder_pretrain.num_hard_negatives
    assert sum(n != c for n, c in zip(negatives, captions, strict=True)) >= 15


def test_length_groups_partition_the_batch_and_keep_its_loss():
    import torch
    from conftest import tiny_model

    from mm1core.data.shards import trial_batch
    from mm1core.losses import LOSSES

    cfg = get_preset("tiny")
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, ratio="5:5:1"),
        train=dataclasses.replace(cfg.train, batch_size=12),
    )
    model, tokenizer = tiny_model(cfg)
    batch = trial_batch(cfg, tokenizer, 0)
    parts = batch.by_length(3)
    assert sorted(s for p in parts for s in p.sources) == sorted(batch.sources)
    assert sum(p.images.shape[0] for p in parts) == batch.images.shape[0]
    assert max(p.tokens.shape[1] for p in parts) == batch.tokens.shape[1]
    assert min(p.tokens.shape[1] for p in parts) < batch.tokens.shape[1]  # the point: less padding

    def ce(b):
        return LOSSES["lm"](model(b.tokens, b.images), b.targets, z_loss_coef=0.0)["ce_loss"]

    with torch.no_grad():
        targets = int((batch.targets != -100).sum())
        grouped = sum(int((p.targets != -100).sum()) / targets * ce(p) for p in parts)
        assert grouped.item() == pytest.approx(ce(batch).item(), rel=1e-5)
