"""The paper beside us: each MM1 finding a study can speak to, the paper's claim and ours, with the numbers.

The findings ship as data (paper_findings.yaml). A study speaks to a finding when it varies the finding's axis and has
the arms the check needs; the comparison blocks the runs by seed and the values of the study's other axes, and tests
the arms' difference (or the trend over ordered arms) against the run-to-run error pooled over the finding's arms
(dashboards.stats), on each of the finding's per-item metrics, Holm-corrected together.
A comparison in which both arms sit at chance on the metric (dashboards.floors) cannot speak to the paper: it is
listed but left out of the verdict, and a finding with nothing else to go on is "cannot speak (at chance)".
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import pandas as pd
import yaml
from scipy import stats

from dashboards.floors import at_chance, chance_line
from dashboards.stats import ALPHA, equivalent, fit_lr_law, holm, paired_comparison, trend_comparison
from mm1core.axes import resolve_axis

__all__ = ["assess", "assess_all", "at_reference_values", "law_runs", "load_findings", "stand_in_metrics"]


@cache
def load_findings() -> tuple[dict, ...]:
    text = resources.files("dashboards").joinpath("paper_findings.yaml").read_text(encoding="utf-8")
    return tuple(yaml.safe_load(text))


def _same_axis(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return resolve_axis(a) == resolve_axis(b)
    except ValueError:
        return False


def _ordered(values: list, order: list | None) -> list:
    if order:
        return sorted(values, key=lambda v: order.index(v) if v in order else len(order))
    try:
        return sorted(values, key=float)
    except (TypeError, ValueError):
        return sorted(values, key=str)


def _pairs_table(items: pd.DataFrame, trials: pd.DataFrame, axis: str, others: list[str]) -> pd.DataFrame:
    """Items labelled by the finding's axis value, blocked across arms by seed and the other axes' values."""
    keyed = trials[["trial_id", axis, *others]].rename(columns={axis: "_value"})
    table = items.merge(keyed, on="trial_id")
    table["arm"] = table["_value"].astype(str)
    # In a one-at-a-time study an arm leaves the other axes at the reference: no value recorded (NaN), one block.
    table["seed"] = (
        table[["seed", *others]].astype(object).fillna("reference").astype(str).agg("|".join, axis=1)
    )
    return table


# A finding's metric of the world's suite -> the paper's column it reads, and the file task score that column takes.
_COLUMNS = {"cider": ("caption", "cider"), "vqa": ("vqa", "vqa")}


def stand_in_metrics(metrics: list[str], eval_tasks: list[dict]) -> list[str]:
    """The file tasks' metrics that play a finding's columns: `4shot/vqa` -> `<task>/4shot/vqa` for every task the
    study declares `plays: vqa`; `textcore/avg` -> `<task>/0shot/accuracy` for a task that plays text."""
    out = []
    for metric in metrics:
        shots, _, score = metric.partition("/")
        for task in eval_tasks:
            plays = task.get("plays")
            if metric == "textcore/avg" and plays == "text":
                out.append(f"{task['name']}/0shot/accuracy")
            elif score in _COLUMNS and plays == _COLUMNS[score][0]:
                out.append(f"{task['name']}/{shots}/{_COLUMNS[score][1]}")
    return out


def _with_categories(items: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The items, plus those of each category metric among `metrics` that the evaluation recorded only under its
    average: `0shot/vqa/color` is the 0shot/vqa items about colour, `textcore/scene_qa` the textcore/avg items about
    scenes (a category of `<family>/avg` is `<family>/<category>`)."""
    missing = set(metrics) - set(items["metric"])
    if not missing or "category" not in items.columns:
        return items
    named = items["metric"].str.removesuffix("/avg") + "/" + items["category"].astype(str)
    picked = named.isin(missing)
    return pd.concat([items, items[picked].assign(metric=named[picked])], ignore_index=True)


