"""What a study's numbers cannot say: arms that sit at chance on a metric, or that barely use their images.

The evaluation records each metric's floors beside it (`floor/chance/<metric>`: a blind model's score on the same
items; `floor/oracle/<metric>`: a perfect one's) and the held-out image reliance (`heldout/image_reliance`: the loss
added by swapping every image for another scene's). From the arm table (means over seeds) this module decides, per
arm, which metrics sit at chance and whether the arm is blind, and words the banner a report opens with when the
reference arm, against which every verdict is drawn, cannot speak to the paper.
"""

from __future__ import annotations

import html
import math
import re

import pandas as pd

__all__ = [
    "MIN_IMAGE_RELIANCE",
    "NEAR_CHANCE_SHARE",
    "RELIANCE",
    "arm_flags",
    "arm_rows",
    "at_chance",
    "banner_html",
    "chance_line",
    "comparison_note",
    "floor_levels",
    "floored_metrics",
    "floors_table_html",
    "is_blind",
    "reference_banner",
    "rule_text",
    "vqa_category_metrics",
]

# A metric sits at chance when its mean is below chance + this share of the way from chance to oracle. At the
# `small` preset's ~43 items per VQA category, one standard error of a category's accuracy is 0.06-0.08, about 10%
# of a typical chance-to-oracle gap (0.7-0.9): a lift smaller than that is not told apart from a blind model's by a
# seed or two. A model scoring below the blind one is flagged too.
NEAR_CHANCE_SHARE = 0.10
# Nats per held-out token. A held-out document has ~10-20 scored tokens; a model that reads one attribute of its
# image (one answer word, log 8 = 2 nats for a colour) lowers the loss by ~0.1-0.2 nats per token. Below 0.02 it
# gets less than a fifth of one such word per document from its image; a model that ignores images scores exactly 0.
MIN_IMAGE_RELIANCE = 0.02
RELIANCE = "heldout/image_reliance"
_VQA_CATEGORY = re.compile(r"^\d+shot/vqa/[^/]+$")


def rule_text() -> str:
    """The two rules in words, for the report to state beside its marks."""
    return (
        f"An arm sits at chance on a metric when its mean over seeds is below chance + "
        f"{NEAR_CHANCE_SHARE:.0%} of the distance from chance to oracle (chance: the best constant answer, or for "
        f"captions another scene's caption, on the same items; oracle: 1.0, or for captions one reference against "
        f"the others). An arm is blind when its held-out image reliance (loss with another scene's image minus "
        f"loss with its own) is below {MIN_IMAGE_RELIANCE} nats per token."
    )


def floored_metrics(table: pd.DataFrame) -> list[str]:
    """Metrics of the arm table with a mean and both floors (probes record a chance level only), in table order."""
    metrics = []
    for column in table.columns:
        if column.startswith("floor/chance/") and column.endswith(" mean"):
            metric = column.removeprefix("floor/chance/").removesuffix(" mean")
            if {f"{metric} mean", f"floor/oracle/{metric} mean"} <= set(table.columns):
                metrics.append(metric)
    return metrics


def floor_levels(row: pd.Series | dict, metric: str) -> tuple[float, float] | None:
    """(chance, oracle) of a metric in one arm-table row, or None where the trials did not record them."""
    chance = row.get(f"floor/chance/{metric} mean", float("nan"))
    oracle = row.get(f"floor/oracle/{metric} mean", float("nan"))
    if pd.isna(chance) or pd.isna(oracle):
        return None
    return float(chance), float(oracle)


def chance_line(row: pd.Series | dict, metric: str) -> float | None:
    """The score below which an arm sits at chance on `metric`: chance + NEAR_CHANCE_SHARE of the way to oracle."""
    levels = floor_levels(row, metric)
    if levels is None:
        return None
    chance, oracle = levels
    return chance + NEAR_CHANCE_SHARE * (oracle - chance)


def at_chance(row: pd.Series | dict, metric: str) -> bool:
    """Whether the arm's mean on `metric` is below its chance_line."""
    line = chance_line(row, metric)
    mean = row.get(f"{metric} mean", float("nan"))
    return line is not None and not pd.isna(mean) and float(mean) < line


def is_blind(row: pd.Series | dict) -> bool:
    reliance = row.get(f"{RELIANCE} mean", float("nan"))
    return not pd.isna(reliance) and float(reliance) < MIN_IMAGE_RELIANCE


def vqa_category_metrics(metrics: list[str]) -> list[str]:
    """The per-category VQA metrics (`<k>shot/vqa/<category>`) among `metrics`."""
    return [m for m in metrics if _VQA_CATEGORY.match(m)]


