"""One trial's stages: build the model, train it on the data mixture, evaluate it. No orchestrator in sight."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mm1core.config import MM1Config, config_problems, config_to_dict
from mm1core.data.sources import build_tokenizer, make_batch
from mm1core.eval.heldout import EvalResult, evaluate_heldout
from mm1core.mm1 import build_mm1
from mm1core.train import train

__all__ = ["TrialOutcome", "run_trial"]


@dataclass
class TrialOutcome:
    metrics: dict[str, float]
    eval: EvalResult
    num_params: int


def run_trial(
    cfg: MM1Config,
    *,
    device: torch.device = torch.device("cpu"),
    on_metrics: Callable[[int, dict[str, float]], None] = lambda step, metrics: None,
    checkpoint_path: Path | None = None,
) -> TrialOutcome:
    """Train and evaluate one configuration; on_metrics(step, metrics) sees training and evaluation metrics."""
    problems = config_problems(cfg)
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg.data)
    model = build_mm1(
        vit=cfg.encoder,
        connector=cfg.connector,
        lm=cfg.lm,
        data=cfg.data,
        vocab_size=tokenizer.vocab_size,
        image_token_id=tokenizer.image_id,
    ).to(device)

    def get_batch(step: int):
        return make_batch(
            cfg.data,
            tokenizer,
            batch_size=cfg.train.batch_size,
            resolution=cfg.encoder.resolution,
            num_image_tokens=cfg.connector.num_image_tokens,
            seed=cfg.seed,
            step=step,
        )

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
        get_batch,
        cfg.train,
        device=device,
        on_log=on_metrics,
        on_eval=on_eval,
        checkpoint_path=checkpoint_path,
        checkpoint_config=config_to_dict(cfg),
    )
    result = evaluate()
    on_metrics(last_step, result.metrics)
    return TrialOutcome(
        metrics=result.metrics, eval=result, num_params=sum(p.numel() for p in model.parameters())
    )