def assess(
    finding: dict,
    trials: pd.DataFrame,
    items: pd.DataFrame,
    study_axes: list[str],
    eval_tasks: list[dict] | None = None,
) -> dict | None:
    """Our verdict on one finding, or None when the study does not vary its axis. A file task that plays one of the
    paper's columns (eval_tasks, from study.json) is compared on that column beside the world's metric."""
    axis = next((a for a in study_axes if _same_axis(a, finding["axis"])), None)
    if axis is None or axis not in trials.columns:
        return None
    base = {k: finding.get(k) for k in ("id", "claim", "evidence", "tag")}
    if finding["check"] == "law":
        return base | _assess_law(finding, trials, axis)
    done = trials[trials["status"] == "finished"]
    if finding.get("values"):  # the arms the paper compared: another value of the axis does not speak to it
        done = done[done[axis].astype(str).isin([str(v) for v in finding["values"]])]
    values = _ordered(list(done[axis].drop_duplicates()), finding.get("order"))
    shown = [str(v) for v in values]
    check = finding["check"]
    if check == "increasing":
        pairs = [(values[-1], values[0])] if len(values) > 1 else []
    elif check == "better":
        pairs = [(finding["better"], finding["than"])]
    elif check == "best":
        pairs = [(finding["best"], v) for v in values if str(v) != str(finding["best"])]
    else:  # same
        pairs = [(v, values[0]) for v in values[1:]]
    missing = sorted({str(v) for pair in pairs for v in pair} - set(shown))
    diverged = _diverged_note(trials, axis)
    if not pairs or missing:
        needs = ", ".join(missing) or "two values"
        return base | {"ours": "not tested", "detail": f"needs arms with {axis} = {needs}" + diverged}
    others = [a for a in study_axes if a != axis and a in trials.columns]
    wanted = [*finding["metrics"], *stand_in_metrics(finding["metrics"], eval_tasks or [])]
    table = _pairs_table(_with_categories(items, wanted), done, axis, others)
    recorded = [m for m in wanted if m in set(table["metric"])]
    # Each comparison with the arms it weighs: a comparison whose every arm sits at chance cannot speak.
    if check == "increasing" and len(values) > 2:  # the trend over every value, not the two extremes alone
        weighed = [(trend_comparison(table, shown, metric), shown) for metric in recorded]
    else:
        weighed = [
            (paired_comparison(table, str(a), str(b), metric), (str(a), str(b)))
            for a, b in pairs
            for metric in recorded
        ]
    if not weighed:
        return base | {"ours": "not tested", "detail": "the study recorded none of its metrics per item"}
    found = [c for c, _ in weighed]
    mute = {id(c): arms for c, arms in weighed if all(_at_chance(done, axis, arm, c.metric) for arm in arms)}
    speaking = [c for c in found if id(c) not in mute]
    if not speaking:
        return base | {
            "ours": "cannot speak (at chance)",
            "detail": "both arms sit at chance on every metric compared: "
            + "; ".join(
                f"{c.arm} vs {c.reference} {c.metric} {c.delta:+.3f} ({_below_lines(done, axis, mute[id(c)], c.metric)})"
                for c in found
            ),
        }
    adjusted = dict(zip(map(id, speaking), holm([c.p_value for c in speaking]), strict=True))
    up = [c for c in speaking if adjusted[id(c)] < ALPHA and c.delta > 0]
    down = [c for c in speaking if adjusted[id(c)] < ALPHA and c.delta < 0]
    if check == "same":
        # "Matters little" is an equivalence claim: agreed with only when every difference is shown to lie within
        # the finding's margin (TOST), never on the absence of a detected difference.
        margin = float(finding["margin"])
        if up or down:
            ours = "disagrees"
        elif all(equivalent(c, margin) for c in speaking):
            ours = f"agrees (equivalent within ±{margin:g})"
        else:
            ours = "inconclusive"
    elif check == "best":
        ours = "disagrees" if down else "agrees" if up else "inconclusive"
    else:
        ours = (
            "agrees"
            if up and not down
            else "disagrees"
            if down and not up
            else "mixed"
            if up
            else "inconclusive"
        )
    # Crossed with another axis, a comparison's replications are its blocks, seed x the other axes' values: runs
    # of each arm, more of them than seeds. Said as such, never as seeds.
    seeds = int(done["seed"].nunique())
    unit = "seeds" if all(c.seeds <= seeds for c in found) else "runs of each arm"
    detail = "; ".join(
        f"{c.arm} vs {c.reference} {c.metric} {c.delta:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] "
        + (
            f"p(Holm) {adjusted[id(c)]:.2g}"
            if id(c) in adjusted
            else f"every arm at chance ({_below_lines(done, axis, mute[id(c)], c.metric)}): left out"
        )
        + _what_would_settle(c, adjusted.get(id(c)), unit)
        for c in found
    )
    # The scoreboard's one number per finding: the comparison that weighs most (the smallest corrected p).
    lead = min(speaking, key=lambda c: adjusted[id(c)])
    headline = {
        "comparison": f"{lead.arm} vs {lead.reference} {lead.metric}",
        "effect": lead.delta,
        "ci_low": lead.ci_low,
        "ci_high": lead.ci_high,
        "p_holm": adjusted[id(lead)],
        "seeds": min(lead.seeds, seeds),
        "runs": lead.seeds,
    }
    rivals = [a for a in others if any(_same_axis(a, r) for r in finding.get("outranks", []))]
    if rivals and ours == "agrees":
        # "Highest impact": the axis's effect must also exceed each rival axis's the study varies, run by run.
        ranked = [_outranks(done, axis, values, rival, metric) for rival in rivals for metric in recorded]
        ranked = [r for r in ranked if r is not None]
        p_ranked = holm([r[3] for r in ranked])
        wins = [r for r, p in zip(ranked, p_ranked, strict=True) if p < ALPHA and r[2] > 0]
        losses = [r for r, p in zip(ranked, p_ranked, strict=True) if p < ALPHA and r[2] < 0]
        ours = "disagrees" if losses else "agrees" if wins else "inconclusive"
        detail += "; " + "; ".join(
            f"{axis} effect minus {rival} range on {metric} {gap:+.3f} p(Holm) {p:.2g}"
            for (rival, metric, gap, _), p in zip(ranked, p_ranked, strict=True)
        )
    return base | {"ours": ours, "detail": detail + diverged} | headline


