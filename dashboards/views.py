"""The paper's comparison views, filled with a study's numbers, chosen from the axes it varies.

- Encoder table (paper Table 1): rows = encoder loss x size x resolution x pre-training data, columns 0/4/8-shot
  (and TextCore).
- Connector figure (paper Figure 4): grouped bars, connector x image tokens x resolution, one panel per shot count.
- Data figure (paper Figure 5): panels for caption vs interleaved, with vs without text-only, image:text mixing and
  synthetic captions, as the study's settings allow, with bars for TextCore and 0/4/8-shot.
- Learning-rate law (F12): held-out loss against peak LR per model size, the optimum per size (a parabola in log LR),
  and the law log(eta) = a ln N + b fitted to those optima beside the paper's.

Every cell and bar is the mean over seeds with its 95% t-interval (stats.mean_ci).
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.findings import law_runs, load_findings
from dashboards.stats import fit_lr_law, mean_ci
from mm1core.axes import resolve_axis
from mm1core.registry import Choice, Registry

__all__ = [
    "VIEWS",
    "cell",
    "connector_figure",
    "data_figure",
    "encoder_table",
    "figure_html",
    "lr_law",
    "paper_views_html",
]

SHOTS = ("0shot/avg", "4shot/avg", "8shot/avg")
_ENCODER_FIELDS = (
    "encoder_pretrain.loss",
    "encoder.width",
    "encoder.resolution",
    "encoder_pretrain.recaption_share",
)
_CONNECTOR_FIELDS = ("connector.name", "connector.num_image_tokens", "encoder.resolution")
_DATA_FIELDS = ("data.ratio", "data.recaption_share")


def _field(axis: str) -> str:
    try:
        return resolve_axis(axis)
    except ValueError:
        return axis


def _axes_for(axes: list[str], fields: tuple[str, ...], trials: pd.DataFrame) -> list[str]:
    return [a for a in axes if _field(a) in fields and a in trials.columns]


def _finished(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["status"] == "finished"]


def encoder_table(trials: pd.DataFrame, axes: list[str]) -> pd.DataFrame | None:
    """One row per combination of the encoder axes the study varies; mean and CI of each shot column."""
    rows_by = _axes_for(axes, _ENCODER_FIELDS, trials)
    done = _finished(trials)
    if not rows_by or done.empty:
        return None
    columns = [m for m in (*SHOTS, "textcore/avg") if m in done.columns]
    rows = []
    for values, group in done.groupby(rows_by, sort=True):
        row = dict(zip(rows_by, values if isinstance(values, tuple) else (values,), strict=True))
        row["seeds"] = len(group)
        for metric in columns:
            row[f"{metric} mean"], row[f"{metric} ci95"] = mean_ci(group[metric])
        rows.append(row)
    return pd.DataFrame(rows)


def _bar(
    name: str, xs: list[str], group: pd.DataFrame, by: str | None, metric: str, color_index: int
) -> go.Bar:
    stats = [mean_ci(group[group[by] == x][metric]) if by else mean_ci(group[metric]) for x in xs]
    return go.Bar(
        name=name,
        x=xs,
        y=[m for m, _ in stats],
        error_y={"type": "data", "array": [0.0 if math.isnan(c) else c for _, c in stats]},
        marker_color=_PALETTE[color_index % len(_PALETTE)],
        legendgroup=name,
    )


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def connector_figure(trials: pd.DataFrame, axes: list[str]) -> go.Figure | None:
    """Figure 4: bars per connector, grouped by image tokens x resolution, one panel per shot count."""
    present = _axes_for(axes, _CONNECTOR_FIELDS, trials)
    connector = next((a for a in present if _field(a) == "connector.name"), None)
    tokens = next((a for a in present if _field(a) == "connector.num_image_tokens"), None)
    if connector is None and tokens is None:
        return None
    done = _finished(trials)
    shots = [m for m in SHOTS if m in done.columns]
    if done.empty or not shots:
        return None
    groups = [a for a in present if a != connector]
    xs = [str(v) for v in sorted(done[connector].unique())] if connector else ["all"]
    done = done.assign(_x=done[connector].astype(str) if connector else "all")
    fig = make_subplots(rows=1, cols=len(shots), subplot_titles=shots, shared_yaxes=True)
    keyed = done.groupby(groups, sort=True) if groups else [((), done)]
    for i, (key, group) in enumerate(keyed):
        key = key if isinstance(key, tuple) else (key,)
        name = ", ".join(f"{a}={v}" for a, v in zip(groups, key, strict=True)) or "all"
        for col, metric in enumerate(shots, start=1):
            bar = _bar(name, xs, group, "_x", metric, i)
            bar.showlegend = col == 1
            fig.add_trace(bar, row=1, col=col)
    fig.update_layout(
        title="Connector x image tokens x resolution (paper Figure 4)",
        barmode="group",
        height=420,
        margin={"l": 50, "r": 20, "t": 70, "b": 50},
    )
    return fig


def _ratio(value: str) -> tuple[float, float, float]:
    caption, interleaved, text = (float(x) for x in str(value).split(":"))
    return caption, interleaved, text


def _data_panels(values: list[str], recaption_values: list[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Figure 5's panels as (title, [(bar label, setting)]), from the data settings a study has."""
    panels = []
    parsed = {v: _ratio(v) for v in values}

    def mix(c: float, i: float) -> tuple[float, float]:
        return (c / (c + i), i / (c + i)) if c + i else (0.0, 0.0)

    no_text = sorted((v for v in values if parsed[v][2] == 0), key=lambda v: -mix(*parsed[v][:2])[0])
    if len(no_text) >= 2:
        panels.append(
            (
                "(a) caption / interleaved",
                [
                    (f"{100 * mix(*parsed[v][:2])[0]:.0f}/{100 * mix(*parsed[v][:2])[1]:.0f}", v)
                    for v in no_text
                ],
            )
        )
    pairs = []
    for v in values:
        c, i, t = parsed[v]
        twin = next((w for w in values if parsed[w][2] == 0 and mix(*parsed[w][:2]) == mix(c, i)), None)
        if t > 0 and twin is not None:
            pairs += [(f"{twin} (no text)", twin), (f"{v} (with text)", v)]
    if pairs:
        panels.append(("(b) with / without text-only", list(dict.fromkeys(pairs))))
    by_mix: dict[tuple[float, float], list[str]] = {}
    for v in values:
        by_mix.setdefault(mix(*parsed[v][:2]), []).append(v)
    for group in by_mix.values():
        if len({parsed[v][2] for v in group}) >= 2:
            ordered = sorted(group, key=lambda v: parsed[v][2] / sum(parsed[v]))
            panels.append(
                (
                    "(c) image / text",
                    [
                        (
                            f"{100 * (1 - parsed[v][2] / sum(parsed[v])):.0f}/{100 * parsed[v][2] / sum(parsed[v]):.0f}",
                            v,
                        )
                        for v in ordered
                    ],
                )
            )
            break
    if len(recaption_values) >= 2:
        panels.append(("(d) synthetic caption share", [(v, v) for v in recaption_values]))
    return panels


