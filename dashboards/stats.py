"""The statistics a report states: mean and 95% interval over seeds, and paired comparisons against the reference arm.

The unit of replication is the training run. A comparison pairs an arm with the reference under the same seed, on
the items both answered (every arm answers the same items: the evaluation set depends only on `eval.set_seed`), and
reduces each seed to one number, the mean of the per-item differences: item difficulty cancels inside a seed, and
the seeds are the replications. The test is a one-sample t-test over those per-seed differences (n seeds, n - 1
degrees of freedom), so run-to-run variance is the error term and hundreds of items cannot make a run-level
difference look certain; that variance is never taken below what the item sample alone puts into a run's mean; with
one seed there is an estimate and no test. Each comparison also states the run-to-run
spread of the differences, the smallest difference its number of seeds could detect (80% power at the 5% level),
and, where the observed difference is below that, about how many seeds would detect one of its size. The p-values of
all the comparisons a report makes are corrected together with Holm's step-down method. scipy and statsmodels do the
arithmetic; `bench/stats_calibration.py` measures the false-positive rate and power on simulated studies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

__all__ = [
    "ALPHA",
    "Comparison",
    "compare_to_reference",
    "detectable_difference",
    "equivalent",
    "grouped_ci",
    "holm",
    "mean_ci",
    "paired_comparison",
    "seeds_needed",
    "trend_comparison",
]

ALPHA = 0.05


def mean_ci(values: pd.Series | list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); the half-width is NaN with fewer than two values."""
    clean = pd.Series(values, dtype=float).dropna()
    if clean.empty:
        return float("nan"), float("nan")
    if len(clean) < 2:
        return float(clean.mean()), float("nan")
    sem = stats.sem(clean)
    return float(clean.mean()), float(sem * stats.t.ppf(0.975, len(clean) - 1))


def grouped_ci(grouped) -> pd.DataFrame | pd.Series:
    """Half-width of the 95% t-interval of each group of a pandas groupby (NaN under two values), vectorised: a
    study of thousands of arms must not pay a t-quantile call per cell."""
    counts = grouped.count()
    t = stats.t.ppf(0.975, (counts - 1).clip(lower=1))
    return (t * grouped.std(ddof=1) / np.sqrt(counts)).where(counts >= 2)


@dataclass(frozen=True)
class Comparison:
    arm: str
    reference: str
    metric: str
    delta: float  # mean over seeds of the per-seed mean difference arm - reference
    ci_low: float
    ci_high: float
    p_value: float
    pairs: int  # (seed, item) pairs both arms answered
    seeds: int = 0  # training runs paired: the replications
    run_sd: float = float("nan")  # standard deviation of the per-seed differences
    detectable: float = float("nan")  # smallest |difference| these seeds detect with 80% power
    seeds_needed: float = float(
        "nan"
    )  # seeds to detect |delta| with 80% power (NaN when delta is 0 or no spread)
    p_holm: float = float("nan")
    verdict: str = ""


_POWER = 0.8
_MAX_SEEDS = 1000


def detectable_difference(run_sd: float, seeds: int, *, alpha: float = ALPHA, power: float = _POWER) -> float:
    """Smallest true difference a paired t-test over `seeds` runs detects with `power` (NaN under two seeds)."""
    if seeds < 2 or not np.isfinite(run_sd):
        return float("nan")
    df = seeds - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * run_sd / np.sqrt(seeds))


