"""results/<study>/report.html: arms x metrics (mean and 95% CI over seeds) and metric-vs-axis figures.

Self-contained: plotly.js is inlined once, nothing is fetched when the page opens. Study names, descriptions, arms and
errors are escaped: a report shows what a study says, it never runs it.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from dashboards.cost import cost_html
from dashboards.findings import assess_all, at_reference_values
from dashboards.floors import (
    RELIANCE,
    arm_flags,
    arm_rows,
    at_chance,
    banner_html,
    comparison_note,
    floor_levels,
    floored_metrics,
    floors_table_html,
    reference_banner,
    rule_text,
)
from dashboards.provenance import (
    code_versions_note,
    comparable_items,
    machines_note,
    shared_encoder_note,
    split_stale,
    stale_html,
)
from dashboards.search_view import load_search, search_html
from dashboards.stats import compare_to_reference, grouped_ci
from dashboards.views import cell, figure_html, paper_views_html
from mm1core import schema
from mm1core.eval import HEADLINE_METRICS, file_task_headlines
from mm1core.schema import last_line
from mm1core.storage import atomic_write, atomic_write_text

__all__ = ["arm_table", "metric_columns", "write_report"]


def metric_columns(trials: pd.DataFrame) -> list[str]:
    return schema.metric_columns(trials.columns)


def present_axes(trials: pd.DataFrame, study_axes: list[str]) -> list[str]:
    return [a for a in study_axes if a in trials.columns]


def arm_table(trials: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per arm, ordered by its axis values: seeds finished, and mean / 95% CI half-width of every metric."""
    done = trials[trials["status"] == "finished"]
    present = [a for a in axes if a in done.columns]
    if present:
        done = done.sort_values(present, kind="stable")
    metrics = metric_columns(trials)
    if done.empty:
        return pd.DataFrame()
    grouped = done.groupby("arm", sort=False)[metrics]
    means, cis = grouped.mean(), grouped_ci(grouped)
    table = pd.DataFrame({"arm": means.index, "seeds": done.groupby("arm", sort=False).size().to_numpy()})
    columns = {}
    for metric in metrics:
        columns[f"{metric} mean"] = means[metric].to_numpy()
        columns[f"{metric} ci95"] = cis[metric].to_numpy()
    return pd.concat([table, pd.DataFrame(columns)], axis=1)


def _marked_cell(row: dict, metric: str) -> str:
    """A table cell, shaded with its floors in the tooltip when the arm sits at chance on the metric."""
    text = cell(row[f"{metric} mean"], row[f"{metric} ci95"])
    if not at_chance(row, metric):
        return f"<td>{text}</td>"
    chance, oracle = floor_levels(row, metric)
    return f"<td class='at-chance' title='at chance: chance {chance:.3f}, oracle {oracle:.3f}'>{text} ⊘</td>"


def _table_html(table: pd.DataFrame, metrics: list[str]) -> str:
    """Arms x metrics; cells at chance are marked ⊘, and a last column says what an arm cannot speak to."""
    floored = floored_metrics(table)
    flagged = {str(row["arm"]): arm_flags(row, floored) for row in table.to_dict("records")}
    marks = any(flagged.values())
    head = "".join(f"<th>{html.escape(m)}</th>" for m in ["arm", "seeds", *metrics])
    head += "<th>cannot speak</th>" if marks else ""
    rows = []
    for row in table.to_dict("records"):
        cells = f"<td>{html.escape(str(row['arm']))}</td><td>{row['seeds']}</td>"
        cells += "".join(_marked_cell(row, m) for m in metrics)
        cells += f"<td class='missing'>{html.escape(flagged[str(row['arm'])])}</td>" if marks else ""
        rows.append(f"<tr>{cells}</tr>")
    body = "\n".join(rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


_MAX_POINTS = 2000


def _axis_figure(trials: pd.DataFrame, axis: str, metric: str) -> go.Figure:
    done = trials[trials["status"] == "finished"]
    fig = go.Figure()
    grouped = done.groupby(axis, sort=True)[metric]
    means = grouped.mean()
    cis = grouped_ci(grouped).fillna(0.0)
    xs = [str(x) for x in means.index]
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=means.values,
            error_y={"type": "data", "array": cis.values},
            mode="lines+markers",
            name="mean ± 95% CI",
        )
    )
    if len(done) <= _MAX_POINTS:  # beyond that, single trials are unreadable and only slow the page
        fig.add_trace(
            go.Scatter(
                x=[str(x) for x in done[axis]],
                y=done[metric],
                mode="markers",
                name="seeds",
                marker={"size": 6, "opacity": 0.5},
                text=[f"seed {s}" for s in done["seed"]],
            )
        )
    fig.update_layout(
        title=f"{metric} vs {axis}",
        xaxis_title=axis,
        yaxis_title=metric,
        height=380,
        margin={"l": 50, "r": 20, "t": 50, "b": 50},
        xaxis={"type": "category"},
    )
    return fig