def arm_flags(row: pd.Series | dict, metrics: list[str]) -> str:
    """One arm's marks in words ("" when none): blind, and how many VQA categories sit at chance."""
    flags = []
    if is_blind(row):
        flags.append(f"blind (image reliance {float(row[f'{RELIANCE} mean']):.3f} nats)")
    categories = vqa_category_metrics(metrics)
    low = [m for m in categories if at_chance(row, m)]
    if low:
        flags.append(f"at chance on {len(low)}/{len(categories)} VQA categories")
    others = [m for m in metrics if m not in categories and at_chance(row, m)]
    if others:
        flags.append("at chance on " + ", ".join(others))
    return "; ".join(flags)


def _by_shots(metrics: list[str]) -> str:
    """`0shot/vqa/color`, `0shot/vqa/size` -> "0shot: color, size"."""
    grouped: dict[str, list[str]] = {}
    for metric in metrics:
        shots, _, category = metric.split("/", 2)
        grouped.setdefault(shots, []).append(category)
    return "; ".join(f"{shots}: {', '.join(categories)}" for shots, categories in grouped.items())


def reference_banner(table: pd.DataFrame, reference: str | None) -> str | None:
    """The warning a report opens with when the reference arm is blind or at chance on VQA categories, else None."""
    if reference is None or table.empty or reference not in set(table["arm"].astype(str)):
        return None
    row = table[table["arm"].astype(str) == reference].iloc[0]
    categories = vqa_category_metrics(floored_metrics(table))
    low = [m for m in categories if at_chance(row, m)]
    blind = is_blind(row)
    if not low and not blind:
        return None
    reasons = []
    if blind:
        reasons.append(
            f"it barely uses its images (held-out image reliance {float(row[f'{RELIANCE} mean']):.3f} nats "
            f"< {MIN_IMAGE_RELIANCE})"
        )
    if low:
        share = (
            "every VQA category"
            if len(low) == len(categories)
            else f"{len(low)} of {len(categories)} VQA categories"
        )
        reasons.append(f"it sits at chance on {share} ({_by_shots(low)})")
    if blind or len(low) == len(categories):
        return (
            f"The reference arm ({reference}) cannot speak to the paper: {' and '.join(reasons)}. No verdict drawn "
            "against it about vision can speak to the paper's findings."
        )
    return (
        f"The reference arm ({reference}) cannot speak to the paper on some categories: {' and '.join(reasons)}. "
        "Verdicts on those categories, and on the averages that include them, cannot speak to the paper's findings."
    )


def _level(values: pd.Series) -> str:
    """One floor across arms: a single number, or its range where arms were evaluated on different sets."""
    values = values.dropna()  # arms from before floors were recorded have none
    if values.empty:
        return "—"
    low, high = float(values.min()), float(values.max())
    return f"{low:.3f}" if math.isclose(low, high, abs_tol=1e-9) else f"{low:.3f}–{high:.3f}"


def floors_table_html(table: pd.DataFrame, reference: str | None) -> str:
    """Chance and oracle of every floored metric beside the reference arm's mean, at-chance rows marked."""
    metrics = floored_metrics(table)
    if not metrics:
        return ""
    arms = table["arm"].astype(str)
    row = table[arms == reference].iloc[0] if reference in set(arms) else None
    body = []
    for metric in metrics:
        cells = [_level(table[f"floor/chance/{metric} mean"]), _level(table[f"floor/oracle/{metric} mean"])]
        mark = ""
        if row is not None:
            low = at_chance(row, metric)
            mean = row[f"{metric} mean"]
            cells.append(("—" if pd.isna(mean) else f"{float(mean):.3f}") + (" (at chance)" if low else ""))
            mark = " class='at-chance'" if low else ""
        body.append(
            f"<tr{mark}><td>{html.escape(metric)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        )
    head = ["metric", "chance", "oracle"] + ([f"reference ({reference})"] if row is not None else [])
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>\n"
        + "\n".join(body)
        + "\n</tbody></table>"
    )


def banner_html(table: pd.DataFrame, reference: str | None) -> str:
    text = reference_banner(table, reference)
    return f"<div class='banner' role='alert'><b>⚠ {html.escape(text)}</b></div>" if text else ""


def arm_rows(table: pd.DataFrame) -> dict[str, dict]:
    """The arm table as one record per arm, for `comparison_note`: built once per table, not once per comparison
    (a wide table's records take milliseconds each, and a study has hundreds of comparisons)."""
    return {str(r["arm"]): r for r in table.to_dict("records")}


def comparison_note(rows: dict[str, dict], arm: str, reference: str, metric: str) -> str:
    """Which side of a paired comparison sits at chance on its metric: "", "arm", "reference" or "both".
    rows: `arm_rows` of the arm table."""
    low = [
        side
        for side, name in (("arm", arm), ("reference", reference))
        if at_chance(rows.get(name, {}), metric)
    ]
    return "both" if len(low) == 2 else "".join(low)