def law_runs(trials: pd.DataFrame, lr_axis: str, loss: str = "heldout/loss") -> pd.DataFrame:
    """The finished runs of a learning-rate sweep at a fixed peak LR, as fit_lr_law takes them."""
    done = trials[trials["status"] == "finished"] if "status" in trials else trials
    if loss not in done.columns or "num_params" not in done.columns:
        return pd.DataFrame(columns=["size", "lr", "seed", "loss"])
    return pd.DataFrame(
        {
            "size": pd.to_numeric(done["num_params"], errors="coerce"),
            # "auto" arms take the law's own LR: no fixed rate to place on the curve
            "lr": pd.to_numeric(done[lr_axis], errors="coerce"),
            "seed": done["seed"].astype(str),
            "loss": pd.to_numeric(done[loss], errors="coerce"),
        }
    ).dropna()


def _assess_law(finding: dict, trials: pd.DataFrame, axis: str) -> dict:
    """F12: does the optimal peak LR fall with model size? The sign of the law's slope, fitted to every run's
    held-out loss (dashboards.stats.fit_lr_law), beside the paper's slope."""
    fit = fit_lr_law(law_runs(trials, axis))
    if fit is None:
        return {
            "ours": "not tested",
            "detail": "needs two or more model sizes, each swept at three or more peak LRs, and a run to spare"
            + _diverged_note(trials, axis),
        }
    paper = finding["law"]["a"]
    comparison = "slope of ln(optimal peak LR) against ln N"
    if fit.p_value != fit.p_value:  # NaN
        ours, said = "inconclusive", "a sweep without curvature pins no optimum at its size"
    else:
        ours = "inconclusive" if fit.p_value >= ALPHA else "agrees" if fit.slope < 0 else "disagrees"
        inside = fit.ci_low <= paper <= fit.ci_high
        said = (
            f"{fit.slope:+.3f} [{fit.ci_low:+.3f}, {fit.ci_high:+.3f}] p {fit.p_value:.2g}, {fit.df} df, "
            f"from {fit.runs} runs at {fit.sizes} sizes; the paper's {paper:+.4f} is "
            + ("inside" if inside else "outside")
            + " that interval"
            + "".join(
                f"; the optimum at N={size:,.0f} ({optimum:.2g}) lies outside the peak LRs swept there: "
                "extrapolated, a sweep that brackets it would pin it"
                for size, optimum in fit.unbracketed
            )
        )
    return {
        "ours": ours,
        "detail": f"{comparison}: {said}" + _diverged_note(trials, axis),
        "comparison": comparison,
        "effect": fit.slope,
        "ci_low": fit.ci_low,
        "ci_high": fit.ci_high,
        "p_holm": fit.p_value,  # one test: nothing to correct for
        "seeds": fit.seeds,
    }


def _diverged_note(trials: pd.DataFrame, axis: str) -> str:
    """Runs whose loss became non-finite are no result of their arm, but never silently absent from a finding."""
    if "status" not in trials:
        return ""
    diverged = trials[trials["status"] == "diverged"]
    if diverged.empty:
        return ""
    runs = ", ".join(f"{axis}={getattr(r, axis, '?')} seed {r.seed}" for r in diverged.itertuples())
    return f"; diverged, so left out: {runs}"


