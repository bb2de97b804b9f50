"""The search section of a report: the best configurations, the objective over trials, parameter importances, a
parallel-coordinates view, and the best configuration as YAML overrides to paste into a study's `reference`.

Read from the study's Optuna storage (`optuna.db` beside the report), so it shows what `optuna.load_study` and
`optuna-dashboard` show: a configuration's value is the mean over its seeds of the search metric at its final
evaluation, or, for one stopped early, its last intermediate value (subset of items) and the state PRUNED.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go
import yaml

__all__ = ["best_overrides_yaml", "load_search", "search_html"]

_TOP = 5


def load_search(study_dir: Path, spec: dict) -> optuna.Study | None:
    name = spec.get("search_name")
    path = study_dir / "optuna.db"
    if not name or not path.exists():
        return None
    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{path.resolve()}")
    except KeyError:  # the search was edited and has not run since: no Optuna study of that name yet
        return None


def _frame(search: optuna.Study) -> pd.DataFrame:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    rows = [
        {"number": t.number, "state": t.state.name.lower(), "value": t.value, **t.params}
        for t in search.get_trials(deepcopy=False, states=states)
    ]
    return pd.DataFrame(rows)


def best_overrides_yaml(search: optuna.Study, spec: dict) -> str:
    """The best complete configuration as a study's `reference:` block: the preset, its overrides, and the searched
    values on their config fields."""
    reference = spec.get("reference", {})
    fields = spec.get("axis_fields", {})
    overrides = dict(reference.get("overrides", {}))
    for name, value in search.best_trial.params.items():
        overrides[fields.get(name) or name] = _rounded(value)
    return yaml.safe_dump(
        {"reference": {"preset": reference.get("preset"), "overrides": overrides}}, sort_keys=False
    )


def _rounded(value):
    """Four significant figures: what a researcher pastes, not the sampler's last bits."""
    if isinstance(value, float) and value != 0 and math.isfinite(value):
        return float(f"{value:.4g}")
    return value


def _over_trials(frame: pd.DataFrame, maximize: bool, metric: str) -> go.Figure:
    done = frame.sort_values("number")
    complete = done[done["state"] == "complete"]
    best = complete["value"].cummax() if maximize else complete["value"].cummin()
    fig = go.Figure()
    for state, symbol in (("complete", "circle"), ("pruned", "circle-open")):
        part = done[done["state"] == state]
        fig.add_trace(
            go.Scatter(
                x=part["number"],
                y=part["value"],
                mode="markers",
                name=state,
                marker={"symbol": symbol, "size": 9},
            )
        )
    fig.add_trace(
        go.Scatter(x=complete["number"], y=best, mode="lines", name="best so far", line={"shape": "hv"})
    )
    fig.update_layout(
        title=f"{metric} over the search (pruned: last intermediate value)",
        xaxis_title="configuration (in the order tried)",
        yaxis_title=metric,
        height=380,
    )
    return fig


def _parallel(frame: pd.DataFrame, params: list[str], metric: str, log_params: set[str]) -> go.Figure:
    complete = frame[frame["state"] == "complete"]
    dimensions = []
    for p in params:
        column = complete[p]
        if column.dtype == object:
            labels = sorted(column.astype(str).unique())
            codes = column.astype(str).map({label: i for i, label in enumerate(labels)})
            dimensions.append(
                {"label": p, "values": codes, "tickvals": list(range(len(labels))), "ticktext": labels}
            )
        elif p in log_params:
            dimensions.append({"label": f"log10 {p}", "values": column.astype(float).map(math.log10)})
        else:
            dimensions.append({"label": p, "values": column.astype(float)})
    dimensions.append({"label": metric, "values": complete["value"]})
    fig = go.Figure(
        go.Parcoords(
            line={"color": complete["value"], "colorscale": "Viridis", "showscale": True},
            dimensions=dimensions,
        )
    )
    fig.update_layout(title="complete configurations, coloured by their value", height=420)
    return fig


def search_html(search: optuna.Study, spec: dict, figure_html) -> str:
    frame = _frame(search)
    settings = spec.get("search", {})
    metric, mode = settings.get("metric", "value"), settings.get("mode", "max")
    if frame.empty or (frame["state"] == "complete").sum() == 0:
        return "<h2>Search</h2><p class='missing'>No configuration has finished yet.</p>"
    params = [c for c in frame.columns if c not in ("number", "state", "value")]
    complete = frame[frame["state"] == "complete"]
    top = complete.sort_values("value", ascending=mode == "min").head(_TOP)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("#", *params, metric))
    body = "".join(
        "<tr>"
        + f"<td>{int(r['number'])}</td>"
        + "".join(f"<td>{html.escape(str(_rounded(r[p])))}</td>" for p in params)
        + f"<td>{r['value']:.4f}</td></tr>"
        for _, r in top.iterrows()
    )
    pruned = int((frame["state"] == "pruned").sum())
    seeds = settings.get("seeds", 1)
    parts = [
        "<h2>Search</h2>",
        f"<p class='muted'>{len(frame)} configurations tried ({len(complete)} to the end, {pruned} stopped early), "
        f"sampler {html.escape(str(settings.get('sampler', '')))}, {seeds} seed(s) each; the value is the mean over "
        f"the seeds of {html.escape(metric)} ({mode}imised) at the final evaluation. Optuna study "
        f"<code>{html.escape(search.study_name)}</code> in <code>optuna.db</code>.</p>",
        f"<h3>The best {len(top)} configurations</h3><table><tr>{head}</tr>{body}</table>",
        "<h3>The best configuration, as a study's reference</h3>",
        f"<pre>{html.escape(best_overrides_yaml(search, spec))}</pre>",
        figure_html(_over_trials(frame, mode == "max", metric)),
    ]
    log_params = {a["name"] for a in spec.get("axes", []) if "loguniform" in a}
    if len(params) and len(complete) >= 2:
        parts.append(figure_html(_parallel(frame, params, metric, log_params)))
    parts.append(_importances_html(search, params, complete))
    return "".join(parts)


def _importances_html(search: optuna.Study, params: list[str], complete: pd.DataFrame) -> str:
    varied = [p for p in params if complete[p].nunique() > 1]
    if len(complete) < 3 or not varied:
        return "<p class='muted'>Parameter importances need three finished configurations that differ.</p>"
    importances = optuna.importance.get_param_importances(search, params=varied)
    rows = "".join(f"<tr><td>{html.escape(p)}</td><td>{v:.2f}</td></tr>" for p, v in importances.items())
    return (
        "<h3>Parameter importances</h3><p class='muted'>Optuna's fANOVA over the finished configurations: the share "
        "of the value's variance each parameter explains. With few configurations, a rough guide.</p>"
        f"<table><tr><th>parameter</th><th>importance</th></tr>{rows}</table>"
    )
