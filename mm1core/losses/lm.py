"""Next-token cross-entropy with z-loss (PaLM's log(Z)^2 penalty that keeps the softmax normaliser near 1).

Shape suffixes: B batch, T sequence length, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["lm_loss"]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, *, z_loss_coef: float) -> dict[str, torch.Tensor]:
    """logits (B, T, V), targets (B, T) with -100 where no loss is taken."""
    logits = logits.float()
    mask = targets != -100  # (B, T)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    log_z = torch.logsumexp(logits, dim=-1)[mask]  # (num_targets,)
    terms = {"ce_loss": ce}
    if z_loss_coef:
        terms["z_loss"] = z_loss_coef * log_z.pow(2).mean()
    return terms