def _outranks(
    trials: pd.DataFrame, axis: str, values: list, rival: str, metric: str
) -> tuple[str, str, float, float] | None:
    """(rival, metric, mean gap, p): per seed, the axis's effect (its largest value minus its smallest, averaged
    over the rival's values) minus the rival's range (largest minus smallest arm mean over its values, averaged over
    the axis's), t-tested over seeds. None without two seeds that ran every combination."""
    if metric not in trials.columns:
        return None
    runs = trials.pivot_table(index="seed", columns=[axis, rival], values=metric, aggfunc="mean").dropna()
    if len(runs) < 2:
        return None
    top, bottom = values[-1], values[0]
    effect = (runs.xs(top, level=axis, axis=1) - runs.xs(bottom, level=axis, axis=1)).mean(axis=1)
    by_rival = runs.T.groupby(level=rival).mean().T  # (seeds, rival values): averaged over the axis's values
    gaps = effect - (by_rival.max(axis=1) - by_rival.min(axis=1))
    test = stats.ttest_1samp(gaps, 0.0)
    return rival, metric, float(gaps.mean()), float(test.pvalue)


def _what_would_settle(c, p_holm: float | None, unit: str = "seeds") -> str:
    """For a comparison that said nothing: about how many seeds (or runs of each arm, `unit`) would detect a
    difference of its size."""
    if p_holm is None or not p_holm >= ALPHA:
        return ""
    if c.seeds_needed == c.seeds_needed and c.seeds_needed <= c.seeds:
        return f" (these {unit} would detect it alone, not after the correction for the other comparisons)"
    if c.seeds_needed == c.seeds_needed:  # not NaN
        return f" (~{int(c.seeds_needed)} {unit} would detect it)"
    return f" (no number of {unit} would: more items would)" if c.delta else ""


def _pooled_row(trials: pd.DataFrame, axis: str, value: str, metric: str) -> dict:
    """The finished trials with this axis value as one arm-table row for `metric` (mean over them, and over the
    study's other axes: the finding pools them too)."""
    rows = trials[trials[axis].astype(str) == str(value)]
    columns = [c for c in (metric, f"floor/chance/{metric}", f"floor/oracle/{metric}") if c in rows.columns]
    return {f"{c} mean": rows[c].mean() for c in columns}


def _at_chance(trials: pd.DataFrame, axis: str, value: str, metric: str) -> bool:
    return at_chance(_pooled_row(trials, axis, value, metric), metric)


def _below_lines(trials: pd.DataFrame, axis: str, arms: tuple[str, ...] | list[str], metric: str) -> str:
    """Each arm's mean against its chance line, "5:5:1 0.144 < 0.148, ...": the reader sees how far under the line a
    left-out comparison's arms sit, and a verdict that hangs on an arm a hair below it is seen as such."""
    marks = []
    for arm in arms:
        row = _pooled_row(trials, axis, arm, metric)
        marks.append(f"{arm} {row[f'{metric} mean']:.3f} < {chance_line(row, metric):.3f}")
    return ", ".join(marks)


def assess_all(
    trials: pd.DataFrame,
    items: pd.DataFrame,
    study_axes: list[str],
    eval_tasks: list[dict] | None = None,
    reference_values: dict | None = None,
) -> list[dict]:
    """Every finding the study speaks to, its unset axes read at the reference's values (at_reference_values)."""
    trials = at_reference_values(trials, reference_values)
    return [a for f in load_findings() if (a := assess(f, trials, items, study_axes, eval_tasks)) is not None]


def at_reference_values(trials: pd.DataFrame, reference_values: dict | None) -> pd.DataFrame:
    """The trials with every axis an arm leaves unset at the reference's value (reference_values, from study.json).

    one_at_a_time arms set only the axis they vary, and the reference arm none: without this the reference arm would
    be the value NaN, matched and compared with nothing."""
    trials = trials.copy()
    for axis, value in (reference_values or {}).items():
        if axis in trials.columns and trials[axis].isna().any():
            filled = trials[axis].astype(object).where(trials[axis].notna(), value)
            numbers = pd.to_numeric(filled, errors="coerce")
            # A column with gaps was float (32.0): with them filled, whole numbers read as the spec wrote them.
            whole = numbers.notna().all() and (numbers == numbers.round()).all()
            trials[axis] = numbers.astype(int) if whole else filled
    return trials
