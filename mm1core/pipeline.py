"""One trial's stages: build the model, train it on the data mixture, evaluate it. No orchestrator in sight."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mm1core.config import MM1Config, config_problems, config_to_dict
from mm1core.data.sources import build_tokenizer, trial_batch
from mm1core.encoder_pretrain import pretrain_encoder
from mm1core.eval.heldout import EvalResult, evaluate_heldout
from mm1core.losses import LOSSES
from mm1core.lr_law import optimal_peak_lr
from mm1core.mm1 import build_mm1
from mm1core.train import train

__all__ = ["TrialOutcome", "run_trial"]


@dataclass
class TrialOutcome:
    metrics: dict[str, float]
    eval: EvalResult
    num_params: int
    built_encoder: bool  # False when the encoder came from the stage cache (or was not pre-trained)


def run_trial(
    cfg: MM1Config,
    *,
    device: torch.device = torch.device("cpu"),
    on_metrics: Callable[[int, dict[str, float]], None] = lambda step, metrics: None,
    checkpoint_path: Path | None = None,
    cache_dir: Path = Path("results/cache"),
) -> TrialOutcome:
    """Pre-train (or fetch) the encoder, train the multimodal model, evaluate it.

    on_metrics(step, metrics) sees the encoder stage's metrics (`encoder/*`, when this trial builds it), then the
    multimodal stage's training and evaluation metrics.
    """
    problems = config_problems(cfg)
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg.data)
    model = build_mm1(cfg, tokenizer).to(device)
    encoder_state, built_encoder = pretrain_encoder(
        cfg, device=device, cache_dir=cache_dir, on_log=on_metrics
    )
    if encoder_state is not None:
        model.image_encoder.load_pretrained(encoder_state)
    model.freeze(cfg.train.freeze)
    num_params = sum(p.numel() for p in model.parameters())
    law_lr = optimal_peak_lr(num_params)
    schedule = dataclasses.replace(cfg.train, lr=law_lr) if cfg.train.lr == "auto" else cfg.train
    on_metrics(0, {"lr_law/optimal_peak_lr": law_lr, "lr_law/chosen_peak_lr": schedule.lr})

    def step_loss(step: int) -> dict[str, torch.Tensor]:
        batch = trial_batch(cfg, tokenizer, step)
        logits = model(batch.tokens.to(device), batch.images.to(device))
        terms = LOSSES["lm"](logits, batch.targets.to(device), z_loss_coef=cfg.train.z_loss_coef)
        return terms | model.lm.aux_losses()

    def evaluate() -> EvalResult:
        return evaluate_heldout(
            model,
            tokenizer,
            cfg.data,
            cfg.eval,
            resolution=cfg.encoder.resolution,
            num_image_tokens=cfg.connector.num_image_tokens,
            device=device,
        )

    def on_eval(step: int) -> None:
        on_metrics(step, evaluate().metrics)

    last_step = train(
        model,
        step_loss,
        schedule,
        device=device,
        on_log=on_metrics,
        on_eval=on_eval,
        checkpoint_path=checkpoint_path,
        checkpoint_config=config_to_dict(cfg),
    )
    result = evaluate()
    on_metrics(last_step, result.metrics)
    return TrialOutcome(
        metrics=result.metrics,
        eval=result,
        num_params=num_params,
        built_encoder=built_encoder,
    )
