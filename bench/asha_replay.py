"""What would Ray's ASHA have spent, and would it have kept the best? Replayed on learning curves run to the end.

    .venv/bin/python bench/asha_replay.py results/lr-width-search-to-the-end/curves.parquet [more curves.parquet]
    .venv/bin/python bench/asha_replay.py --synthetic --every 50 --grace 50 100
    .venv/bin/python bench/asha_replay.py --merge SEARCH/curves.parquet SEARCH-to-the-end/curves.parquet


Each curves file holds configurations run to their last step with the search metric at every evaluation round (as
`bench/search_vs_full.py` leaves them). The replay feeds those rounds, in random arrival orders, through Ray Tune's
own ASHA bracket (`ray.tune.schedulers.async_hyperband._Bracket`) with the study's slots, and counts the trial-steps
spent and where the configuration the search would call best ranks among all of them run to the end. It chooses a
grace period and reduction factor before a search is run, from curves of an earlier one, rather than after.

Without curves (`--synthetic`), it draws them from a model: each configuration's quality is normal, later ones better
by `--trend` SDs over the search (as a sampler like TPE finds the good region), and its round at step s misreads it
by noise of SD `--noise` x sqrt(max_t / s), so early rounds rank worse than late ones.
"""

from __future__ import annotations

import argparse
import heapq
from pathlib import Path

import numpy as np
import pandas as pd
from ray.tune.schedulers.async_hyperband import _Bracket
from ray.tune.schedulers.trial_scheduler import TrialScheduler


class _Run:
    """Ray's bracket keys its rungs by `trial.trial_id`; this is all of a trial it reads."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def replay(curves: dict[str, pd.Series], order: list[str], grace: int, rf: float, slots: int, max_t: int):
    """One search: trials start in `order` as slots free up; a round at step s arrives after s steps of that trial.
    Returns (trial-steps spent, {trial: final metric or None if stopped})."""
    bracket = _Bracket(min_t=grace, max_t=max_t, reduction_factor=rf, s=0)
    pending = list(order)
    clock: list[tuple[float, int, str, int]] = []  # (time, tiebreak, trial, index of its next round)
    spent = 0
    reached: dict[str, float | None] = {}
    tiebreak = 0

    def start(now: float) -> None:
        nonlocal tiebreak
        trial = pending.pop(0)
        steps = curves[trial].index
        heapq.heappush(clock, (now + steps[0], tiebreak, trial, 0))
        tiebreak += 1

    for _ in range(min(slots, len(pending))):
        start(0.0)
    while clock:
        now, _, trial, i = heapq.heappop(clock)
        curve = curves[trial]
        step = int(curve.index[i])
        # Ray's ASHA maximises metric_op * metric: a loss enters negated.
        action = bracket.on_result(_Run(trial), step, -float(curve.iloc[i]))
        last = i == len(curve) - 1
        if action == TrialScheduler.STOP or last:
            spent += step
            reached[trial] = float(curve.iloc[i]) if last else None
            if pending:
                start(now)
        else:
            heapq.heappush(clock, (now + curve.index[i + 1] - step, tiebreak, trial, i + 1))
            tiebreak += 1
    return spent, reached


def synthetic_curves(rng: np.random.Generator, n: int, steps: list[int], trend: float, noise: float):
    curves = {}
    for k in range(n):
        quality = rng.normal(
            -trend * k / n, 1.0
        )  # a loss: lower is better, and later configurations do better
        misread = [rng.normal(0.0, noise * (steps[-1] / s) ** 0.5) for s in steps]
        curves[f"config{k:02d}"] = pd.Series([quality + e for e in misread], index=steps)
    return curves


def summarise(label: str, draws, args) -> None:
    """draws: one (curves, arrival order) per simulated search."""
    print(f"{label}, {args.slots} slots")
    print("grace  rf  | trial-steps: median (p10-p90) | best's rank among all: top 1 / top 3 / median")
    for grace in args.grace:
        for rf in args.rf:
            shares, ranks = [], []
            for curves, order in draws():
                max_t = int(max(int(c.index[-1]) for c in curves.values()))
                finals = pd.Series({t: float(c.iloc[-1]) for t, c in curves.items()}).sort_values()
                rank = {t: r + 1 for r, t in enumerate(finals.index)}
                spent, reached = replay(curves, order, grace, rf, args.slots, max_t)
                shares.append(spent / (len(curves) * max_t))
                finished = {t: v for t, v in reached.items() if v is not None}
                ranks.append(rank[min(finished, key=finished.get)])
            shares_arr, ranks_arr = np.array(shares), np.array(ranks)
            print(
                f"{grace:5d} {rf:3g}  | {np.median(shares_arr):.0%} ({np.quantile(shares_arr, 0.1):.0%}-"
                f"{np.quantile(shares_arr, 0.9):.0%}) | {np.mean(ranks_arr == 1):.2f} / "
                f"{np.mean(ranks_arr <= 3):.2f} / {np.median(ranks_arr):.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("curves", type=Path, nargs="*")
    parser.add_argument("--metric", default="heldout/loss")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--grace", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--rf", type=float, nargs="+", default=[3, 4, 6, 8])
    parser.add_argument("--orders", type=int, default=300, help="simulated searches per setting")
    parser.add_argument(
        "--synthetic", action="store_true", help="curves from the model above, not from files"
    )
    parser.add_argument("--configs", type=int, default=24)
    parser.add_argument("--max-t", type=int, default=600)
    parser.add_argument("--every", type=int, default=100, help="steps between evaluation rounds (synthetic)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="the files hold parts of the same curves (a search's rounds and its runs resumed to the end)",
    )
    parser.add_argument("--trend", type=float, nargs="+", default=[0.0, 1.5])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.3, 1.0])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.synthetic:
        steps = list(range(args.every, args.max_t + 1, args.every))
        for trend in args.trend:
            for noise in args.noise:

                def draws(trend=trend, noise=noise):
                    for _ in range(args.orders):
                        curves = synthetic_curves(rng, args.configs, steps, trend, noise)
                        yield curves, sorted(curves)

                summarise(
                    f"synthetic: {args.configs} configurations, trend {trend}, noise {noise}", draws, args
                )
    frames = [(str(path), pd.read_parquet(path)) for path in args.curves]
    if args.merge and frames:
        frames = [(" + ".join(name for name, _ in frames), pd.concat([f for _, f in frames]))]
    for path, frame in frames:
        frame = frame[frame["metric"] == args.metric]
        curves = {
            trial: rows.groupby("step")["value"].last().sort_index()
            for trial, rows in frame.groupby("trial_id")
        }
        gaps = [t for t, c in curves.items() if len(c) != max(len(c) for c in curves.values())]
        if gaps:
            raise SystemExit(
                f"{path}: {len(gaps)} of {len(curves)} configurations lack some rounds ({gaps[:3]}...)"
            )

        def draws(curves=curves):
            for _ in range(args.orders):
                yield curves, list(rng.permutation(list(curves)))

        summarise(f"{path}: {len(curves)} configurations in random orders", draws, args)


if __name__ == "__main__":
    main()
