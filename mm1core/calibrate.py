"""A short measured run of one trial shape on this machine: the seconds per encoder step, per training step and per
evaluation item that a planner multiplies out into a trial's time.

The shape is trained for a few steps of each stage and evaluated on a few items, in a throw-away cache, with the
threads a trial gets. Run as a module, one process per trial slot at once, so the figures include what trials
running side by side cost each other:

    python -m mm1core.calibrate config.json out.json THREADS
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from mm1core.config import EvalTaskConfig, apply_overrides, config_from_dict

__all__ = ["CALIBRATION_STEPS", "calibrate", "shrunk"]

# Enough steps that the first ones (allocation, data warm-up) do not dominate; few enough to take seconds. The
# evaluation is timed on one full evaluation batch (`eval_items` is its floor): on 14 items in a batch of 14 it cost
# 2.5x per item what the quickstart's batches of 100 did (bench/README.md).
CALIBRATION_STEPS = {"encoder": 24, "train": 24, "eval_items": 14}


def shrunk(config: dict) -> dict:
    """The same shape with short stages: the config whose run is measured."""
    steps = CALIBRATION_STEPS
    overrides = {
        "train.steps": steps["train"],
        "train.warmup_steps": min(config["train"]["warmup_steps"], steps["train"] // 2),
        "train.log_every": steps["train"] // 3,
        "train.eval_every": 0,
        "train.checkpoint_every": 10**6,
        "eval.num_items": _eval_items(config),
        "eval.intermediate_items": 0,
        "sft.steps": 0,
        "eval.tasks": _shrunk_tasks(config),
    }
    if config["encoder_pretrain"]["loss"] != "none":
        overrides |= {
            "encoder_pretrain.steps": steps["encoder"],
            "encoder_pretrain.warmup_steps": min(
                config["encoder_pretrain"]["warmup_steps"], steps["encoder"] // 2
            ),
        }
    return apply_overrides(config, overrides)


def _shrunk_tasks(config: dict) -> list[dict]:
    """The evaluation tasks, each file task cut by the share the world's items are cut by: the rate per world item
    the planner multiplies out then covers the file tasks too, at their sizes."""
    from mm1core.eval.file_tasks import task_items  # reads the task's files: only studies with file tasks pay

    share = _eval_items(config) / config["eval"]["num_items"]
    tasks = []
    for task in config["eval"]["tasks"]:
        if task.get("kind", "world") != "world":
            count = len(
                task_items(EvalTaskConfig(**{k: tuple(v) if k == "shots" else v for k, v in task.items()}))
            )
            task = dict(task, max_items=max(1, round(count * share)))
        tasks.append(task)
    return tasks


def _eval_items(config: dict) -> int:
    """One full evaluation batch, at least CALIBRATION_STEPS["eval_items"], at most the trial's own item count."""
    return min(
        max(config["eval"]["batch_size"], CALIBRATION_STEPS["eval_items"]), config["eval"]["num_items"]
    )


def calibrate(config: dict, threads: int) -> dict[str, float]:
    """Seconds per encoder step, per training step (data included), per evaluation item (every shot and task),
    and the rest of the run (model, tokenizer, probes), measured on a shrunk copy of `config`."""
    # torch and the pipeline in the calibrating process only: the planner imports this module for its constants.
    import torch

    from mm1core.pipeline import run_trial

    torch.set_num_threads(threads)
    cfg = config_from_dict(shrunk(config))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        metrics = run_trial(cfg, cache_dir=Path(cache)).metrics
    wall = time.perf_counter() - started
    steps = CALIBRATION_STEPS
    encoder_s = metrics["time/encoder_s"]
    train_s = metrics["time/train_s"] + metrics["time/data_s"]
    eval_s = metrics["time/eval_s"]
    pretrained = config["encoder_pretrain"]["loss"] != "none"
    return {
        "encoder_step_s": encoder_s / steps["encoder"] if pretrained else 0.0,
        "train_step_s": train_s / steps["train"],
        "eval_item_s": eval_s / _eval_items(config),
        "fixed_s": max(wall - encoder_s - train_s - eval_s, 0.0),
    }


if __name__ == "__main__":
    config_path, out_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rates = calibrate(json.loads(Path(config_path).read_text()), threads)
    Path(out_path).write_text(json.dumps(rates))