def seeds_needed(delta: float, run_sd: float, *, alpha: float = ALPHA, power: float = _POWER) -> float:
    """About how many seeds detect a true difference of |delta| given this run-to-run spread (NaN if none do)."""
    if not np.isfinite(run_sd) or run_sd <= 0 or not np.isfinite(delta) or delta == 0:
        return float("nan")
    n = np.arange(2, _MAX_SEEDS + 1)
    reach = (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * run_sd / np.sqrt(n)
    enough = n[reach <= abs(delta)]
    return float(enough[0]) if len(enough) else float("nan")


def _run_level(arm: str, reference: str, metric: str, contrast: pd.Series) -> Comparison:
    """The comparison of a per-item contrast (indexed by seed, item_id) whose per-seed mean is the run's value.

    The runs' spread is estimated from n seeds, but it can be no smaller than the spread the item sample alone puts
    into each run's mean (known well from hundreds of items): the estimate is floored there, as a random-effects
    model truncates its between-run variance at zero. Without the floor, three runs of a model that answers every
    question the same way can agree to the third decimal by chance, and a t-test on two degrees of freedom calls that
    certain (seen in the A/A study).
    """
    per_seed = contrast.groupby(level="seed").mean()
    n, nan = len(per_seed), float("nan")
    if n == 0:
        return Comparison(arm, reference, metric, nan, nan, nan, nan, 0)
    delta = float(per_seed.mean())
    if n < 2:  # one run: an estimate, no replication to test it against
        return Comparison(arm, reference, metric, delta, nan, nan, nan, len(contrast), n)
    item_sampling = contrast.groupby(level="seed").agg(
        lambda d: d.var(ddof=1) / len(d) if len(d) > 1 else 0.0
    )
    run_sd = float(np.sqrt(max(per_seed.var(ddof=1), item_sampling.mean())))
    spread = {
        "run_sd": run_sd,
        "detectable": detectable_difference(run_sd, n),
        "seeds_needed": seeds_needed(delta, run_sd),
    }
    if run_sd == 0:
        # No spread at all, within runs or between them: an exact zero difference is no evidence, a constant
        # non-zero one (every item of every run moved by the same amount) is total.
        p = 1.0 if delta == 0 else 0.0
        return Comparison(arm, reference, metric, delta, delta, delta, p, len(contrast), n, **spread)
    se = run_sd / np.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1) * se)
    p = float(2 * stats.t.sf(abs(delta) / se, n - 1))
    return Comparison(
        arm, reference, metric, delta, delta - half, delta + half, p, len(contrast), n, **spread
    )


def paired_comparison(items: pd.DataFrame, arm: str, reference: str, metric: str) -> Comparison:
    """Arm vs reference on one metric, one paired difference per seed. items: arm, seed, metric, item_id, score."""
    rows = items[items["metric"] == metric]
    a = rows[rows["arm"] == arm].groupby(["seed", "item_id"])["score"].mean()
    b = rows[rows["arm"] == reference].groupby(["seed", "item_id"])["score"].mean()
    return _run_level(arm, reference, metric, (a - b).dropna())  # the (seed, item) pairs both arms have


def trend_comparison(items: pd.DataFrame, arms: list[str], metric: str) -> Comparison:
    """Whether `metric` rises along `arms` (in order), run by run: per seed, the least-squares slope of the per-arm
    mean scores against the arm's rank; a t-test over seeds. delta is the fitted change from the first arm to the
    last (slope x (k - 1)), so it reads like a two-arm difference."""
    rows = items[(items["metric"] == metric) & items["arm"].isin(arms)]
    scores = (
        rows.groupby(["seed", "item_id", "arm"])["score"].mean().unstack("arm").reindex(columns=arms).dropna()
    )
    ranks = np.arange(len(arms), dtype=float)
    # The slope is linear in the scores, so each item's own slope averages to the slope of the per-arm means.
    weights = (ranks - ranks.mean()) / ((ranks - ranks.mean()) ** 2).sum() * (len(arms) - 1)
    return _run_level(f"trend {arms[0]} .. {arms[-1]}", arms[0], metric, scores @ weights)


def equivalent(c: Comparison, margin: float, *, alpha: float = ALPHA) -> bool:
    """Two one-sided tests (TOST): the difference lies within +-margin at level alpha, i.e. its (1 - 2 alpha)
    interval does, from the same t-distribution over seeds as the comparison's."""
    if c.seeds < 2 or not np.isfinite(c.ci_low):
        return False
    df = c.seeds - 1
    se = (c.ci_high - c.ci_low) / 2 / stats.t.ppf(0.975, df)
    half = stats.t.ppf(1 - alpha, df) * se
    return bool(abs(c.delta) + half < margin)


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaN entries stay NaN and do not count as comparisons)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        adjusted[tested] = multipletests(p[tested], method="holm")[1]
    return adjusted.tolist()


def compare_to_reference(
    items: pd.DataFrame, reference: str, metrics: list[str], *, alpha: float = ALPHA
) -> pd.DataFrame:
    """Every other arm against the reference on every metric, Holm-corrected together, with a verdict each."""
    arms = [a for a in items["arm"].drop_duplicates() if a != reference]
    found = [paired_comparison(items, arm, reference, metric) for arm in arms for metric in metrics]
    adjusted = holm([c.p_value for c in found])
    rows = []
    for c, p in zip(found, adjusted, strict=True):
        if c.seeds == 1:
            verdict = "estimate only (one seed)"
        elif np.isnan(p):
            verdict = "not enough paired runs"
        elif p < alpha:
            verdict = "better" if c.delta > 0 else "worse"
        else:
            verdict = "no detectable difference"
        rows.append({**c.__dict__, "p_holm": p, "verdict": verdict})
    return pd.DataFrame(rows, columns=[*Comparison.__dataclass_fields__])
