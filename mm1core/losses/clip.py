"""Symmetric InfoNCE (CLIP) with extra negative texts.

Shape suffixes: B images (and their captions), N extra negative captions, E embedding width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_loss"]


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor
) -> dict[str, torch.Tensor]:
    """image_emb (B, E); text_emb (B + N, E): row i < B is image i's caption, rows >= B are negatives only.

    Image->text picks among all B + N texts; text->image runs over the B true captions.
    """
    B = image_emb.shape[0]
    image_emb = F.normalize(image_emb.float(), dim=-1)
    text_emb = F.normalize(text_emb.float(), dim=-1)
    logits = logit_scale.exp() * image_emb @ text_emb.T  # (B, B + N)
    labels = torch.arange(B, device=image_emb.device)
    image_to_text = F.cross_entropy(logits, labels)
    text_to_image = F.cross_entropy(logits[:, :B].T, labels)
    accuracy = (logits.argmax(dim=1) == labels).float().mean()
    return {"contrastive_loss": (image_to_text + text_to_image) / 2, "retrieval_acc": accuracy.detach()}
