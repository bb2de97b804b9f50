"""A trial's stages end to end in the core: the evaluation suite's records, SFT, the encoder's rate, rounds."""

from __future__ import annotations

import dataclasses

import torch
from conftest import tiny_model

from mm1core.data.shards import trial_batch
from mm1core.data.text import QUESTION_CATEGORIES
from mm1core.losses import LOSSES
from mm1core.pipeline import run_trial
from mm1core.presets import get_preset
from mm1core.train import train


def _lm_terms(model, batch, cfg):
    logits = model(batch.tokens, batch.images)
    return LOSSES["lm"](logits, batch.targets, z_loss_coef=cfg.train.z_loss_coef)


def test_trial_reports_the_evaluation_suite_with_items_and_protocols(tmp_path):
    cfg = get_preset("tiny")
    outcome = run_trial(cfg, cache_dir=tmp_path)
    for metric in ("0shot/avg", "4shot/avg", "8shot/avg", "textcore/avg", "0shot/vqa/reading", "8shot/cider"):
        assert 0.0 <= outcome.metrics[metric] <= 10.0  # CIDEr-D is scaled by 10
    assert outcome.metrics["heldout/loss"] > 0
    metrics = {item["metric"] for item in outcome.eval.items}
    assert metrics == {f"{k}shot/{t}" for k in (0, 4, 8) for t in ("cider", "vqa")} | {"textcore/avg"}
    vqa = [item for item in outcome.eval.items if item["metric"] == "4shot/vqa"]
    assert len(vqa) == cfg.eval.num_items and {i["category"] for i in vqa} == set(QUESTION_CATEGORIES)
    assert outcome.eval.protocol["8shot"]["k"] == 8
    assert outcome.eval.protocol["0shot"]["items"] == cfg.eval.num_items


def test_sft_stage_trains_on_instructions_after_pretraining(tmp_path):
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(
        cfg,
        sft=dataclasses.replace(cfg.sft, steps=6, batch_size=4, warmup_steps=2),
        encoder_pretrain=dataclasses.replace(cfg.encoder_pretrain, loss="clip"),
    )
    seen: dict[str, list[int]] = {}
    stages: dict[str, set[str]] = {}

    def on_metrics(stage, step, metrics):
        for name in metrics:
            seen.setdefault(name, []).append(step)
            stages.setdefault(name.split("/")[0], set()).add(stage)

    outcome = run_trial(cfg, on_metrics=on_metrics, checkpoint_path=tmp_path / "trial.pt", cache_dir=tmp_path)
    assert seen["train/loss"][-1] == cfg.train.steps and seen["sft/loss"][-1] == 6
    # Each stage names itself and its metrics: the encoder's, the multimodal stage's and SFT's never mix.
    assert stages["encoder"] == {"encoder"} and stages["train"] == {"multimodal"} and stages["sft"] == {"sft"}
    assert (tmp_path / "trial.sft.pt").exists()
    assert "8shot/avg" in outcome.metrics
    # Resuming a finished trial replays nothing and ends where it ended.
    again = run_trial(cfg, checkpoint_path=tmp_path / "trial.pt", cache_dir=tmp_path)
    drop = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}  # noqa: E731
    assert drop(again.metrics) == drop(outcome.metrics)


def test_encoder_lr_scale_sets_the_encoders_share_of_the_rate():
    cfg = get_preset("tiny")
    model, tokenizer = tiny_model(cfg)
    batch = trial_batch(cfg, tokenizer, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(
        model,
        lambda step: _lm_terms(model, batch, cfg),
        dataclasses.replace(cfg.train, steps=3, warmup_steps=1),
        device=torch.device("cpu"),
        lr_scales={"image_encoder": 0.0},
    )
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and not any(n.startswith("image_encoder.") for n in moved)
    assert any(n.startswith("lm.") for n in moved) and any(n.startswith("connector.") for n in moved)


def test_intermediate_rounds_score_a_subset_and_the_final_round_all_items(tmp_path):
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, eval_every=10),
        eval=dataclasses.replace(cfg.eval, intermediate_items=3, shots=(0,)),
    )
    rounds: dict[int, set[str]] = {}

    def record(stage: str, step: int, metrics: dict[str, float]) -> None:
        if "0shot/vqa" in metrics:
            rounds[step] = {m.removeprefix("0shot/vqa/") for m in metrics if m.startswith("0shot/vqa/")}

    outcome = run_trial(cfg, on_metrics=record, cache_dir=tmp_path)
    # VQA items cycle through the categories, so the first 3 items hold the first 3 categories only.
    assert rounds[10] == set(QUESTION_CATEGORIES[:3])
    assert rounds[cfg.train.steps] == set(QUESTION_CATEGORIES)
    assert outcome.eval.protocol["0shot"]["items"] == cfg.eval.num_items