def reference_arm(trials: pd.DataFrame, reference_values: dict) -> str | None:
    """The arm whose axis values, unset ones read at the reference's (at_reference_values), are the reference
    config's; else the first arm in axis order."""
    done = at_reference_values(trials[trials["status"] == "finished"], reference_values)
    if done.empty:
        return None
    for arm, group in done.groupby("arm", sort=False):
        row = group.iloc[0]
        if reference_values and all(
            axis not in row or str(row[axis]) == str(value) for axis, value in reference_values.items()
        ):
            return str(arm)
    return str(done.sort_values(list(reference_values) or ["arm"], kind="stable")["arm"].iloc[0])


def comparisons(items: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Every arm against the reference on every per-item metric (stats.compare_to_reference)."""
    metrics = sorted(items["metric"].unique(), key=lambda m: (m.startswith("textcore"), m))
    return compare_to_reference(items, reference, metrics)


_COMPARISON_HEAD = (
    "arm",
    "metric",
    "Δ vs reference",
    "95% CI",
    "seeds",
    "run-to-run SD",
    "smallest detectable",
    "p",
    "p (Holm)",
    "verdict",
    "at chance",
)
_STATS_TEXT = (
    "a mixed model of every score, arms x seeds x items: seeds are blocks, the training run and the arm x item "
    "interaction are random, their variance pooled over every arm (Satterthwaite's degrees of freedom, at most the "
    "runs' (arms - 1)(seeds - 1)): the training run is the unit of replication, and the items are a sample too"
)


def _num(value: float, spec: str) -> str:
    return "—" if pd.isna(value) else format(value, spec)


def _what_it_would_take(r) -> str:
    """The verdict, and for an inconclusive one, roughly how many seeds would settle a difference of its size."""
    text = html.escape(r.verdict)
    if r.verdict == "no detectable difference" and pd.notna(r.seeds_needed) and r.seeds_needed <= r.seeds:
        text += " (these seeds would detect it alone, not after Holm)"
    elif r.verdict == "no detectable difference" and pd.notna(r.seeds_needed):
        text += f" (~{int(r.seeds_needed)} seeds would detect {r.delta:+.3f})"
    return text


def _comparisons_html(table: pd.DataFrame, reference: str, arms: pd.DataFrame) -> str:
    if table.empty:
        return "<p class='muted'>Only one arm: nothing to compare.</p>"
    head = "".join(f"<th>{h}</th>" for h in _COMPARISON_HEAD)
    rows = arm_rows(arms)
    body = "".join(
        f"<tr><td>{html.escape(str(r.arm))}</td><td>{html.escape(r.metric)}</td><td>{r.delta:+.3f}</td>"
        f"<td>[{_num(r.ci_low, '+.3f')}, {_num(r.ci_high, '+.3f')}]</td><td>{r.seeds}</td>"
        f"<td>{_num(r.run_sd, '.3f')}</td><td>{_num(r.detectable, '.3f')}</td><td>{_num(r.p_value, '.3g')}</td>"
        f"<td>{_num(r.p_holm, '.3g')}</td><td class='verdict-{r.verdict.split()[0]}'>{_what_it_would_take(r)}</td>"
        f"<td class='missing'>{comparison_note(rows, str(r.arm), reference, r.metric)}</td></tr>\n"
        for r in table.itertuples()
    )
    return (
        f"<p class='muted'>Each arm against <b>{html.escape(reference)}</b>: {_STATS_TEXT}; p-values corrected "
        f"together for {len(table)} comparisons (Holm). Smallest detectable: the difference these seeds would detect "
        "with 80% power, given the run-to-run spread, and the seeds that would detect a difference of the observed "
        "size, both for one comparison at the 5% level (Holm over many asks for more). A verdict where the arm "
        "or the reference sits at chance (last column) compares models that cannot do the task.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _findings_html(assessed: list[dict]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("finding", "the paper", "evidence", "ours", "our numbers"))
    body = ""
    for a in assessed:
        approx = "approx. " if a["tag"] == "?" else ""
        body += (
            f"<tr><td>{html.escape(a['id'])}</td><td>{html.escape(a['claim'])} [{html.escape(a['tag'])}]</td>"
            f"<td>{approx}{html.escape(a['evidence'])}</td><td class='verdict-{a['ours'].split()[0]}'>"
            f"{html.escape(a['ours'])}</td><td class='muted'>{html.escape(a['detail'])}</td></tr>\n"
        )
    return (
        "<p class='muted'>Each finding of the paper this study can speak to (reliability: V the paper's wording, "
        "S secondary sources agree, ? one secondary source), and what this study's paired comparisons say.</p>"
        f"<table class='prose'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _category_heatmap(table: pd.DataFrame, shots: str) -> go.Figure | None:
    """Arms x VQA categories: where an axis helps (reading vs colour vs counting ...), over a row of chance levels."""
    columns = [c for c in table.columns if c.startswith(f"{shots}/vqa/") and c.endswith(" mean")]
    if not columns:
        return None
    metrics = [c.removesuffix(" mean") for c in columns]
    categories = [m.removeprefix(f"{shots}/vqa/") for m in metrics]
    values = table[columns].to_numpy().tolist()
    text = [
        [f"{v:.2f}" + (" ⊘" if at_chance(row, m) else "") for v, m in zip(vals, metrics, strict=True)]
        for vals, row in zip(values, table.to_dict("records"), strict=True)
    ]
    arms = [str(a) for a in table["arm"]]
    floors = [f"floor/chance/{m} mean" for m in metrics]
    if set(floors) <= set(table.columns):
        # The first row sits at the bottom: a blind model's score under every arm's, category by category.
        chance = table[floors].mean().tolist()
        values, text, arms = (
            [chance, *values],
            [[f"{v:.2f}" for v in chance], *text],
            ["floor: chance", *arms],
        )
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=categories,
            y=arms,
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            text=text,
            texttemplate="%{text}",
        )
    )
    fig.update_layout(
        title=f"{shots} VQA accuracy by question category (mean over seeds; ⊘ at chance)",
        height=120 + 40 * len(arms),
        margin={"l": 160, "r": 20, "t": 50, "b": 50},
    )
    return fig


def _curves_figure(curves: pd.DataFrame, metric: str) -> go.Figure:
    fig = go.Figure()
    selected = curves[curves["metric"] == metric]
    for (arm, seed), group in selected.groupby(["arm", "seed"], sort=True):
        fig.add_trace(go.Scatter(x=group["step"], y=group["value"], mode="lines", name=f"{arm} s{seed}"))
    fig.update_layout(
        title=f"{metric} over training",
        xaxis_title="step",
        yaxis_title=metric,
        height=380,
        margin={"l": 50, "r": 20, "t": 50, "b": 50},
    )
    return fig


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
table.prose td, table.prose th { text-align: left; vertical-align: top; }
.missing { color: #a33; } .muted { color: #666; font-size: 0.85rem; }
.verdict-better, .verdict-agrees { color: #176c2f; font-weight: 600; }
.verdict-worse, .verdict-disagrees { color: #a33; font-weight: 600; }
.figure { page-break-inside: avoid; }
.note { border-left: 4px solid #b80; padding-left: 0.6rem; }
.banner { background: #fdecea; border: 2px solid #a33; color: #7a1f1f; padding: 0.8rem 1rem; margin: 1rem 0; }
td.at-chance, tr.at-chance td { background: #f3f0e6; color: #8a6d1f; }
@media print { body { max-width: none; margin: 0; } table { font-size: 0.75rem; } h2 { page-break-after: avoid; } }
"""


def write_report(study_dir: Path, *, tracking_uri: str | None = None) -> Path:
    trials = pd.read_parquet(study_dir / "trials.parquet")
    curves_path = study_dir / "curves.parquet"
    curves = pd.read_parquet(curves_path) if curves_path.exists() else pd.DataFrame()
    spec_path = study_dir / "study.json"
    spec = json.loads(spec_path.read_text()) if spec_path.exists() else {}
    trials, curves, stale = split_stale(trials, curves, spec.get("planned", []))
    study = spec.get("name", study_dir.name)
    spec_axes = [axis["name"] for axis in spec.get("axes", [])] or schema.axis_columns(trials.columns)
    metrics = metric_columns(trials)
    # Floors are constants of the evaluation set: shown in their own table, never as an arm's result.
    shown = [m for m in metrics if not m.startswith("floor/")]
    headline = [m for m in HEADLINE_METRICS if m in metrics] + file_task_headlines(shown) or shown
    arm_columns = headline + ([RELIANCE] if RELIANCE in metrics and RELIANCE not in headline else [])
    table = arm_table(trials, spec_axes)

    figures = [
        _axis_figure(trials, axis, metric)
        for axis in present_axes(trials, spec_axes)
        for metric in headline
        if trials[trials["status"] == "finished"][axis].nunique() > 0
    ]
    if len(curves):
        figures += [
            _curves_figure(curves, m)
            for m in ("train/loss", "heldout/loss", "0shot/avg")
            if (curves["metric"] == m).any()
        ]

    heatmaps = [_category_heatmap(table, shots) for shots in ("0shot", "8shot")] if len(table) else []
    items_path = study_dir / "items.parquet"
    items = pd.read_parquet(items_path) if items_path.exists() else pd.DataFrame()
    has_items = {"trial_id", "metric", "item_id", "score"} <= set(items.columns)
    if has_items:
        items = items[items["trial_id"].isin(set(trials["trial_id"]))]
    # A search samples configurations to find a good one: no reference arm to test them against, no finding.
    searching = spec.get("design") == "search"
    reference = None if searching else reference_arm(trials, spec.get("reference_values", {}))
    protocol_notes: list[str] = []
    if has_items and reference is not None:
        items, protocol_notes = comparable_items(items, trials, reference)
    compared = comparisons(items, reference) if has_items and reference is not None else pd.DataFrame()
    assessed = (
        assess_all(trials, items, spec_axes, spec.get("eval_tasks"), spec.get("reference_values"))
        if has_items and not searching
        else []
    )
    comparisons_html = (
        "<h2>Against the reference arm</h2>"
        + _comparisons_html(compared, reference, table)
        + "".join(f"<p class='missing'>{html.escape(n)}</p>" for n in protocol_notes)
        if reference and has_items
        else ""
    )
    floors_html = floors_table_html(table, reference) if len(table) else ""
    categories_html = "".join(figure_html(fig) for fig in heatmaps if fig is not None)
    if floors_html or categories_html:
        categories_html = (
            "<h2>VQA categories and their floors</h2>"
            + categories_html
            + (f"<p class='muted'>{html.escape(rule_text())}</p>" + floors_html if floors_html else "")
        )
    findings_html = "<h2>The paper beside us</h2>" + _findings_html(assessed) if assessed else ""
    views_html = paper_views_html(trials, spec_axes)
    notes = [
        n
        for n in (shared_encoder_note(trials), code_versions_note(trials), machines_note(trials, reference))
        if n
    ]
    _write_summary(study_dir, study, table, arm_columns, compared, reference, assessed, notes)

    failed = trials[~trials["status"].isin(["finished", "stopped", "diverged"])]
    failed_html = stopped_html(trials)
    if len(failed):
        items = "".join(
            f"<li><b>{html.escape(str(r.arm))}</b> seed {r.seed} ({html.escape(str(r.trial_id))}): "
            f"{html.escape(last_line(str(r.error)))}</li>"
            for r in failed.itertuples()
        )
        failed_html += (
            f"<h2 class='missing'>Missing: {len(failed)} trials did not finish</h2><ul>{items}</ul>"
        )
    recorded = set(trials["trial_id"])
    pending = [t for t in spec.get("planned", []) if t["trial_id"] not in recorded]
    if pending:
        listed = "".join(
            f"<li><b>{html.escape(str(t['arm']))}</b> seed {t['seed']} ({html.escape(str(t['trial_id']))})</li>"
            for t in pending
        )
        failed_html += (
            f"<h2 class='missing'>Not finished yet: {len(pending)} planned trials are running or queued</h2>"
            f"<ul>{listed}</ul>"
        )

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(study)} — mm1ablate report</title><style>{_STYLE}</style>",
        f"<script>{get_plotlyjs()}</script></head><body>",
        f"<h1>{html.escape(study)}</h1>",
        banner_html(table, reference) if len(table) else "",
        "".join(f"<p class='note'>{html.escape(note)}</p>" for note in notes),
        f"<p>{html.escape(spec.get('description', ''))}</p>",
        f"<p class='muted'>{len(trials)} trials recorded, {int((trials['status'] == 'finished').sum())} finished; "
        f"generated {time.strftime('%Y-%m-%d %H:%M:%S')}"
        + (f"; MLflow: {html.escape(tracking_uri)}" if tracking_uri else "")
        + _mlflow_link(spec)
        + "</p>",
        "<h2>Arms</h2><p class='muted'>mean ± 95% confidence half-width over seeds (t distribution)</p>",
        _table_html(table, arm_columns)
        if len(table)
        else "<p class='missing'>No trial has finished yet.</p>",
        failed_html,
        stale_html(stale),
        _search_section(study_dir, spec),
        cost_html(trials, spec),
        categories_html,
        comparisons_html,
        findings_html,
        views_html,
        "<h2>Figures</h2>",
    ]
    parts += [figure_html(fig) for fig in figures]
    if len(table):
        parts.append("<h2>All metrics</h2>" + _table_html(table, shown))
    parts.append("</body></html>")
    path = study_dir / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path


