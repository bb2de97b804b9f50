"""The statistics a report states: mean and 95% interval over seeds, and paired comparisons against the reference arm.

A comparison pairs an arm with the reference on the same evaluation item under the same seed (every arm answers the
same items: the evaluation set depends only on `eval.set_seed`), so item difficulty cancels and only the arms'
difference and seed noise remain. The test is a paired t-test over those (seed, item) differences; the p-values of
all the comparisons a report makes are corrected together with Holm's step-down method, and each comparison gets a
plain verdict. scipy and statsmodels do the arithmetic.
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
    "grouped_ci",
    "holm",
    "mean_ci",
    "paired_comparison",
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
    delta: float  # mean of arm - reference over the pairs
    ci_low: float
    ci_high: float
    p_value: float
    pairs: int
    p_holm: float = float("nan")
    verdict: str = ""


def paired_comparison(items: pd.DataFrame, arm: str, reference: str, metric: str) -> Comparison:
    """Arm vs reference on one metric, paired over (seed, item_id). items: arm, seed, metric, item_id, score."""
    rows = items[items["metric"] == metric]
    a = rows[rows["arm"] == arm].groupby(["seed", "item_id"])["score"].mean()
    b = rows[rows["arm"] == reference].groupby(["seed", "item_id"])["score"].mean()
    diff = (a - b).dropna()  # only the (seed, item) pairs both arms have
    n = len(diff)
    if n < 2:
        return Comparison(
            arm, reference, metric, float(diff.mean()) if n else float("nan"), *(float("nan"),) * 3, n
        )
    if np.allclose(diff, diff.iloc[0]):
        # No spread: t is undefined; an exact zero difference is no evidence, a constant non-zero one is total.
        p = 1.0 if diff.iloc[0] == 0 else 0.0
        return Comparison(
            arm, reference, metric, float(diff.iloc[0]), float(diff.iloc[0]), float(diff.iloc[0]), p, n
        )
    test = stats.ttest_1samp(diff, 0.0)
    low, high = test.confidence_interval(0.95)
    return Comparison(
        arm, reference, metric, float(diff.mean()), float(low), float(high), float(test.pvalue), n
    )


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
        if np.isnan(p):
            verdict = "not enough paired items"
        elif p < alpha:
            verdict = "better" if c.delta > 0 else "worse"
        else:
            verdict = "no detectable difference"
        rows.append({**c.__dict__, "p_holm": p, "verdict": verdict})
    return pd.DataFrame(rows, columns=[*Comparison.__dataclass_fields__])
