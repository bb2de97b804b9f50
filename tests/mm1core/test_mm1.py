"""MM1: image tokens land at their placeholders in order, freeze stages, image-token places."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_model

from mm1core.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
)
from mm1core.data.shards import trial_batch
from mm1core.presets import get_preset


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
