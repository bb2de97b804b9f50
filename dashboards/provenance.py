"""Which recorded results a report may put side by side: trials of the current plan only, scored the same way.

A study's `study.json` lists the trials of its current plan. A recorded trial that is not among them (the reference,
a budget or a config field changed since it ran) is stale: kept on disk, listed apart, never averaged in. Each
finished row carries a fingerprint of every evaluation family's protocol (`protocol/<family>`); an arm is compared
with the reference on a family's metrics only where all their trials share one fingerprint. Where the seeds of an
arm share one pre-trained encoder, the verdicts do not cover the encoder's randomness, and the report says so. Where
its finished trials were trained by more than one version of the model code (a study resumed after a change to
mm1core keeps the trials it had finished), the report says which trials each trained.
"""

from __future__ import annotations

import html
import json

import pandas as pd

from mm1core.eval.protocol import PROTOCOL_PREFIX, metric_family

__all__ = ["code_versions_note", "comparable_items", "shared_encoder_note", "split_stale", "stale_html"]


def split_stale(
    trials: pd.DataFrame, per_trial: pd.DataFrame, planned: list[dict]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(trials of the plan, the rows of a per-trial table (curves, items) that belong to them, stale trials); with
    no plan recorded every trial counts as planned."""
    if not planned:
        return trials, per_trial, trials.iloc[0:0]
    ids = {t["trial_id"] for t in planned}
    current = trials["trial_id"].isin(ids)
    kept = per_trial[per_trial["trial_id"].isin(ids)] if "trial_id" in per_trial else per_trial
    return trials[current], kept, trials[~current]


def stale_html(stale: pd.DataFrame) -> str:
    if stale.empty:
        return ""
    rows = "".join(
        f"<li><b>{html.escape(str(r.arm))}</b> seed {r.seed} ({html.escape(str(r.trial_id))}), {html.escape(str(r.status))}</li>"
        for r in stale.itertuples()
    )
    return (
        f"<h2 class='missing'>Stale: {len(stale)} recorded trials are not in the current plan</h2>"
        "<p class='muted'>Kept on disk (trials.parquet) and left out of every table, comparison and finding: the "
        f"study changed since they ran.</p><ul>{rows}</ul>"
    )


def _fingerprints(trials: pd.DataFrame, arm: str, family: str) -> set[str]:
    column = f"{PROTOCOL_PREFIX}{family}"
    if column not in trials:
        return set()
    rows = trials[(trials["arm"].astype(str) == arm) & (trials["status"] == "finished")]
    return set(rows[column].dropna().astype(str))


def comparable_items(
    items: pd.DataFrame, trials: pd.DataFrame, reference: str
) -> tuple[pd.DataFrame, list[str]]:
    """The items an arm-vs-reference comparison may use, and a note per (arm, family) left out and why."""
    keep = pd.Series(True, index=items.index)
    notes = []
    families = items["metric"].map(metric_family)
    reference_prints = {f: _fingerprints(trials, reference, f) for f in families.unique()}
    for arm in items["arm"].astype(str).unique():
        if arm == reference:
            continue
        for family in families.unique():
            ours, theirs = _fingerprints(trials, arm, family), reference_prints[family]
            if not ours and not theirs:  # rows from before fingerprints were recorded: nothing to tell apart
                continue
            if len(ours) == 1 and ours == theirs:
                continue
            keep &= ~((items["arm"].astype(str) == arm) & (families == family))
            notes.append(
                f"{arm} is not compared with {reference} on {family}/*: their evaluation protocols differ "
                f"(fingerprints {', '.join(sorted(ours)) or 'none'} against {', '.join(sorted(theirs)) or 'none'})"
            )
    return items[keep], notes


def shared_encoder_note(trials: pd.DataFrame) -> str | None:
    """What the verdicts leave out when the seeds of an arm share one pre-trained encoder, else None."""
    done = trials[trials["status"] == "finished"] if "status" in trials else trials
    if "config_json" not in done or done["seed"].nunique() < 2:
        return None
    configs = [json.loads(c)["encoder_pretrain"] for c in done["config_json"].dropna()]
    if not any(c["loss"] != "none" and c.get("seed_from", "trial") == "stage" for c in configs):
        return None
    return (
        "The seeds of an arm share one pre-trained encoder (encoder_pretrain.seed_from: stage): the verdicts cover "
        "the multimodal stage's randomness and exclude the encoder's, which is confounded with the arm."
    )


def code_versions_note(trials: pd.DataFrame) -> str | None:
    """Which finished trials each version of the model code (mm1core's code_version) trained, where there is more
    than one, else None. Not a reason to leave any out: a change to mm1core may leave every run as it was (the
    same trial re-trained gives the same scores to the last digit, bench/same_results.py), and only a re-run can
    tell; the reader is told the comparisons rest on that."""
    if "code_version" not in trials or "status" not in trials:
        return None
    done = trials[(trials["status"] == "finished") & trials["code_version"].notna()]
    versions = done.groupby(done["code_version"].astype(str))["arm"]
    if versions.ngroups < 2:
        return None
    trained = "; ".join(
        f"{version}: {len(arms)} trials ({', '.join(sorted(set(arms.astype(str))))})"
        for version, arms in sorted(versions, key=lambda group: -len(group[1]))
    )
    return (
        f"Its finished trials were trained by {versions.ngroups} versions of the model code (mm1core's "
        f"code_version): {trained}. The comparisons between them hold only if the change to mm1core left those "
        "runs as they were: re-running one of the older trials with the current code and comparing its scores "
        "(bench/same_results.py) says whether it did."
    )
