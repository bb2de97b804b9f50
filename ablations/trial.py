"""The Ray Tune trainable: one planned trial -> mm1core -> metrics reported back to the driver.

It runs in a Ray worker with the CPUs (and GPUs) the study asked for, uses exactly that many threads, and trains on
CUDA when Ray gave it a GPU. Everything it learns goes back through `tune.report`; the driver does the bookkeeping.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from mm1core.config import config_from_dict
from mm1core.pipeline import run_trial

__all__ = ["FINAL_KEY", "train_trial"]

FINAL_KEY = "final"  # set on the last report of a trial, which also carries its per-item scores


def _device() -> torch.device:
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def train_trial(tune_config: dict[str, Any]) -> None:
    payload = tune_config["trial"]
    num_threads = max(1, int(payload["num_cpus"]))
    torch.set_num_threads(num_threads)
    device = _device()
    cfg = config_from_dict(payload["config"])
    started = time.time()

    def report(step: int, metrics: dict[str, float]) -> None:
        stage = next(
            (s for s in ("encoder", "sft") if any(k.startswith(f"{s}/") for k in metrics)), "multimodal"
        )
        total = {"encoder": cfg.encoder_pretrain.steps, "sft": cfg.sft.steps}.get(stage, cfg.train.steps)
        tune.report({"step": step, "total_steps": total, "stage": stage, **metrics})

    checkpoint = Path(payload["checkpoint_dir"]) / f"{payload['trial_id']}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    outcome = run_trial(
        cfg,
        device=device,
        on_metrics=report,
        checkpoint_path=checkpoint,
        cache_dir=Path(payload["cache_dir"]),
    )
    tune.report(
        {
            "step": cfg.train.steps,
            "total_steps": cfg.train.steps,
            "stage": "multimodal",
            **outcome.metrics,
            FINAL_KEY: True,
            "num_params": outcome.num_params,
            "built_encoder": outcome.built_encoder,
            "wall_time_s": time.time() - started,
            "device": f"{device.type} x{num_threads} threads"
            if device.type == "cpu"
            else torch.cuda.get_device_name(),
            "eval_items_json": json.dumps(outcome.eval.items),
            "eval_protocol_json": json.dumps(outcome.eval.protocol),
        }
    )
