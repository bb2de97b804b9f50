"""One trial's stages: build the model, train it on the data mixture, evaluate it. No orchestrator in sight."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mm1core.config import MM1Config, config_problems, config_to_dict, stage_loop
from mm1core.data.shards import trial_batch
from mm1core.data.sources import Batch, build_tokenizer, sft_batch, uses_world_text
from mm1core.data.tokenizer import Tokenizer
from mm1core.encoder_pretrain import pretrain_encoder
from mm1core.eval.file_tasks import evaluate_file_task
from mm1core.eval.probes import probe_encoder
from mm1core.eval.suite import EvalResult, evaluate
from mm1core.hardware import resolve_precision
from mm1core.losses import LOSSES
from mm1core.lr_law import optimal_peak_lr
from mm1core.mm1 import build_mm1
from mm1core.train import train

__all__ = ["TrialOutcome", "run_trial"]

_LENGTH_GROUPS = 3  # forward passes per step; see Batch.by_length
_FEATURE_NORM_IMAGES, _FEATURE_NORM_STEPS = 256, 32  # connector.feature_norm: standardize measures on these


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
    on_metrics: Callable[[str, int, dict[str, float]], None] = lambda stage, step, metrics: None,
    checkpoint_path: Path | None = None,
    cache_dir: Path,
) -> TrialOutcome:
    """Pre-train (or fetch) the encoder, train the multimodal model, fine-tune it (if `sft.steps`), evaluate it.

    on_metrics(stage, step, metrics) sees, stage by stage: "encoder" (`encoder/*`, when this trial builds it),
    "multimodal" (the probes of the encoder it starts from, `probe/pretrained/*`, then its training and evaluation
    metrics), "sft" (`sft/*`); then, as "multimodal" at the last step, the final evaluation with the probes of the
    final encoder. Each stage's training loop names its metrics with its own prefix: nothing is renamed.
    """
    problems = config_problems(cfg)
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    # A config run outside a planned study resolves `auto` on the device it runs on.
    if cfg.train.precision == "auto":
        precision = resolve_precision("auto", gpu=device.type == "cuda")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg.data, cache_dir, world_text=uses_world_text(cfg))
    model = build_mm1(cfg, tokenizer).to(device)
    encoder_started = time.perf_counter()
    encoder_state, built_encoder = pretrain_encoder(
        cfg, device=device, cache_dir=cache_dir, on_log=lambda step, m: on_metrics("encoder", step, m)
    )
    # Building the encoder, loading it from the cache, or waiting for another trial to build it.
    encoder_s = time.perf_counter() - encoder_started
    if encoder_state is not None:
        model.image_encoder.load_pretrained(encoder_state)
    # With encoder loss "none" this probes the random-init encoder: the baseline a pre-training stage must beat. The
    # probes read the world's scenes: a study that scores only its own files never draws one.
    probing = cfg.eval.scores_world
    pretrained_probes = (
        probe_encoder(model.image_encoder, cfg.data.world, when="pretrained", device=device)
        if probing
        else {}
    )
    on_metrics("multimodal", 0, pretrained_probes)
    model.freeze(cfg.train.freeze)
    if model.standardize and (images := _first_images(cfg, tokenizer, cache_dir)).shape[0]:
        model.fit_feature_norm(
            images.to(device)
        )  # the trial's own images: a files-only study measures its files
    num_params = sum(p.numel() for p in model.parameters())
    law_lr = optimal_peak_lr(num_params)
    schedule = dataclasses.replace(cfg.train, lr=law_lr) if cfg.train.lr == "auto" else cfg.train
    on_metrics("multimodal", 0, {"lr_law/optimal_peak_lr": law_lr, "lr_law/chosen_peak_lr": schedule.lr})

    def batch_loss(batch: Batch) -> dict[str, torch.Tensor]:
        """The batch's loss terms, one forward pass per length group, weighted by each group's share of targets."""
        targets_total = int((batch.targets != -100).sum())
        totals: dict[str, torch.Tensor] = {}
        for part in batch.by_length(_LENGTH_GROUPS):
            weight = int((part.targets != -100).sum()) / targets_total
            logits = model(part.tokens.to(device), part.images.to(device))
            terms = LOSSES["lm"](logits, part.targets.to(device), z_loss_coef=cfg.train.z_loss_coef)
            for name, value in (terms | model.lm.aux_losses()).items():
                totals[name] = totals.get(name, 0.0) + weight * value
        return totals

    # Where the trial's time goes, reported with its final metrics (time/*): data, training passes, evaluation.
    seconds = {"data": 0.0, "eval": 0.0}

    def timed(kind: str, work: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return work()
        finally:
            seconds[kind] += time.perf_counter() - start

    def evaluate_tasks(intermediate: bool) -> EvalResult:
        """Every task of `eval.tasks`: the world's suite, then each file task, as one result."""
        shape = {"resolution": cfg.encoder.resolution, "num_image_tokens": cfg.connector.num_image_tokens}
        results = []
        if cfg.eval.scores_world:
            world_cfg = dataclasses.replace(cfg.eval, num_items=_round_items(cfg, intermediate=intermediate))
            results.append(evaluate(model, tokenizer, cfg.data, world_cfg, device=device, **shape))
        for task in cfg.eval.file_tasks:
            results.append(
                evaluate_file_task(
                    model,
                    tokenizer,
                    cfg.data,
                    task,
                    cfg.eval,
                    intermediate=intermediate,
                    device=device,
                    **shape,
                )
            )
        return EvalResult(
            metrics={k: v for r in results for k, v in r.metrics.items()},
            items=[row for r in results for row in r.items],
            protocol={k: v for r in results for k, v in r.protocol.items()},
        )

    def run_eval(intermediate: bool = False) -> EvalResult:
        return timed("eval", lambda: evaluate_tasks(intermediate))

    training_started = time.perf_counter()
    last_step = train(
        model,
        lambda step: batch_loss(
            timed("data", lambda: trial_batch(cfg, tokenizer, step, cache_dir=cache_dir))
        ),
        schedule,
        device=device,
        on_log=lambda step, m: on_metrics("multimodal", step, m),
        # Each round says how many items it scored: an intermediate round's subset is not the final round's set.
        on_eval=lambda step: on_metrics(
            "multimodal", step, run_eval(intermediate=True).metrics | _items_record(cfg, intermediate=True)
        ),
        checkpoint_path=checkpoint_path,
        checkpoint_config=config_to_dict(cfg),
        lr_scales={"image_encoder": cfg.train.encoder_lr_scale},
    )
    if cfg.sft.steps:
        model.freeze(cfg.sft.freeze)
        sft = cfg.sft
        sft_schedule = stage_loop(sft, cfg.train, eval_every=0)
        last_step = train(
            model,
            lambda step: batch_loss(timed("data", lambda: sft_batch(cfg, tokenizer, step))),
            sft_schedule,
            device=device,
            on_log=lambda step, m: on_metrics("sft", step, m),
            metric_prefix="sft",
            checkpoint_path=checkpoint_path.with_suffix(".sft.pt") if checkpoint_path else None,
            checkpoint_config=config_to_dict(cfg),
        )
    training_s = time.perf_counter() - training_started - seconds["data"] - seconds["eval"]
    eval_before_final = seconds["eval"]
    result = run_eval()
    final_probes = (
        timed("eval", lambda: probe_encoder(model.image_encoder, cfg.data.world, when="final", device=device))
        if probing
        else {}
    )
    timing = {
        "time/encoder_s": encoder_s,
        "time/data_s": seconds["data"],
        "time/train_s": training_s,
        "time/eval_s": seconds["eval"],
        "time/final_eval_s": seconds["eval"] - eval_before_final,
    }
    # The pre-trained probes ride along so that the trial's results row holds both ends of the encoder's story.
    metrics = result.metrics | final_probes | pretrained_probes | timing | _items_record(cfg)
    on_metrics("multimodal", last_step, metrics)
    return TrialOutcome(
        metrics=metrics,
        eval=result,
        num_params=num_params,
        built_encoder=built_encoder,
    )


