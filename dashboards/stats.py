"""The statistics a report states: mean and 95% interval over seeds, and comparisons between arms, run by run.

The unit of replication is the training run, and the items are a sample too. A metric's per-item scores form a
table arms x seeds x items (every arm answers the same items: the evaluation set depends only on `eval.set_seed`),
fitted as the linear mixed model the design implies:

    score[a, s, i] = arm[a] + seed[s] + item[i] + run[a, s] + arm:item[a, i] + seed:item[s, i] + noise

with the arm fixed and everything else random. A seed is a block (runs under one seed share their initialisation
and data order: in the A/A study, three arms' 0-shot CIDEr moved together by seed with correlations of 0.8-0.99), so
seed effects cancel from every comparison, as item difficulty does. What does not cancel: `run`, the training run's
own randomness, which only more seeds average away, and `arm:item`, how differently the arms fare on these
particular items, which more seeds never average away (only more items do). A comparison is a linear contrast of the
arms' means (arm minus reference, or the slope over ordered arms); its variance is estimated from the balanced
three-way ANOVA's mean squares, MS(arm:seed) + MS(arm:item) - MS(residual), each pooled over every arm of the study,
with Satterthwaite's degrees of freedom: the quasi-F test of crossed random effects (Clark 1973), negative variance
components truncated at zero, the degrees of freedom never more than the run term's (`_capped_df`). So hundreds of
items cannot make a run-level difference look certain (the run term has (arms - 1)(seeds - 1) degrees of freedom),
runs that agree by chance cannot make a difference on a few hundred items look certain either, and a study with more
arms estimates both better. Seeds that not every arm ran, and items
that not every run answered, are left out. With one seed there is an estimate and no test.

Each comparison states the run-to-run spread, the smallest difference its seeds can detect (80% power at the 5%
level), and, where the observed difference is below that, about how many seeds would detect one of its size. The
p-values of all the comparisons a report makes are corrected together with Holm's step-down method.
`bench/stats_calibration.py` measures the false-positive rate and power on simulated studies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import least_squares
from statsmodels.stats.multitest import multipletests

__all__ = [
    "ALPHA",
    "Comparison",
    "compare_to_reference",
    "equivalent",
    "fit_lr_law",
    "fit_runs",
    "grouped_ci",
    "holm",
    "LawFit",
    "mean_ci",
    "paired_comparison",
    "Components",
    "RunModel",
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
    delta: float  # arm mean - reference mean, over the seeds and items both have
    ci_low: float
    ci_high: float
    p_value: float
    pairs: int  # (seed, item) pairs both arms answered
    seeds: int = 0  # seeds every arm ran: the replications
    run_sd: float = float("nan")  # run-to-run standard deviation of a run's mean, seed effects removed
    detectable: float = float("nan")  # smallest |difference| these seeds detect with 80% power
    seeds_needed: float = float(
        "nan"
    )  # seeds to detect |delta| with 80% power (NaN when delta is 0, or when no number of seeds would)
    p_holm: float = float("nan")
    verdict: str = ""
    df: float = 0.0  # degrees of freedom of the contrast's error (Satterthwaite's, at most the runs')


_POWER = 0.8
_MAX_SEEDS = 1000
_ROUNDING = 1e-12


def _snap(value: float) -> float:
    """Zero for what is zero up to rounding: identical arms must compare as exactly equal."""
    return 0.0 if abs(value) < _ROUNDING else value


@dataclass(frozen=True)
class Components:
    """The variance components that a contrast's variance is made of, per unit of sum(w^2)."""

    run: float  # a training run's own randomness
    arm_item: float  # arm x item interaction: fixed by the item sample, whatever the seeds
    noise: float  # what is left of one score

    def contrast_var(self, seeds: int | np.ndarray, items: int) -> float | np.ndarray:
        return self.run / seeds + self.arm_item / items + self.noise / (seeds * items)

    def mean_squares(self, seeds, items) -> tuple:
        """The expected mean squares (arm:seed, arm:item, residual) of a study with this many seeds and items."""
        return (self.noise + items * self.run, self.noise + seeds * self.arm_item, self.noise)


def _capped_df(satterthwaite_df, df_runs):
    """A contrast's degrees of freedom: Satterthwaite's, never more than the run term's, (arms - 1)(seeds - 1).
    Satterthwaite's df rests on the observed MS(arm:seed); with few seeds that is barely known, and an MS(arm:seed)
    low by chance shrinks the standard error and swells the df together (2 arms x 2 seeds called a 0.30 difference
    at p 1e-58 from a df of 531; null studies whose arms differ item by item and whose runs land apart were called
    "better" or "worse" at 0.07-0.14 for a nominal 0.05, tests/dashboards/test_stats.py and bench/README.md). Many
    items can narrow the variance's estimate; they cannot add training runs."""
    return np.minimum(satterthwaite_df, df_runs)