def data_figure(trials: pd.DataFrame, axes: list[str]) -> go.Figure | None:
    """Figure 5: panels for caption vs interleaved, with vs without text-only, image:text mixing and synthetic
    captions (those the study's data settings allow), plus every setting side by side; bars for TextCore and
    0/4/8-shot in each."""
    done = _finished(trials)
    metrics = [m for m in ("textcore/avg", *SHOTS) if m in done.columns]
    ratio_axis = next((a for a in _axes_for(axes, _DATA_FIELDS, trials) if _field(a) == "data.ratio"), None)
    recap_axis = next(
        (a for a in _axes_for(axes, _DATA_FIELDS, trials) if _field(a) == "data.recaption_share"), None
    )
    if (ratio_axis is None and recap_axis is None) or done.empty or not metrics:
        return None
    ratios = [str(v) for v in done[ratio_axis].drop_duplicates()] if ratio_axis else []
    recaps = [str(v) for v in sorted(done[recap_axis].unique())] if recap_axis else []
    panels = _data_panels(ratios, recaps)
    main = ratio_axis or recap_axis
    panels.append((f"all settings of {main}", [(v, v) for v in (ratios or recaps)]))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for title, _ in panels])
    for col, (title, bars) in enumerate(panels, start=1):
        column = recap_axis if title.startswith("(d)") or not ratio_axis else ratio_axis
        labels = [label for label, _ in bars]
        for k, metric in enumerate(metrics):
            rows = [done[done[column].astype(str) == setting][metric] for _, setting in bars]
            stats = [mean_ci(r) for r in rows]
            fig.add_trace(
                go.Bar(
                    name=metric,
                    x=labels,
                    y=[m for m, _ in stats],
                    error_y={"type": "data", "array": [0.0 if math.isnan(c) else c for _, c in stats]},
                    marker_color=_PALETTE[k],
                    legendgroup=metric,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
    fig.update_layout(
        title="Pre-training data (paper Figure 5)",
        barmode="group",
        height=420,
        width=max(700, 330 * len(panels)),
        margin={"l": 50, "r": 20, "t": 70, "b": 80},
    )
    return fig


def lr_law(
    trials: pd.DataFrame, axes: list[str], loss: str = "heldout/loss"
) -> tuple[go.Figure, dict] | None:
    """Loss against peak LR per model size, the optimum per size, and the fitted law beside the paper's."""
    lr_axis = next((a for a in axes if _field(a) == "train.lr" and a in trials.columns), None)
    done = _finished(trials)
    if lr_axis is None or done.empty or loss not in done.columns or "num_params" not in done.columns:
        return None
    done = done[pd.to_numeric(done[lr_axis], errors="coerce").notna()]  # "auto" arms have no fixed LR
    paper = next(f for f in load_findings() if f["id"] == "F12")["law"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss vs peak LR", "optimal peak LR vs parameters"))
    optima = {}
    for i, (size, group) in enumerate(done.groupby("num_params", sort=True)):
        points = group.groupby(group[lr_axis].astype(float))[loss].mean()
        color = _PALETTE[i % len(_PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=points.index, y=points.values, mode="markers+lines", name=f"N={size:,}", marker_color=color
            ),
            row=1,
            col=1,
        )
        if len(points) >= 3:
            a2, a1, _ = np.polyfit(np.log(points.index.to_numpy()), points.to_numpy(), 2)
            inside = a2 > 0 and points.index.min() <= math.exp(-a1 / (2 * a2)) <= points.index.max()
            # A parabola that opens downwards, or whose vertex lies outside the swept range, is no optimum: the
            # sweep did not bracket one, and the best swept LR is reported instead.
            optima[int(size)] = math.exp(-a1 / (2 * a2)) if inside else float(points.idxmin())
        elif len(points):
            optima[int(size)] = float(points.idxmin())
    # The line is the law fitted to every run (the finding's test), not to the optima above: those are read off
    # the arms' means, one point a size.
    law = fit_lr_law(law_runs(done, lr_axis, loss))
    fit = law and {"a": law.slope, "b": law.intercept, "a_ci": (law.ci_low, law.ci_high), "p": law.p_value}
    if optima:
        sizes = sorted(optima)
        fig.add_trace(
            go.Scatter(x=sizes, y=[optima[s] for s in sizes], mode="markers", name="optimum per size"),
            row=1,
            col=2,
        )
        line = np.geomspace(min(sizes) / 2, max(sizes) * 2, 20)
        fig.add_trace(
            go.Scatter(
                x=line,
                y=np.exp(paper["a"] * np.log(line) + paper["b"]),
                mode="lines",
                name=f"paper: a={paper['a']}, b={paper['b']}",
            ),
            row=1,
            col=2,
        )
        if fit:
            fig.add_trace(
                go.Scatter(
                    x=line,
                    y=np.exp(fit["a"] * np.log(line) + fit["b"]),
                    mode="lines",
                    name=f"ours: a={fit['a']:.3f}, b={fit['b']:.3f}",
                ),
                row=1,
                col=2,
            )
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(
        title="Learning-rate law (F12)", height=420, margin={"l": 50, "r": 20, "t": 70, "b": 50}
    )
    return fig, {"optima": optima, "fit": fit, "paper": paper}


def cell(mean: float, ci: float) -> str:
    """A table cell: the mean over seeds and its 95% half-width."""
    if pd.isna(mean):
        return "—"
    return f"{mean:.3f}" if pd.isna(ci) else f"{mean:.3f} ± {ci:.3f}"


def figure_html(fig: go.Figure) -> str:
    return "<div class='figure'>" + fig.to_html(full_html=False, include_plotlyjs=False) + "</div>"


def warm_up_figures() -> None:
    """Build and render one small figure of each kind a report draws, for nothing: plotly loads the validators of a
    trace type and of the layout at their first use, 0.1-0.2 s of a study's last report, which a reporter started
    ahead (`python -m dashboards --when-told`) pays while it waits instead (bench/README.md, run overhead)."""
    fig = make_subplots(rows=1, cols=2)
    fig.add_trace(
        go.Scatter(
            x=["a"], y=[1.0], error_y={"type": "data", "array": [0.1]}, mode="lines+markers", text=["t"]
        ),
        row=1,
        col=1,
    )
    fig.add_trace(go.Bar(x=["a"], y=[1.0]), row=1, col=2)
    fig.add_trace(go.Heatmap(z=[[1.0]], x=["a"], y=["b"], text=[["t"]], texttemplate="%{text}"))
    fig.update_layout(title="t", xaxis_title="x", yaxis_title="y", height=380, xaxis={"type": "category"})
    figure_html(fig)


def encoder_table_html(trials: pd.DataFrame, axes: list[str]) -> str | None:
    encoders = encoder_table(trials, axes)
    if encoders is None:
        return None
    keys = [c for c in encoders.columns if not c.endswith((" mean", " ci95")) and c != "seeds"]
    metrics = [c.removesuffix(" mean") for c in encoders.columns if c.endswith(" mean")]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in [*keys, "seeds", *metrics])
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(row[k]))}</td>" for k in [*keys, "seeds"])
        + "".join(f"<td>{cell(row[f'{m} mean'], row[f'{m} ci95'])}</td>" for m in metrics)
        + "</tr>\n"
        for _, row in encoders.iterrows()
    )
    return (
        "<h3>Encoder table (paper Table 1)</h3>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def connector_figure_html(trials: pd.DataFrame, axes: list[str]) -> str | None:
    fig = connector_figure(trials, axes)
    return None if fig is None else figure_html(fig)


def data_figure_html(trials: pd.DataFrame, axes: list[str]) -> str | None:
    fig = data_figure(trials, axes)
    return None if fig is None else figure_html(fig)


def lr_law_html(trials: pd.DataFrame, axes: list[str]) -> str | None:
    law = lr_law(trials, axes)
    if law is None:
        return None
    fig, numbers = law
    fit, paper = numbers["fit"], numbers["paper"]
    ours = (
        f"ours: a = {fit['a']:.3f} (95% CI {fit['a_ci'][0]:+.3f} to {fit['a_ci'][1]:+.3f}), b = {fit['b']:.3f}"
        if fit
        else "ours: needs two or more model sizes, each swept at three or more peak LRs"
    )
    return figure_html(fig) + (
        f"<p class='muted'>log(eta) = a ln N + b; paper: a = {paper['a']}, b = {paper['b']}; {html.escape(ours)}</p>"
    )


# The paper's views a report draws where a study's axes allow, by the names findings use (paper_findings.yaml's
# `view:`): each renders itself from the trials and the study's axes, or is None where the axes do not allow it.
VIEWS = Registry(
    "report view",
    [
        Choice("encoder_table", "dashboards.views:encoder_table_html", spec="paper Table 1"),
        Choice("connector", "dashboards.views:connector_figure_html", spec="paper Figure 4"),
        Choice("data", "dashboards.views:data_figure_html", spec="paper Figure 5"),
        Choice("lr_law", "dashboards.views:lr_law_html", spec="the learning-rate law (F12)"),
    ],
)


def paper_views_html(trials: pd.DataFrame, axes: list[str]) -> str:
    """The paper's tables and figures that this study's axes make possible."""
    parts = [part for name in VIEWS if (part := VIEWS.load(name)(trials, axes)) is not None]
    return "<h2>Paper views</h2>" + "".join(parts) if parts else ""
