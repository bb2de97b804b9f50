"""Image-encoder pre-training stages, selectable by name (the study axis `encoder_loss`), cached across trials.

`aim`: autoregressive image modelling (AIM, El-Nouby et al. 2024): prefix-causal attention over the patches in
raster order, each position regressing the next patch's normalised pixels, scored on non-prefix patches only.

`clip`: contrastive image-caption pre-training with a small text tower, on alt-text captions, or a share
`recaption_share` of complete synthetic captions instead (the paper's VeCap data: the pre-training data axis). The image
embedding is a projection of the patch grid average-pooled to the world's grid of places (at most the patch grid), so
the encoder must keep *what is where*, one place per pooled cell, which the connector needs later (pooling a 4x4 world
to 3x3 cells would blend places); each image also competes against captions of itself with one detail changed (hard
negatives).

Shape suffixes: B images, N patches, D encoder width, E embedding width, T caption tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mm1core.config import ENCODER_LOSSES, MM1Config, WorldConfig, config_to_dict, encoder_seed, stage_loop
from mm1core.data.render import render_scene
from mm1core.data.sources import encode_document, images_to_tensor, pad_rows, source_counts
from mm1core.data.text import alt_caption, recaption, world_vocabulary
from mm1core.data.tokenizer import WordTokenizer
from mm1core.data.world import COLORS, SHAPES, SIZES, Scene, sample_scene
from mm1core.losses import LOSSES
from mm1core.losses.aim import normalised_patches
from mm1core.stage_cache import cached_stage, encoder_stage_key
from mm1core.text_tower import TextTower
from mm1core.train import train
from mm1core.vit import ViT

__all__ = ["hard_negative", "pretrain_encoder", "train_aim", "train_clip"]


def _seed(cfg: MM1Config) -> str:
    return encoder_seed(config_to_dict(cfg))


def _torch_seed(cfg: MM1Config) -> int:
    return int.from_bytes(hashlib.sha256(_seed(cfg).encode()).digest()[:4], "little")


def hard_negative(scene: Scene, rng: random.Random) -> Scene:
    """The scene with exactly one detail changed: a sign digit, or one object's colour, shape or size, or one object
    fewer."""
    choice = rng.choice(["digit", "color", "shape", "size", "drop"] if scene.objects else ["digit"])
    if choice == "digit":
        k = rng.randrange(len(scene.signs))
        sign = scene.signs[k]
        i = rng.randrange(len(sign.text))
        digit = rng.choice([d for d in "0123456789" if d != sign.text[i]])
        changed_sign = dataclasses.replace(sign, text=sign.text[:i] + digit + sign.text[i + 1 :])
        return dataclasses.replace(scene, signs=scene.signs[:k] + (changed_sign,) + scene.signs[k + 1 :])
    j = rng.randrange(len(scene.objects))
    obj = scene.objects[j]
    if choice == "drop":
        return dataclasses.replace(scene, objects=scene.objects[:j] + scene.objects[j + 1 :])
    if choice == "color":
        changed = dataclasses.replace(obj, color=rng.choice([c for c in COLORS if c != obj.color]))
    elif choice == "shape":
        changed = dataclasses.replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
    else:
        changed = dataclasses.replace(obj, size=next(s for s in SIZES if s != obj.size))
    return dataclasses.replace(scene, objects=scene.objects[:j] + (changed,) + scene.objects[j + 1 :])


def _describe(scene: Scene, world: WorldConfig, phrasing_seed: int, complete: bool) -> str:
    rng = random.Random(phrasing_seed)
    return recaption(scene, world, rng) if complete else alt_caption(scene, world, rng)


def _caption_batch(cfg: MM1Config, step: int) -> tuple[list[Scene], list[str]]:
    """The step's images and their captions, then each image's hard-negative captions.

    A caption mentions only some of its image's details, so a negative changes details until its caption (in the
    same phrasing) differs: a negative identical to the positive would teach the encoder nothing.
    """
    pre, world = cfg.encoder_pretrain, cfg.data.world
    rng = random.Random(f"encoder/{_seed(cfg)}/{step}")
    shares = {"caption": 1 - pre.recaption_share, "recaption": pre.recaption_share}
    kinds = [
        k for k, n in source_counts(shares, step * pre.batch_size, pre.batch_size).items() for _ in range(n)
    ]
    rng.shuffle(kinds)
    scenes = [sample_scene(world, rng.getrandbits(62)) for _ in kinds]
    phrasings = [rng.getrandbits(62) for _ in kinds]
    captions = [
        _describe(s, world, p, k == "recaption") for s, p, k in zip(scenes, phrasings, kinds, strict=True)
    ]
    negatives = []
    for scene, phrasing, kind, caption in zip(scenes, phrasings, kinds, captions, strict=True):
        for _ in range(pre.num_hard_negatives):
            for _attempt in range(8):
                negative = _describe(hard_negative(scene, rng), world, phrasing, kind == "recaption")
                if negative != caption:
                    break
            negatives.append(negative)
    return scenes, captions + negatives


class _CLIPPretrainer(nn.Module):
    def __init__(self, encoder: ViT, text: TextTower, embed_dim: int, *, places: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.text = text
        self.pool = min(places, encoder.grid_size)
        self.image_proj = nn.Linear(encoder.embed_dim * self.pool**2, embed_dim)
        self.text_proj = nn.Linear(text.embed.embedding_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # ln(1 / 0.07), CLIP's initial temperature

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.encoder(images)  # (B, N, D)
        B, N, D = patches.shape
        grid = patches.transpose(1, 2).reshape(B, D, self.encoder.grid_size, self.encoder.grid_size)
        pooled = F.adaptive_avg_pool2d(grid, self.pool).flatten(1)  # (B, D * pool^2)
        return self.image_proj(pooled)  # (B, E)

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, 4.6052)  # CLIP caps the scale at 100
        return LOSSES["clip"](self.embed_images(images), self.text_proj(self.text(texts)), self.logit_scale)


def train_clip(
    cfg: MM1Config, device: torch.device, on_log: Callable[[int, dict[str, float]], None], progress: Path
) -> dict:
    pre = cfg.encoder_pretrain
    # The encoder pre-trains on the world's captions (whatever data the multimodal stage brings).
    tokenizer = WordTokenizer(world_vocabulary(cfg.data.world))
    torch.manual_seed(_torch_seed(cfg))
    encoder = ViT(cfg.encoder)
    text = TextTower(
        vocab_size=tokenizer.vocab_size,
        width=pre.text_width,
        depth=pre.text_depth,
        max_len=cfg.data.max_seq_len,
        pad_id=tokenizer.pad_id,
    )
    model = _CLIPPretrainer(encoder, text, embed_dim=pre.text_width, places=cfg.data.world.grid_size).to(
        device
    )

    def step_loss(step: int) -> dict[str, torch.Tensor]:
        scenes, captions = _caption_batch(cfg, step)
        texts = [encode_document(c, tokenizer, 0, cfg.data.max_seq_len)[0] for c in captions]
        images = images_to_tensor(
            [render_scene(s, cfg.data.world, cfg.encoder.resolution) for s in scenes], cfg.encoder.resolution
        )
        return model(images.to(device), pad_rows(texts, tokenizer.pad_id).to(device))

    return _run_stage(model, encoder, step_loss, cfg, device, on_log, progress)


def _run_stage(
    model: nn.Module,
    encoder: ViT,
    step_loss: Callable[[int], dict[str, torch.Tensor]],
    cfg: MM1Config,
    device: torch.device,
    on_log: Callable[[int, dict[str, float]], None],
    progress: Path,
) -> dict:
    pre = cfg.encoder_pretrain
    # The loop's defaults (fp32, weight decay 0.1), not the multimodal stage's settings: the cached encoder depends
    # on its own config alone.
    schedule = stage_loop(
        pre, z_loss_coef=0.0, log_every=max(1, min(25, pre.steps)), checkpoint_every=max(1, pre.steps // 4)
    )
    train(
        model,
        step_loss,
        schedule,
        device=device,
        on_log=on_log,
        metric_prefix="encoder",
        checkpoint_path=progress,
    )
    return {"encoder": {k: v.cpu() for k, v in encoder.state_dict().items()}}


class _AIMPretrainer(nn.Module):
    def __init__(self, encoder: ViT) -> None:
        super().__init__()
        self.encoder = encoder
        patch_pixels = 3 * encoder.cfg.patch_size**2
        self.head = nn.Sequential(
            nn.Linear(encoder.embed_dim, encoder.embed_dim),
            nn.GELU(),
            nn.Linear(encoder.embed_dim, patch_pixels),
        )

    def forward(self, images: torch.Tensor, prefix_len: int) -> dict[str, torch.Tensor]:
        N = self.encoder.num_patches
        causal = torch.ones(N, N, dtype=torch.bool, device=images.device).tril()  # (N, N)
        causal[:, :prefix_len] = (
            True  # the prefix is seen by every patch, itself included, in both directions
        )
        predictions = self.head(self.encoder(images, attn_mask=causal))  # (B, N, P)
        targets = normalised_patches(images, self.encoder.cfg.patch_size)  # (B, N, P)
        return LOSSES["aim"](predictions, targets, prefix_len)


def train_aim(
    cfg: MM1Config, device: torch.device, on_log: Callable[[int, dict[str, float]], None], progress: Path
) -> dict:
    pre = cfg.encoder_pretrain
    torch.manual_seed(_torch_seed(cfg))
    encoder = ViT(cfg.encoder)
    model = _AIMPretrainer(encoder).to(device)

    def step_loss(step: int) -> dict[str, torch.Tensor]:
        rng = random.Random(f"encoder/{_seed(cfg)}/{step}")
        scenes = [sample_scene(cfg.data.world, rng.getrandbits(62)) for _ in range(pre.batch_size)]
        images = images_to_tensor(
            [render_scene(s, cfg.data.world, cfg.encoder.resolution) for s in scenes], cfg.encoder.resolution
        )
        # AIM samples the prefix length uniformly, so the encoder works with any amount of bidirectional context.
        prefix_len = rng.randint(1, encoder.num_patches - 1)
        return model(images.to(device), prefix_len)

    return _run_stage(model, encoder, step_loss, cfg, device, on_log, progress)


def pretrain_encoder(
    cfg: MM1Config,
    *,
    device: torch.device,
    cache_dir: Path,
    on_log: Callable[[int, dict[str, float]], None] = lambda step, metrics: None,
) -> tuple[dict[str, torch.Tensor] | None, bool]:
    """(the pre-trained encoder's state dict, or None for loss "none"; whether this call built it)."""
    loss = cfg.encoder_pretrain.loss
    if loss == "none":
        return None, False
    train_stage = ENCODER_LOSSES.load(loss)  # "none" returned above
    result, built = cached_stage(
        cache_dir,
        encoder_stage_key(config_to_dict(cfg)),
        lambda progress: train_stage(cfg, device, on_log, progress),
    )
    return result["encoder"], built