def _first_images(cfg: MM1Config, tokenizer: Tokenizer, cache_dir: Path) -> torch.Tensor:
    """The images of the trial's first training batches, at least _FEATURE_NORM_IMAGES where the mixture has them
    (a text-only mixture has none: looked for in its first _FEATURE_NORM_STEPS batches)."""
    found, count = [], 0
    for step in range(min(cfg.train.steps, _FEATURE_NORM_STEPS)):
        images = trial_batch(cfg, tokenizer, step, cache_dir=cache_dir).images
        found.append(images)
        count += images.shape[0]
        if count >= _FEATURE_NORM_IMAGES:
            break
    return torch.cat(found) if found else torch.empty(0)


def _items_record(cfg: MM1Config, *, intermediate: bool = False) -> dict[str, float]:
    """`eval/items`: the world's items per task in this round (file tasks record theirs in their protocol)."""
    return {"eval/items": _round_items(cfg, intermediate=intermediate)} if cfg.eval.scores_world else {}


def _round_items(cfg: MM1Config, *, intermediate: bool = False) -> int:
    """Items per task an evaluation round scores: the first `eval.intermediate_items` in intermediate rounds (all of
    them where that is 0), every item in the final round."""
    subset = cfg.eval.intermediate_items
    return min(subset, cfg.eval.num_items) if intermediate and subset else cfg.eval.num_items
