"""The training loop: AdamW, linear warm-up then cosine decay to 10% of peak, gradient clipping, checkpoints.

One plain function for every stage. A stage supplies `step_loss(step)`, which builds that step's batch (a pure function
of the step, so a resumed run replays exactly the batches the uninterrupted run saw), runs the forward pass and returns
named loss terms; the loop sums the `*_loss` terms and logs them all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mm1core.config import TrainConfig
from mm1core.losses import total_loss
from mm1core.storage import DamagedFile, load_checked, quarantine, save_checked

__all__ = ["get_lr", "train"]


def get_lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, config: dict) -> None:
    # Atomic and checksummed: a kill mid-write leaves the previous checkpoint, a damaged one is never resumed from.
    save_checked(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "config": config},
        path,
    )


def _resume_state(path: Path | None, device: torch.device) -> dict | None:
    """The checkpoint to resume from; a damaged one is moved aside and the stage starts again from step 0."""
    if path is None or not path.exists():
        return None
    try:
        return load_checked(path, map_location=device)
    except DamagedFile as err:
        quarantine(path, str(err))
        return None


def train(
    model: nn.Module,
    step_loss: Callable[[int], dict[str, torch.Tensor]],
    cfg: TrainConfig,
    *,
    device: torch.device,
    on_log: Callable[[int, dict[str, float]], None] = lambda step, metrics: None,
    on_eval: Callable[[int], None] = lambda step: None,
    checkpoint_path: Path | None = None,
    checkpoint_config: dict | None = None,
    lr_scales: dict[str, float] | None = None,
    metric_prefix: str = "train",
) -> int:
    """Train the trainable parameters of `model` for cfg.steps steps, resuming from checkpoint_path if it exists.

    lr_scales: {name of a child module of `model`: factor on the schedule's learning rate for its parameters}.
    """
    scales = lr_scales or {}
    # One AdamW group per (lr scale, decayed or not); norms, biases and embeddings-by-vector are not decayed.
    grouped: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grouped.setdefault((scales.get(name.split(".", 1)[0], 1.0), p.ndim >= 2), []).append(p)
    groups = [
        {"params": ps, "weight_decay": cfg.weight_decay if decayed else 0.0, "scale": scale}
        for (scale, decayed), ps in grouped.items()
    ]
    params = [p for ps in grouped.values() for p in ps]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    start = 0
    state = _resume_state(checkpoint_path, device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    if start and cfg.eval_every and start % cfg.eval_every == 0 and start != cfg.steps:
        # The checkpoint is saved before its evaluation round, and a kill may have cut the round short: it runs
        # again (an evaluation is deterministic, so a round that had been reported comes out the same).
        on_eval(start)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    model.train()
    tick = time.perf_counter()
    for step in range(start, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, cfg) * group["scale"]
        with autocast:
            terms = step_loss(step)
        loss = total_loss(terms)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at step {step} (lr {get_lr(step, cfg):.3g}); "
                "lower train.lr or raise train.warmup_steps"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(
                f"non-finite gradient norm at step {step} (lr {get_lr(step, cfg):.3g}); "
                "lower train.lr or raise train.warmup_steps"
            )
        optimizer.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            elapsed = time.perf_counter() - tick
            metrics = {f"{metric_prefix}/{k}": v.item() for k, v in terms.items()}
            metrics |= {
                f"{metric_prefix}/loss": loss.item(),
                f"{metric_prefix}/lr": get_lr(step, cfg),
                f"{metric_prefix}/grad_norm": grad_norm.item(),
            }
            metrics[f"{metric_prefix}/steps_per_s"] = cfg.log_every / elapsed if elapsed > 0 else 0.0
            on_log(done, metrics)
            tick = time.perf_counter()
        evaluating = bool(cfg.eval_every) and done % cfg.eval_every == 0 and done != cfg.steps
        # Saved before an evaluation round too: a scheduler may stop the trial on its result, and a later run that
        # finishes the trial resumes from that step.
        if checkpoint_path is not None and (
            done % cfg.checkpoint_every == 0 or done == cfg.steps or evaluating
        ):
            _save(checkpoint_path, model, optimizer, done, checkpoint_config or {})
        if evaluating:
            on_eval(done)
            model.train()
    return cfg.steps
