"""Training throughput of a preset on this CPU as a fraction of the machine's own matmul peak, fp32 and bf16.

The peak is measured in the same run (large square matmuls at the same thread count); a training step's FLOPs are
counted by torch's FlopCounterMode on one forward+backward. Usage:
    python bench/train_throughput.py [--preset small] [--threads 1] [--steps 20] [--precisions fp32]
Two 1-thread runs side by side against one 2-thread run measure how to pack trials on the cores.
Figures are recorded in bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mm1core.config import apply_overrides, config_from_dict, config_to_dict
from mm1core.data.shards import trial_batch
from mm1core.data.sources import build_tokenizer
from mm1core.losses import LOSSES, total_loss
from mm1core.mm1 import build_mm1
from mm1core.presets import get_preset


def matmul_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def training(preset: str, precision: str, freeze: str, steps: int) -> tuple[float, float]:
    """(GFLOP/s achieved, steps/s) for the multimodal stage."""
    cfg = config_from_dict(
        apply_overrides(
            config_to_dict(get_preset(preset)), {"train.precision": precision, "train.freeze": freeze}
        )
    )
    tokenizer = build_tokenizer(cfg.data)
    model = build_mm1(cfg, tokenizer)
    model.freeze(freeze)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = [trial_batch(cfg, tokenizer, s) for s in range(steps)]

    def step(batch) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(batch.tokens, batch.images)
        loss = total_loss(LOSSES["lm"](logits, batch.targets, z_loss_coef=1e-4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step(batches[0])
    flops = counter.get_total_flops()
    step(batches[1])  # warm-up
    times = []
    for batch in batches[2:]:
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return flops / seconds / 1e9, 1 / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--freeze", default="all,frozen-encoder", help="comma-separated freeze stages")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"preset {args.preset}, {args.threads} thread(s), median of {args.steps - 2} steps (data excluded)")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for precision in args.precisions.split(","):
        peak = matmul_peak(dtypes[precision])
        for freeze in args.freeze.split(","):
            achieved, rate = training(args.preset, precision, freeze, args.steps)
            print(
                f"{precision}  matmul peak {peak:6.1f} GFLOP/s | train ({freeze:14s}) {achieved:6.1f} GFLOP/s "
                f"= {100 * achieved / peak:4.1f}% of peak, {rate:5.2f} steps/s"
            )


if __name__ == "__main__":
    main()