def _satterthwaite(mean_squares: tuple, dfs: tuple, signs: tuple) -> float | np.ndarray:
    """Degrees of freedom of a linear combination of independent mean squares."""
    total = sum(sign * ms for sign, ms in zip(signs, mean_squares, strict=True))
    spread = sum(
        np.where(df > 0, ms**2 / np.maximum(df, 1), 0.0) for ms, df in zip(mean_squares, dfs, strict=True)
    )
    return np.where(spread > 0, total**2 / np.where(spread > 0, spread, 1.0), np.inf)


@dataclass(frozen=True)
class RunModel:
    """The crossed mixed model of one metric: arms x seeds x items, with its variance components."""

    arm_means: pd.Series  # per arm, over the seeds and items every arm has
    run_means: pd.DataFrame  # seeds x arms
    components: Components | None  # None with fewer than two seeds or two arms
    seeds: int  # seeds every arm ran
    items: int  # items every run answered
    df_runs: int  # (arms - 1)(seeds - 1)
    variance: float = float("nan")  # a contrast's estimated variance per unit of sum(w^2)
    df: float = float("nan")  # its degrees of freedom (Satterthwaite's, at most the runs')

    def contrast(self, label: str, reference: str, metric: str, weights: dict[str, float]) -> Comparison:
        nan = float("nan")
        if any(arm not in self.arm_means.index for arm in weights):  # an arm that did not record this metric
            return Comparison(label, reference, metric, nan, nan, nan, nan, 0)
        w = np.array(list(weights.values()))
        delta = _snap(float(sum(weight * self.arm_means[arm] for arm, weight in weights.items())))
        pairs = self.seeds * self.items
        if self.components is None or self.seeds < 2:  # no replication to test the estimate against
            return Comparison(label, reference, metric, delta, nan, nan, nan, pairs, self.seeds)
        scale = float((w**2).sum())
        se = _snap(float(np.sqrt(scale * self.variance)))
        spread = {
            "run_sd": float(np.sqrt(self.components.run + self.components.noise / self.items)),
            "detectable": self._reach(scale, self.seeds),
            "seeds_needed": self._seeds_needed(scale, delta),
            "df": float(self.df),
        }
        if se == 0:
            # No spread at all, between runs or items: an exact zero difference is no evidence, a constant
            # non-zero one (every item of every run moved by the same amount) is total.
            p = 1.0 if delta == 0 else 0.0
            return Comparison(label, reference, metric, delta, delta, delta, p, pairs, self.seeds, **spread)
        half = float(stats.t.ppf(0.975, self.df) * se)
        p = float(2 * stats.t.sf(abs(delta) / se, self.df))
        return Comparison(
            label, reference, metric, delta, delta - half, delta + half, p, pairs, self.seeds, **spread
        )

    def _reach(self, scale: float, seeds, alpha: float = ALPHA, power: float = _POWER):
        """Smallest true contrast detected with `power` if the study had `seeds` seeds (same arms and items)."""
        arms = self.run_means.shape[1]
        c, m = self.components, self.items
        variance = scale * c.contrast_var(seeds, m)
        df_runs = (arms - 1) * (np.asarray(seeds) - 1)
        df = _capped_df(
            _satterthwaite(
                c.mean_squares(seeds, m), (df_runs, (arms - 1) * (m - 1), df_runs * (m - 1)), (1, 1, -1)
            ),
            df_runs,
        )
        reach = (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * np.sqrt(variance)
        return float(reach) if np.ndim(reach) == 0 else reach

    def _seeds_needed(self, scale: float, delta: float) -> float:
        """About how many seeds detect a true difference of |delta| (NaN if none do: the arm x item part of the
        variance does not shrink with seeds, only with items)."""
        if not np.isfinite(delta) or delta == 0:
            return float("nan")
        n = np.arange(2, _MAX_SEEDS + 1)
        enough = n[self._reach(scale, n) <= abs(delta)]
        return float(enough[0]) if len(enough) else float("nan")


def fit_runs(items: pd.DataFrame, metric: str) -> RunModel:
    """Fit the crossed model to `metric` (items: arm, seed, item_id, metric, score)."""
    rows = items[items["metric"] == metric]
    cube = rows.groupby(["arm", "seed", "item_id"])["score"].mean().unstack("item_id")
    cube = cube.dropna(axis=1)  # the items every run answered
    arms = list(dict.fromkeys(cube.index.get_level_values("arm")))
    complete = cube.groupby(level="seed").size() == len(arms)
    cube = cube[cube.index.get_level_values("seed").isin(complete[complete].index)]
    run_means = cube.mean(axis=1).unstack("arm").reindex(columns=arms)
    seeds, m = run_means.shape[0], cube.shape[1]
    if seeds == 0 or m == 0:
        empty = pd.Series(dtype=float)
        return RunModel(empty, run_means, None, seeds, m, 0)
    y = np.stack([cube.xs(arm, level="arm").sort_index().to_numpy() for arm in arms])  # arms x seeds x items
    arm_means = pd.Series(y.mean(axis=(1, 2)), index=arms)
    k = len(arms)
    df_runs = (k - 1) * (seeds - 1)
    if k < 2 or seeds < 2:
        return RunModel(arm_means, run_means, None, seeds, m, df_runs)
    a, s, i = y.mean(axis=(1, 2)), y.mean(axis=(0, 2)), y.mean(axis=(0, 1))
    grand = y.mean()
    as_, ai, si = y.mean(axis=2), y.mean(axis=1), y.mean(axis=0)
    ss_as = m * ((as_ - a[:, None] - s[None, :] + grand) ** 2).sum()
    ss_ai = seeds * ((ai - a[:, None] - i[None, :] + grand) ** 2).sum()
    # The arm x seed x item interaction: what the full model leaves of each score.
    residual = (
        y - as_[:, :, None] - ai[:, None, :] - si[None] + a[:, None, None] + s[None, :, None] + i - grand
    )
    ss_e = (residual**2).sum()
    df_ai, df_e = (k - 1) * (m - 1), (k - 1) * (seeds - 1) * (m - 1)
    ms_as = ss_as / df_runs
    ms_ai = ss_ai / df_ai if df_ai else 0.0
    ms_e = ss_e / df_e if df_e else 0.0
    components = Components(
        run=max(ms_as - ms_e, 0.0) / m, arm_item=max(ms_ai - ms_e, 0.0) / seeds, noise=ms_e
    )
    # nm/2 x Var(arm - reference) = MS(arm:seed) + MS(arm:item) - MS(residual). Where the arm x item component
    # estimates at or below zero, that is MS(arm:seed) alone (never taken below MS(arm:item), which the run
    # component cannot be). Otherwise the sum is floored at MS(arm:item) (the run component truncated at zero).
    if ms_ai <= ms_e:
        combined, df = max(ms_as, ms_ai), float(df_runs)
    else:
        terms = ((ms_as, ms_ai, ms_e), (df_runs, df_ai, df_e))
        combined = max(ms_as + ms_ai - ms_e, ms_ai)
        df = float(_capped_df(_satterthwaite(*terms, (1, 1, -1)), df_runs))
    variance = combined / (seeds * m)
    return RunModel(arm_means, run_means, components, seeds, m, df_runs, variance, df)


def paired_comparison(items: pd.DataFrame, arm: str, reference: str, metric: str) -> Comparison:
    """Arm vs reference on one metric, seed by seed, with the run-level error pooled over every arm in `items`.
    items: arm, seed, metric, item_id, score."""
    return _arm_vs_reference(fit_runs(items, metric), arm, reference, metric)


def _arm_vs_reference(model: RunModel, arm: str, reference: str, metric: str) -> Comparison:
    return model.contrast(arm, reference, metric, {arm: 1.0, reference: -1.0})


def trend_comparison(items: pd.DataFrame, arms: list[str], metric: str) -> Comparison:
    """Whether `metric` rises along `arms` (in order): the least-squares slope of the arms' fitted means against their
    rank, tested against the pooled run-level error. delta is the fitted change from the first arm to the last
    (slope x (k - 1)), so it reads like a two-arm difference."""
    model = fit_runs(items[items["arm"].isin(arms)], metric)
    ranks = np.arange(len(arms), dtype=float)
    weights = (ranks - ranks.mean()) / ((ranks - ranks.mean()) ** 2).sum() * (len(arms) - 1)
    return model.contrast(
        f"trend {arms[0]} .. {arms[-1]}", arms[0], metric, dict(zip(arms, weights, strict=True))
    )


def equivalent(c: Comparison, margin: float, *, alpha: float = ALPHA) -> bool:
    """Two one-sided tests (TOST): the difference lies within +-margin at level alpha, i.e. its (1 - 2 alpha)
    interval does, from the same t-distribution as the comparison's."""
    if c.df < 1 or not np.isfinite(c.ci_low):
        return False
    se = (c.ci_high - c.ci_low) / 2 / stats.t.ppf(0.975, c.df)
    half = stats.t.ppf(1 - alpha, c.df) * se
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
    models = {metric: fit_runs(items, metric) for metric in metrics}
    found = [_arm_vs_reference(models[metric], arm, reference, metric) for arm in arms for metric in metrics]
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


@dataclass(frozen=True)
class LawFit:
    """The learning-rate law fitted to the runs themselves: ln(optimal peak LR) = slope ln N + intercept."""

    slope: float
    intercept: float
    ci_low: float  # the slope's 95% interval
    ci_high: float
    p_value: float  # two-sided, against a slope of zero (the optimum does not move with size)
    df: int  # runs minus the fitted parameters
    sizes: int
    runs: int
    seeds: int
    # (size, its fitted optimum) where that optimum lies outside the rates swept at the size: extrapolated
    unbracketed: tuple[tuple[float, float], ...] = ()


def fit_lr_law(runs: pd.DataFrame) -> LawFit | None:
    """One model of every run's loss (columns size, lr, seed, loss):

        loss = level[size, seed] + curvature[size] * (ln lr - (intercept + slope * ln size))^2 + noise

    a parabola in ln(LR) per size whose vertex, the optimum, moves along the law, fitted by least squares with the
    slope's interval from the residuals. A seed's sweep at one size is a block (its level is its own: a seed means
    another initialisation at every width), so the optimum is read from differences within a sweep. Each run is one
    replication, so the error is the runs' own scatter around the curves (with any lack of fit of the parabola):
    optima read off the arms' means and then regressed would throw that error away and test three points with one
    degree of freedom. None without two sizes, each swept at three or more rates, and a run to spare beyond the
    parameters."""
    runs = runs.dropna(subset=["size", "lr", "loss"])
    runs = runs[(runs["lr"] > 0) & (runs["size"] > 0)]
    sizes = sorted(runs["size"].unique())
    if len(sizes) < 2 or any(runs.loc[runs["size"] == s, "lr"].nunique() < 3 for s in sizes):
        return None
    blocks = runs.groupby(["size", "seed"]).ngroup().to_numpy()
    size_of = runs["size"].map({s: i for i, s in enumerate(sizes)}).to_numpy()
    log_lr = np.log(runs["lr"].to_numpy(dtype=float))
    log_size = np.log(np.asarray(sizes, dtype=float))
    centre = log_size.mean()  # so that the intercept and the slope are estimated nearly independently
    z = log_size - centre
    loss = runs["loss"].to_numpy(dtype=float)
    k, n_blocks = len(sizes), int(blocks.max()) + 1
    n_params = n_blocks + k + 2
    if len(runs) <= n_params:
        return None

    def residuals(theta: np.ndarray) -> np.ndarray:
        level, curvature = theta[:n_blocks], theta[n_blocks : n_blocks + k]
        intercept, slope = theta[n_blocks + k], theta[n_blocks + k + 1]
        vertex = intercept + slope * z
        return level[blocks] + curvature[size_of] * (log_lr - vertex[size_of]) ** 2 - loss

    start = np.concatenate(
        [
            [loss[blocks == b].min() for b in range(n_blocks)],
            np.full(k, max(float(np.ptp(loss)), 1e-3)),
            [float(np.mean(log_lr)), 0.0],
        ]
    )
    lower = np.full(n_params, -np.inf)
    lower[n_blocks : n_blocks + k] = 0.0  # a parabola that opens downwards has no optimum
    fit = least_squares(residuals, start, bounds=(lower, np.inf), x_scale="jac")
    df = len(runs) - n_params
    sigma2 = float(fit.fun @ fit.fun) / df
    covariance = np.linalg.pinv(fit.jac.T @ fit.jac) * sigma2
    at = n_blocks + k
    slope, intercept = float(fit.x[at + 1]), float(fit.x[at])
    se = float(np.sqrt(covariance[at + 1, at + 1]))
    if not np.isfinite(se) or np.any(fit.x[n_blocks:at] <= 1e-12):
        # A size whose sweep has no curvature pins no optimum: the slope is not identified.
        p, half = float("nan"), float("nan")
    elif se == 0.0:  # runs exactly on their curves (made-up data): nothing left to doubt
        p, half = (0.0 if slope else 1.0), 0.0
    else:
        p = float(2 * stats.t.sf(abs(slope) / se, df))
        half = float(stats.t.ppf(0.975, df) * se)
    log_optima = intercept + slope * z
    swept = np.log(runs.groupby("size")["lr"].agg(["min", "max"]))
    unbracketed = tuple(
        (float(size), float(np.exp(np.clip(log_optimum, -700.0, 700.0))))
        for size, log_optimum in zip(sizes, log_optima, strict=True)
        if not swept.loc[size, "min"] <= log_optimum <= swept.loc[size, "max"]
    )
    return LawFit(
        slope=slope,
        intercept=intercept - slope * centre,
        ci_low=slope - half,
        ci_high=slope + half,
        p_value=p,
        df=df,
        sizes=k,
        runs=len(runs),
        seeds=runs["seed"].nunique(),
        unbracketed=unbracketed,
    )