def _mlflow_link(spec: dict) -> str:
    """The study's last run in the MLflow UI that `mm1ablate ui` serves (at its default port)."""
    runs = [r for r in spec.get("runs") or [] if r.get("mlflow_run_id")]
    if not runs:
        return ""
    last = runs[-1]
    path = f"#/experiments/{last['mlflow_experiment_id']}/runs/{last['mlflow_run_id']}"
    return (
        f"; this run in the MLflow UI (<code>mm1ablate ui</code>): "
        f"<a href='http://127.0.0.1:5000/{html.escape(path)}'>{html.escape(path)}</a>"
    )


def stopped_html(trials: pd.DataFrame) -> str:
    """Trials the scheduler stopped early, and trials that diverged: listed apart with the step they reached; never in
    a table or a comparison, where they would stand for an arm that had finished."""
    early = _ended_early_html(
        trials,
        "stopped",
        "<h2>Stopped early: {n} trials</h2><p class='muted'>Cut by the scheduler at an evaluation round (their last, "
        "intermediate metrics are in trials.parquet); left out of every table and comparison. A run of the study "
        "without its scheduler resumes them from their checkpoints.</p>",
    )
    diverged = _ended_early_html(
        trials,
        "diverged",
        "<h2 class='missing'>Diverged: {n} trials</h2><p class='muted'>Their loss or gradient became non-finite: an "
        "outcome of the recipe, left out of every table and comparison and named in each finding they leave. A re-run "
        "keeps them as they are; <code>mm1ablate run --rerun-diverged</code> runs them again.</p>",
    )
    return early + diverged


