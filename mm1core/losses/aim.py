"""AIM's autoregressive image loss: regress each next patch's normalised pixels, on non-prefix patches only.

Shape suffixes: B images, N patches, P pixels per patch (3 * patch_size^2).
"""

from __future__ import annotations

import torch

__all__ = ["aim_loss", "normalised_patches"]


def normalised_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 3, R, R) -> (B, N, P) row-major patches, each normalised to zero mean and unit variance (MAE's targets)."""
    B, C, R, _ = images.shape
    g = R // patch_size
    patches = (
        images.reshape(B, C, g, patch_size, g, patch_size).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, -1)
    )
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + 1e-6).sqrt()  # (B, N, P)


def aim_loss(predictions: torch.Tensor, targets: torch.Tensor, prefix_len: int) -> dict[str, torch.Tensor]:
    """predictions (B, N, P): position i predicts patch i + 1; targets (B, N, P) normalised patches.

    Patches inside the prefix are context only (they attend to each other freely), so they are never scored.
    """
    N = targets.shape[1]
    per_patch = (predictions[:, :-1].float() - targets[:, 1:].float()).pow(2).mean(dim=-1)  # (B, N - 1)
    scored = (
        torch.arange(1, N, device=targets.device) >= prefix_len
    )  # (N - 1,) the predicted patch is non-prefix
    loss = (per_patch * scored).sum() / (scored.sum() * per_patch.shape[0]).clamp(min=1)
    return {"pixel_loss": loss}
