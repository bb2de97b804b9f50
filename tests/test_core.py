"""mm1core contracts: shapes per registered part, placeholder alignment, training, resume, the world's determinism."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_model

from mm1core.config import (
    CONNECTOR_TOKEN_RULES,
    ConnectorConfig,
    ViTConfig,
    apply_overrides,
    config_from_dict,
    config_problems,
    config_to_dict,
)
from mm1core.connectors import CONNECTORS, build_connector
from mm1core.data.shards import trial_batch
from mm1core.data.sources import build_tokenizer
from mm1core.data.text import QUESTION_CATEGORIES
from mm1core.data.world import sample_scene
from mm1core.losses import LOSSES
from mm1core.pipeline import run_trial
from mm1core.presets import PRESETS, get_preset
from mm1core.train import get_lr, train
from mm1core.vit import STEM_BUILDERS, ViT


def _lm_terms(model, batch, cfg):
    logits = model(batch.tokens, batch.images)
    return LOSSES["lm"](logits, batch.targets, z_loss_coef=cfg.train.z_loss_coef)


@pytest.mark.parametrize("stem", sorted(STEM_BUILDERS))
def test_vit_shapes(stem):
    vit = ViT(ViTConfig(resolution=32, patch_size=8, width=32, depth=1, num_heads=2, stem=stem))
    out = vit(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, vit.num_patches, vit.embed_dim) == (3, 16, 32)


def test_connector_registry_matches_validation_rules():
    assert set(CONNECTORS) == set(CONNECTOR_TOKEN_RULES)


@pytest.mark.parametrize("name", sorted(CONNECTORS))
@pytest.mark.parametrize("num_image_tokens", [1, 4, 16])
def test_connector_shapes(name, num_image_tokens):
    connector = build_connector(
        ConnectorConfig(name=name, num_image_tokens=num_image_tokens), vision_dim=24, grid_size=4, lm_dim=40
    )
    assert connector(torch.randn(2, 16, 24)).shape == (2, num_image_tokens, 40)


def test_connector_refuses_more_tokens_than_patches():
    with pytest.raises(ValueError, match="exceed the 4x4=16 patches"):
        build_connector(
            ConnectorConfig(name="avg-pool", num_image_tokens=64), vision_dim=8, grid_size=4, lm_dim=8
        )


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_valid(preset):
    cfg = get_preset(preset)
    assert config_problems(cfg) == []
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("preset", ["tiny", "small"])  # base and paper-1.2b are GPU sizes
def test_cpu_presets_build_and_run_a_batch(preset):
    cfg = get_preset(preset)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    model, tokenizer = tiny_model(cfg)
    batch = trial_batch(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=2)), tokenizer, 0
    )
    logits = model(batch.tokens, batch.images)
    assert logits.shape == (*batch.tokens.shape, tokenizer.vocab_size)


def test_placeholder_image_mismatch_is_an_error():
    cfg = get_preset("tiny")
    model, tokenizer = tiny_model(cfg)
    batch = trial_batch(cfg, tokenizer, 0)
    with pytest.raises(ValueError, match="image placeholder tokens but"):
        model(batch.tokens, batch.images[:-1])
    with pytest.raises(ValueError, match="but no images were given"):
        model(batch.tokens, batch.images[:0])


def test_several_images_per_sequence_land_in_order():
    cfg = config_from_dict(apply_overrides(config_to_dict(get_preset("tiny")), {"data.ratio": "0:1:0"}))
    model, tokenizer = tiny_model(cfg)
    batch = trial_batch(cfg, tokenizer, 0)
    assert batch.images.shape[0] == sum(batch.images_per_row) and min(batch.images_per_row) >= 2
    # Changing only the last image must change logits only after its placeholders.
    images = batch.images.clone()
    images[-1] = 1.0 - images[-1]
    with torch.no_grad():
        a, b = model(batch.tokens, batch.images), model(batch.tokens, images)
    last_row = batch.tokens[-1]
    first_slot_of_last_image = (
        (last_row == tokenizer.image_id).nonzero()[cfg.connector.num_image_tokens].item()
    )
    assert torch.equal(a[:-1], b[:-1])
    assert torch.equal(a[-1, :first_slot_of_last_image], b[-1, :first_slot_of_last_image])
    assert not torch.equal(a[-1], b[-1])


def test_freeze_names_what_trains():
    model, _ = tiny_model(get_preset("tiny"))
    assert model.freeze("connector-warmup") == ("connector",)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert all(p.requires_grad for p in model.connector.parameters())
    with pytest.raises(ValueError, match="unknown freeze stage"):
        model.freeze("everything")


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    cfg = get_preset("small").train
    assert get_lr(0, cfg) == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert get_lr(cfg.warmup_steps - 1, cfg) == pytest.approx(cfg.lr)
    assert get_lr(cfg.steps - 1, cfg) == pytest.approx(0.1 * cfg.lr, rel=1e-3)


def test_loss_decreases_on_a_fixed_batch():
    cfg = get_preset("tiny")
    model, tokenizer = tiny_model(cfg)
    batch = trial_batch(cfg, tokenizer, 0)
    losses = []
    train_cfg = dataclasses.replace(cfg.train, steps=40, warmup_steps=1, log_every=10)
    train(
        model,
        lambda step: _lm_terms(model, batch, cfg),
        train_cfg,
        device=torch.device("cpu"),
        on_log=lambda step, m: losses.append(m["train/loss"]),
    )
    assert losses[-1] < 0.6 * losses[0]


class _Killed(Exception):
    pass


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    cfg = get_preset("tiny")  # 20 steps, checkpoint every 10, log every 5
    tokenizer = build_tokenizer(cfg.data)

    def run(checkpoint, kill_at=None):
        model, _ = tiny_model(cfg)
        log = {}

        def on_log(step, metrics):
            if step == kill_at:
                raise _Killed
            log[step] = metrics["train/loss"]

        try:
            train(
                model,
                lambda step: _lm_terms(model, trial_batch(cfg, tokenizer, step), cfg),
                cfg.train,
                device=torch.device("cpu"),
                on_log=on_log,
                checkpoint_path=checkpoint,
            )
        except _Killed:
            pass
        return model, log

    straight, straight_log = run(None)
    run(tmp_path / "ckpt.pt", kill_at=15)  # dies after step 15; its last checkpoint is step 10's
    resumed, resumed_log = run(tmp_path / "ckpt.pt")
    assert sorted(resumed_log) == [15, 20]  # it really resumed rather than starting over
    for step, loss in resumed_log.items():
        assert loss == straight_log[step]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=False):
        assert torch.equal(a, b), name


def test_non_finite_loss_aborts_with_a_clear_error():
    cfg = config_from_dict(
        apply_overrides(config_to_dict(get_preset("tiny")), {"train.lr": 100.0, "train.steps": 20})
    )
    with pytest.raises(FloatingPointError, match="non-finite (training loss|gradient norm)"):
        run_trial(cfg)


def test_trial_reports_the_evaluation_suite_with_items_and_protocols():
    cfg = get_preset("tiny")
    outcome = run_trial(cfg)
    for metric in ("0shot/avg", "4shot/avg", "8shot/avg", "textcore/avg", "0shot/vqa/reading", "8shot/cider"):
        assert 0.0 <= outcome.metrics[metric] <= 10.0  # CIDEr-D is scaled by 10
    assert outcome.metrics["heldout/loss"] > 0
    metrics = {item["metric"] for item in outcome.eval.items}
    assert metrics == {f"{k}shot/{t}" for k in (0, 4, 8) for t in ("cider", "vqa")} | {"textcore/avg"}
    vqa = [item for item in outcome.eval.items if item["metric"] == "4shot/vqa"]
    assert len(vqa) == cfg.eval.num_items and {i["category"] for i in vqa} == set(QUESTION_CATEGORIES)
    assert outcome.eval.protocol["8shot"]["k"] == 8
    assert outcome.eval.protocol["0shot"]["items"] == cfg.eval.num_items


def test_clip_loss_matches_a_hand_computation():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # two captions, then one hard negative
    scale = torch.tensor(0.0)  # exp(0) = 1
    sims = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    i2t = (-sims[0, 0] + sims[0].logsumexp(0) - sims[1, 1] + sims[1].logsumexp(0)) / 2
    t2i = (-sims[0, 0] + sims[:, 0].logsumexp(0) - sims[1, 1] + sims[:, 1].logsumexp(0)) / 2
    terms = LOSSES["clip"](image, text, scale)
    assert terms["contrastive_loss"].item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-6)


def test_hard_negative_changes_exactly_one_detail():
    import random

    from mm1core.encoder_pretrain import hard_negative

    world = get_preset("tiny").data.world
    rng = random.Random(0)
    for seed in range(100):
        scene = sample_scene(world, seed)
        negative = hard_negative(scene, rng)
        digits = sum(
            a != b
            for s, n in zip(scene.signs, negative.signs, strict=True)
            for a, b in zip(s.text, n.text, strict=True)
        )
        if len(negative.objects) == len(scene.objects) - 1:
            assert digits == 0 and set(negative.objects) < set(scene.objects)
            continue
        attributes = sum(
            (a.color != b.color) + (a.shape != b.shape) + (a.size != b.size)
            for a, b in zip(scene.objects, negative.objects, strict=True)
        )
        assert digits + attributes == 1


def test_encoder_stage_is_built_once_then_served_from_the_cache(tmp_path):
    cfg = config_from_dict(
        apply_overrides(config_to_dict(get_preset("tiny")), {"encoder_pretrain.loss": "clip"})
    )
    first = run_trial(cfg, cache_dir=tmp_path)
    second = run_trial(cfg, cache_dir=tmp_path)
    assert first.built_encoder and not second.built_encoder

    def scores(outcome):
        return {k: v for k, v in outcome.metrics.items() if not k.startswith("time/")}

    assert scores(first) == scores(second)  # the cached encoder is the one that was built
    # By default every trial seed pre-trains its own encoder, so a study's seeds sample the encoder's randomness.
    assert run_trial(dataclasses.replace(cfg, seed=1), cache_dir=tmp_path).built_encoder
    # With seed_from "stage", trial seeds share one encoder; the stage's own seed still makes another.
    shared = dataclasses.replace(
        cfg, encoder_pretrain=dataclasses.replace(cfg.encoder_pretrain, seed_from="stage")
    )
    assert run_trial(shared, cache_dir=tmp_path).built_encoder
    assert not run_trial(dataclasses.replace(shared, seed=1), cache_dir=tmp_path).built_encoder
    other_encoder = dataclasses.replace(
        shared, encoder_pretrain=dataclasses.replace(shared.encoder_pretrain, seed=1)
    )
    assert run_trial(other_encoder, cache_dir=tmp_path).built_encoder
    assert len(list(tmp_path.glob("encoder-clip-*.pt"))) == 4


def test_stem_builders_match_validation_names():
    from mm1core.config import STEMS

    assert set(STEM_BUILDERS) == set(STEMS)


def test_unknown_freeze_stage_is_a_config_problem():
    cfg = config_from_dict(
        apply_overrides(config_to_dict(get_preset("tiny")), {"train.freeze": "encoder-only"})
    )
    assert [p.path for p in config_problems(cfg)] == ["train.freeze"]


def test_sft_stage_trains_on_instructions_after_pretraining(tmp_path):
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, steps=6, batch_size=4, warmup_steps=2))
    seen: dict[str, list[int]] = {}

    def on_metrics(step, metrics):
        for name in metrics:
            seen.setdefault(name, []).append(step)

    outcome = run_trial(cfg, on_metrics=on_metrics, checkpoint_path=tmp_path / "trial.pt", cache_dir=tmp_path)
    assert seen["train/loss"][-1] == cfg.train.steps and seen["sft/loss"][-1] == 6
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

    def record(step: int, metrics: dict[str, float]) -> None:
        if "0shot/vqa" in metrics:
            rounds[step] = {m.removeprefix("0shot/vqa/") for m in metrics if m.startswith("0shot/vqa/")}

    outcome = run_trial(cfg, on_metrics=record, cache_dir=tmp_path)
    # VQA items cycle through the categories, so the first 3 items hold the first 3 categories only.
    assert rounds[10] == set(QUESTION_CATEGORIES[:3])
    assert rounds[cfg.train.steps] == set(QUESTION_CATEGORIES)
    assert outcome.eval.protocol["0shot"]["items"] == cfg.eval.num_items


def test_image_token_places_train_with_the_connector_and_can_be_left_out():
    cfg = get_preset("tiny")
    model, _ = tiny_model(cfg)
    assert model.image_token_pos.shape == (1, cfg.connector.num_image_tokens, cfg.lm.width)
    model.freeze("connector-warmup")
    assert model.image_token_pos.requires_grad
    model.freeze("frozen-encoder")
    assert model.image_token_pos.requires_grad
    images = torch.rand(2, 3, cfg.encoder.resolution, cfg.encoder.resolution)
    with torch.no_grad():
        placed = model.encode_images(images)
        bare = model.connector(model.image_encoder(images))
    assert torch.allclose(placed - bare, model.image_token_pos.expand_as(placed))
    plain = dataclasses.replace(cfg, connector=dataclasses.replace(cfg.connector, token_positions="none"))
    assert tiny_model(plain)[0].image_token_pos is None