def _ended_early_html(trials: pd.DataFrame, status: str, heading: str) -> str:
    ended = trials[trials["status"] == status]
    if ended.empty:
        return ""
    steps = ended["stopped_at_step"] if "stopped_at_step" in ended else pd.Series(index=ended.index)
    rows = "".join(
        f"<li><b>{html.escape(str(r.arm))}</b> seed {r.seed} ({html.escape(str(r.trial_id))}) at step "
        f"{_num(step, '.0f')}"
        + (f": {html.escape(last_line(str(r.error)))}" if status == "diverged" else "")
        + "</li>"
        for r, step in zip(ended.itertuples(), steps, strict=True)
    )
    return heading.format(n=len(ended)) + f"<ul>{rows}</ul>"


def _search_section(study_dir: Path, spec: dict) -> str:
    if spec.get("design") != "search":
        return ""
    search = load_search(study_dir, spec)
    if search is None:
        return "<h2>Search</h2><p class='missing'>No Optuna study recorded for this search yet.</p>"
    return search_html(search, spec, figure_html)


def _write_summary(
    study_dir: Path,
    study: str,
    table: pd.DataFrame,
    headline: list[str],
    compared: pd.DataFrame,
    reference: str | None,
    assessed: list[dict],
    notes: list[str],
) -> None:
    """summary.md (the report's tables, for a README or a pull request) and the tables as CSV."""
    lines = [f"# {study}", ""]
    banner = reference_banner(table, reference) if len(table) else None
    if banner:
        lines += [f"> **⚠ {banner}**", ""]
    for note in notes:
        lines += [f"> {note}", ""]
    lines += ["Mean ± 95% CI over seeds.", ""]
    if len(table):
        floored = floored_metrics(table)
        flags = [arm_flags(row, floored) for _, row in table.iterrows()]
        marks = ["cannot speak"] if any(flags) else []
        columns = [*headline, *marks]
        lines += ["| arm | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
        for (_, row), flag in zip(table.iterrows(), flags, strict=True):
            cells = [
                cell(row[f"{m} mean"], row[f"{m} ci95"]) + (" ⊘" if at_chance(row, m) else "")
                for m in headline
            ]
            lines.append(
                f"| {row['arm']} | {row['seeds']} | " + " | ".join(cells + ([flag] if marks else [])) + " |"
            )
        if floored:
            lines += ["", f"⊘: at chance. {rule_text()}"]
        atomic_write(study_dir / "arms.csv", lambda tmp: table.to_csv(tmp, index=False))
    if len(compared):
        lines += ["", f"Against **{reference}**: {_STATS_TEXT}; Holm-corrected:", ""]
        lines += [
            "| arm | metric | Δ | 95% CI | seeds | run-to-run SD | smallest detectable | p (Holm) | verdict "
            "| at chance |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = arm_rows(table)
        lines += [
            f"| {r.arm} | {r.metric} | {r.delta:+.3f} | [{_num(r.ci_low, '+.3f')}, {_num(r.ci_high, '+.3f')}] "
            f"| {r.seeds} | {_num(r.run_sd, '.3f')} | {_num(r.detectable, '.3f')} | {_num(r.p_holm, '.2g')} "
            f"| {html.unescape(_what_it_would_take(r))} | {comparison_note(rows, str(r.arm), str(reference), r.metric)} |"
            for r in compared.itertuples()
        ]
        atomic_write(study_dir / "comparisons.csv", lambda tmp: compared.to_csv(tmp, index=False))
    if assessed:
        lines += ["", "The paper beside us:", "", "| finding | the paper | ours |", "|---|---|---|"]
        lines += [f"| {a['id']} | {a['claim']} [{a['tag']}] | {a['ours']} |" for a in assessed]
        atomic_write(study_dir / "findings.csv", lambda tmp: pd.DataFrame(assessed).to_csv(tmp, index=False))
    atomic_write_text(study_dir / "summary.md", "\n".join(lines) + "\n")
