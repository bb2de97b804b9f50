"""Calibration of F12's verdict (`dashboards.stats.fit_lr_law`): false-positive rate and power, by simulation.

A simulated sweep has the f12-lr-law study's shape: peak LRs 5e-4 .. 4e-3 at three LM sizes, some seeds. A run's
held-out loss is level + seed-at-this-size shift + curvature * ln(lr / optimum)^2 + noise, the optimum at size N
exp(slope * ln(N / 1e6) + ln 1.5e-3). With slope 0 the optimum does not move and every "agrees" or "disagrees" is a
false positive; with the paper's slope (-0.4214) the share called "agrees" is the power. Also printed: the spread
of the fitted slopes against the median standard error the fit states (equal when the interval is honest).

    python bench/lr_law_calibration.py --noise 0.003 --studies 400
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy import stats

from dashboards.stats import ALPHA, fit_lr_law

LRS = (5e-4, 1e-3, 2e-3, 4e-3)


def simulate(rng, slope: float, args: argparse.Namespace) -> pd.DataFrame:
    rows = []
    for size in args.sizes:
        best = np.exp(slope * np.log(size / 1e6) + np.log(1.5e-3))
        for seed in range(args.seeds):
            shift = rng.normal(0.0, args.seed_spread)  # a seed is another initialisation at every size
            for lr in LRS:
                loss = 1.0 + shift + args.curvature * np.log(lr / best) ** 2 + rng.normal(0.0, args.noise)
                rows.append({"size": size, "lr": lr, "seed": str(seed), "loss": loss})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.003, help="a run's own loss noise (SD)")
    parser.add_argument("--seed-spread", type=float, default=0.02, help="SD of a seed's shift at one size")
    parser.add_argument("--curvature", type=float, default=0.03, help="loss per unit of ln(lr / optimum)^2")
    parser.add_argument("--sizes", type=float, nargs="+", default=[3e5, 1e6, 3.5e6])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for slope in (0.0, -0.4214):
        fits = [fit_lr_law(simulate(rng, slope, args)) for _ in range(args.studies)]
        tested = [f for f in fits if f.p_value == f.p_value]
        called = [f for f in tested if f.p_value < ALPHA]
        agrees = sum(f.slope < 0 for f in called) / len(tested)
        disagrees = sum(f.slope > 0 for f in called) / len(tested)
        spread = float(np.std([f.slope for f in tested], ddof=1))
        stated = float(np.median([(f.ci_high - f.ci_low) / 2 / stats.t.ppf(0.975, f.df) for f in tested]))
        print(
            f"slope {slope:+.4f}: agrees {agrees:.3f}, disagrees {disagrees:.3f} of {len(tested)} studies "
            f"({args.studies - len(tested)} unidentified); fitted slopes' SD {spread:.4f}, median stated SE "
            f"{stated:.4f}, {tested[0].df} df"
        )


if __name__ == "__main__":
    main()
