"""MM1: image encoder + connector + language model; image tokens are spliced in at `<image>` placeholders.

A sequence carries `num_image_tokens` placeholder ids per image, so any number of images can sit anywhere in it
(interleaved documents, few-shot prompts). Images are consumed in placeholder order, batch-major.

Shape suffixes: B sequences, T sequence length, M images, K image tokens per image, D LM width, V vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mm1core.config import FEATURE_NORMS, FREEZE_STAGES, IMAGE_TOKEN_POSITIONS, MM1Config
from mm1core.connectors import build_connector
from mm1core.data.tokenizer import Tokenizer
from mm1core.lm import DecoderLM
from mm1core.vit import ViT

__all__ = ["MM1", "build_mm1", "eval_mode"]


class MM1(nn.Module):
    def __init__(
        self,
        image_encoder: ViT,
        connector: nn.Module,
        lm: DecoderLM,
        *,
        image_token_id: int,
        token_positions: str = "learned",
        feature_norm: str = "none",
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.connector = connector
        self.lm = lm
        self.image_token_id = image_token_id
        if token_positions not in IMAGE_TOKEN_POSITIONS:
            raise ValueError(IMAGE_TOKEN_POSITIONS.unknown(token_positions))
        # Questions name objects by their place ("the object at r1c2"); an embedding of each token's place lets the
        # LM find a place by attention wherever the image sits in the sequence, which sequence positions alone
        # cannot say once images sit at varying offsets in interleaved pages. At the scale of the LM's word
        # embeddings (nn.Embedding's N(0, 1)), so that a place is as easy to key on as a word: at 0.02, against
        # connector outputs of norm ~2, a 2-layer LM never learned the lookup (docs/reference-recipe.md).
        K, D = connector.num_image_tokens, lm.embed_dim
        self.image_token_pos = nn.Parameter(torch.randn(1, K, D)) if token_positions == "learned" else None
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(FEATURE_NORMS.unknown(feature_norm))
        # Buffers, so that a checkpoint carries the statistics its connector was trained on.
        self.standardize = feature_norm == "standardize"
        if self.standardize:
            self.register_buffer("feature_mean", torch.zeros(image_encoder.embed_dim))
            self.register_buffer("feature_std", torch.ones(image_encoder.embed_dim))

    def freeze(self, stage: str) -> tuple[str, ...]:
        """Make only the parts named by `stage` trainable; returns their names."""
        if stage not in FREEZE_STAGES:
            raise ValueError(f"unknown freeze stage {stage!r}; known: {', '.join(FREEZE_STAGES)}")
        trainable = FREEZE_STAGES[stage]
        for name in ("image_encoder", "connector", "lm"):
            getattr(self, name).requires_grad_(name in trainable)
        if self.image_token_pos is not None:  # part of how the connector's output enters the LM
            self.image_token_pos.requires_grad_("connector" in trainable)
        return trainable

    def forward(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """tokens (B, T), images (M, 3, R, R) -> logits (B, T, V)."""
        return self.lm(self.embed_inputs(tokens, images))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (M, 3, R, R) -> the encoder's patch features as the connector receives them (M, N, Dv)."""
        features = self.image_encoder(images)
        return (features - self.feature_mean) / self.feature_std if self.standardize else features

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images (M, 3, R, R) -> the connector's image tokens (M, K, D)."""
        tokens = self.connector(self.image_features(images))  # (M, K, D)
        return tokens if self.image_token_pos is None else tokens + self.image_token_pos

    @torch.no_grad()
    def fit_feature_norm(self, images: torch.Tensor) -> None:
        """Measure the per-channel mean and standard deviation of the encoder's features on `images` (M, 3, R, R),
        over every patch of every image; `connector.feature_norm: standardize` divides them out from then on."""
        if not self.standardize:
            raise ValueError("this model does not standardise its features (connector.feature_norm: none)")
        with eval_mode(self.image_encoder):
            features = self.image_encoder(images).float().flatten(0, 1)  # (M * N, Dv)
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0) + 1e-5)

    def embed_inputs(
        self, tokens: torch.Tensor, images: torch.Tensor, *, encoded: bool = False
    ) -> torch.Tensor:
        """tokens (B, T), images (M, 3, R, R) -> the LM's input embeddings (B, T, D), image tokens spliced in.

        encoded: `images` already holds encode_images' output (M, K, D), e.g. when many prompts share images.
        """
        embeds = self.lm.embed(tokens)  # (B, T, D)
        is_image = tokens == self.image_token_id  # (B, T)
        num_slots = int(is_image.sum())
        if images.shape[0] == 0:
            if num_slots:
                raise ValueError(
                    f"the sequences hold {num_slots} image placeholder tokens but no images were given"
                )
            return embeds
        image_tokens = images if encoded else self.encode_images(images)  # (M, K, D)
        if num_slots != image_tokens.shape[0] * image_tokens.shape[1]:
            raise ValueError(
                f"the sequences hold {num_slots} image placeholder tokens but {image_tokens.shape[0]} images "
                f"x {image_tokens.shape[1]} tokens = {image_tokens.shape[0] * image_tokens.shape[1]} were given"
            )
        return embeds.masked_scatter(is_image.unsqueeze(-1), image_tokens.to(embeds.dtype))  # (B, T, D)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, then every submodule back in its own mode (a frozen encoder kept in
    eval stays so)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def build_mm1(cfg: MM1Config, tokenizer: Tokenizer) -> MM1:
    """The one place the parts are wired: the connector is sized from the built encoder and LM."""
    image_encoder = ViT(cfg.encoder)
    language_model = DecoderLM(cfg.lm, vocab_size=tokenizer.vocab_size, max_seq_len=cfg.data.max_seq_len)
    bridge = build_connector(
        cfg.connector,
        vision_dim=image_encoder.embed_dim,
        grid_size=image_encoder.grid_size,
        lm_dim=language_model.embed_dim,
    )
    return MM1(
        image_encoder,
        bridge,
        language_model,
        image_token_id=tokenizer.image_id,
        token_positions=cfg.connector.token_positions,
        feature_norm=cfg.connector.feature_norm,
    )
