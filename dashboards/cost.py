"""What a study cost, beside what its plan said it would: per arm, the trials' wall time, CPU- and GPU-seconds and
where the time went (encoder, training with its data, evaluation), the most memory a trial's worker held (what a slot
needs), and the study's total."""

from __future__ import annotations

import html

import pandas as pd

__all__ = ["cost_html", "cost_table"]

_STAGES = {
    "encoder": ("time/encoder_s",),
    "training": ("time/train_s", "time/data_s"),
    "evaluation": ("time/eval_s",),
}


def cost_table(trials: pd.DataFrame, estimate: dict) -> pd.DataFrame:
    """One row per arm of the finished trials: sums over the arm's trials, in seconds."""
    done = trials[trials["status"] == "finished"].copy()
    if done.empty or "wall_time_s" not in done:
        return pd.DataFrame()
    planned = estimate.get("trials", {})
    done["estimate_s"] = done["trial_id"].map(planned)
    for stage, columns in _STAGES.items():
        present = [c for c in columns if c in done]
        done[f"{stage}_s"] = done[present].sum(axis=1, min_count=1) if present else float("nan")
    columns = {
        "wall_time_s": "wall_s",
        "estimate_s": "estimate_s",
        "cost/cpu_s": "cpu_s",
        "cost/gpu_s": "gpu_s",
        **{f"{stage}_s": f"{stage}_s" for stage in _STAGES},
    }
    present = {k: v for k, v in columns.items() if k in done}
    table = done.groupby("arm", sort=False)[list(present)].sum(min_count=1).rename(columns=present)
    if "cost/worker_rss_mb" in done:  # a maximum, not a sum: what one slot must hold
        table["worker_mb"] = done.groupby("arm", sort=False)["cost/worker_rss_mb"].max()
    table.insert(0, "trials", done.groupby("arm", sort=False).size())
    return table.reset_index()


def _minutes(seconds: float) -> str:
    return "—" if pd.isna(seconds) else f"{seconds / 60:.1f}"


def _gigabytes(megabytes: float) -> str:
    return "—" if pd.isna(megabytes) else f"{megabytes / 1024:.1f}"


def cost_html(trials: pd.DataFrame, spec: dict) -> str:
    estimate = spec.get("estimate", {})
    table = cost_table(trials, estimate)
    if table.empty:
        return ""
    shown = [
        c
        for c in ("wall_s", "estimate_s", "cpu_s", "gpu_s", "encoder_s", "training_s", "evaluation_s")
        if c in table
    ]
    labels = {
        "wall_s": "trial wall (min)",
        "estimate_s": "planned (min)",
        "cpu_s": "CPU (min)",
        "gpu_s": "GPU (min)",
        "encoder_s": "encoder",
        "training_s": "training",
        "evaluation_s": "evaluation",
    }
    memory = "worker_mb" in table
    head = (
        "<th>arm</th><th>trials</th>"
        + "".join(f"<th>{labels[c]}</th>" for c in shown)
        + ("<th>worker memory, most (GB)</th>" if memory else "")
    )
    body = "".join(
        f"<tr><td>{html.escape(str(r['arm']))}</td><td>{int(r['trials'])}</td>"
        + "".join(f"<td>{_minutes(r[c])}</td>" for c in shown)
        + (f"<td>{_gigabytes(r['worker_mb'])}</td>" if memory else "")
        + "</tr>"
        for _, r in table.iterrows()
    )
    total = table[shown].sum(min_count=1)
    body += "<tr><td><b>all trials</b></td><td>{}</td>{}{}</tr>".format(
        int(table["trials"].sum()),
        "".join(f"<td><b>{_minutes(total[c])}</b></td>" for c in shown),
        f"<td><b>{_gigabytes(table['worker_mb'].max())}</b></td>" if memory else "",
    )
    runs = spec.get("runs", [])
    study_line = ""
    if runs:
        actual = sum(r.get("wall_s") or 0 for r in runs)
        planned = [r.get("estimated_wall_s") for r in runs if r.get("estimated_wall_s")]
        study_line = (
            f"<p>The study: {_minutes(actual)} min of wall time over {len(runs)} run(s)"
            + (f", against {_minutes(sum(planned))} min planned" if planned else "")
            + f" (on {estimate.get('slots', '?')} slots; rates from {html.escape('; '.join(estimate.get('sources', [])) or '—')}).</p>"
        )
    return (
        "<h2>Cost</h2><p class='muted'>Minutes, summed over each arm's finished trials; the stages split a trial's "
        "time into building or loading its encoder, training (data included) and evaluation (intermediate rounds "
        "included). Planned: `mm1ablate plan`'s estimate for the trial. Worker memory: the most a trial's worker "
        "held at its end, what each slot needs.</p>" + study_line + f"<table><tr>{head}</tr>{body}</table>"
    )
