"""One trial of the `small` preset on the default mixture: wall time, where it goes, and the eval metrics over steps.

    .venv/bin/python bench/single_trial.py [--steps 1000] [--eval-every 250] [--threads 1]

Prints a Markdown table for bench/README.md and writes bench/figures/single_trial_eval.svg (a plain SVG line chart,
so the README shows it without any plotting stack). The encoder stage is cached in a temporary directory, so its
pre-training is part of the wall time, reported separately.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mm1core.config import apply_overrides, config_from_dict, config_to_dict
from mm1core.pipeline import run_trial
from mm1core.presets import get_preset

PLOTTED = ("0shot/avg", "4shot/avg", "8shot/avg", "textcore/avg", "0shot/vqa/color", "0shot/vqa/size")
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def line_chart_svg(series: dict[str, list[tuple[int, float]]], title: str) -> str:
    width, height, left, right, top, bottom = 640, 360, 50, 170, 30, 40
    steps = [s for points in series.values() for s, _ in points]
    values = [v for points in series.values() for _, v in points]
    x_max, y_max = max(steps), max(0.05, max(values)) * 1.1

    def x(step: float) -> float:
        return left + (width - left - right) * step / x_max

    def y(value: float) -> float:
        return top + (height - top - bottom) * (1 - value / y_max)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="18" font-size="13">{title}</text>',
        f'<line x1="{left}" y1="{y(0)}" x2="{width - right}" y2="{y(0)}" stroke="#444"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{y(0)}" stroke="#444"/>',
        f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">training step</text>',
    ]
    for i in range(5):
        value = y_max * i / 4
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4}" text-anchor="end">{value:.2f}</text>')
    for step in sorted(set(steps)):
        parts.append(f'<text x="{x(step)}" y="{y(0) + 14}" text-anchor="middle">{step}</text>')
    for i, (name, points) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts += [f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>' for s, v in points]
        parts.append(f'<text x="{width - right + 10}" y="{top + 16 * i + 10}" fill="{color}">{name}</text>')
    return "\n".join([*parts, "</svg>"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--svg", type=Path, default=Path(__file__).parent / "figures" / "single_trial_eval.svg"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config_from_dict(
        apply_overrides(
            config_to_dict(get_preset("small")),
            {
                "train.steps": args.steps,
                "train.eval_every": args.eval_every,
                "train.freeze": "frozen-encoder",
            },
        )
    )
    history: dict[str, list[tuple[int, float]]] = {name: [] for name in PLOTTED}
    encoder_done: list[float] = []
    started = time.perf_counter()

    def on_metrics(stage: str, step: int, metrics: dict[str, float]) -> None:
        if "lr_law/optimal_peak_lr" in metrics:
            encoder_done.append(time.perf_counter() - started)
        for name in PLOTTED:
            if name in metrics:
                history[name].append((step, metrics[name]))

    with tempfile.TemporaryDirectory() as cache:
        outcome = run_trial(cfg, on_metrics=on_metrics, cache_dir=Path(cache))
    wall = time.perf_counter() - started
    m = outcome.metrics
    encoder_s = encoder_done[0] if encoder_done else 0.0
    other = wall - encoder_s - m["time/data_s"] - m["time/train_s"] - m["time/eval_s"]
    print(
        f"small preset, ratio {cfg.data.ratio}, {args.steps} steps of batch {cfg.train.batch_size}, "
        f"{args.threads} thread(s), {torch.__version__}\n"
    )
    print("| part | seconds | share |\n|---|---|---|")
    for part, seconds in (
        ("encoder pre-training (CLIP, built once per encoder config)", encoder_s),
        ("data (generate or read shards)", m["time/data_s"]),
        ("forward / backward / optimizer", m["time/train_s"]),
        (
            f"evaluation ({len(history['0shot/avg'])} rounds; final round {m['time/final_eval_s']:.1f} s)",
            m["time/eval_s"],
        ),
        ("other (build, checkpoints)", other),
        ("**total**", wall),
    ):
        print(f"| {part} | {seconds:.1f} | {seconds / wall:.0%} |")
    print("\n| step | " + " | ".join(PLOTTED) + " |\n" + "|---" * (len(PLOTTED) + 1) + "|")
    for i, (step, _) in enumerate(history["0shot/avg"]):
        print(f"| {step} | " + " | ".join(f"{history[n][i][1]:.3f}" for n in PLOTTED) + " |")
    args.svg.parent.mkdir(parents=True, exist_ok=True)
    args.svg.write_text(line_chart_svg(history, f"small preset, {cfg.data.ratio}: eval metrics over steps"))
    print(f"\nwrote {args.svg}")


if __name__ == "__main__":
    main()
