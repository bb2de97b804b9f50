"""Which recorded results a report may put side by side: trials of the current plan only, scored the same way.

A study's `study.json` lists the trials of its current plan. A recorded trial that is not among them (the reference,
a budget or a config field changed since it ran) is stale: kept on disk, listed apart, never averaged in. Each
finished row carries a fingerprint of every evaluation family's protocol (`protocol/<family>`); an arm is compared
with the reference on a family's metrics only where all their trials share one fingerprint. Where the seeds of an
arm share one pre-trained encoder, the verdicts do not cover the encoder's randomness, and the report says so. Where
its finished trials were trained by more than one version of the model code (a study resumed after a change to
mm1core keeps the trials it had finished), the report says which trials each trained; and likewise where they ran on
more than one kind of machine, with the seeds whose comparison with the reference pairs runs of two machines.
"""

from __future__ import annotations

import html
import json

import pandas as pd

from mm1core.eval.protocol import PROTOCOL_PREFIX, metric_family

__all__ = [
    "code_versions_note",
    "comparable_items",
    "machines_note",
    "shared_encoder_note",
    "split_stale",
    "stale_html",
]


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


def _machine(row) -> str:
    """The kind of machine a run's numbers depend on: its GPU's name, or its CPU's model and thread count; a run
    resumed on another kind than began it is its own kind, "A, then B"."""
    machines = row.get("machines_json")
    if isinstance(machines, str) and len(trained_by := json.loads(machines)) > 1:
        return ", then ".join(_machine(machine) for machine in trained_by)
    device = row.get("device")
    device = str(device) if pd.notna(device) else ""  # rows from before devices were recorded have none
    if device and not device.startswith("cpu"):
        return device
    return f"{row['cpu_model']}, {device}" if device else str(row["cpu_model"])


def machines_note(trials: pd.DataFrame, reference: str | None) -> str | None:
    """Which finished trials each kind of machine trained, where there is more than one, else None, and which of an
    arm's seeds are compared with the reference's run of that seed on another kind. The same config, seed and code
    give other runs on another CPU or GPU (their kernels round differently: 0-shot VQA 0.694 against 0.60 for one
    arm, docs/studies/long-connector.md), so such a pair holds the machines' difference besides the arms': a study
    run in parts on two machines, or on a mixed cluster, has comparisons that no seed count corrects. Not a reason
    to leave any out; re-running the study on one machine is."""
    if "cpu_model" not in trials or "status" not in trials:
        return None
    done = trials[(trials["status"] == "finished") & trials["cpu_model"].notna()]
    if done.empty:
        return None
    machine = done.apply(_machine, axis=1)
    if machine.nunique() < 2:
        return None
    by_machine = done.groupby(machine)["arm"]
    trained = "; ".join(
        f"{name}: {len(arms)} trials ({', '.join(sorted(set(arms.astype(str))))})"
        for name, arms in sorted(by_machine, key=lambda group: -len(group[1]))
    )
    note = (
        f"Its finished trials ran on {machine.nunique()} kinds of machine: {trained}. The same configuration and "
        "seed give other runs on another CPU or GPU, so a comparison that pairs runs of two machines holds their "
        "difference besides the arms'."
    )
    if reference is None:
        return note
    arms = done["arm"].astype(str)
    on_reference = dict(zip(done.loc[arms == reference, "seed"], machine[arms == reference], strict=True))
    paired = [
        (arm, seed, where)
        for arm, seed, where in zip(arms, done["seed"], machine, strict=True)
        if arm != reference and seed in on_reference
    ]
    crossed = [f"{arm} seed {seed}" for arm, seed, where in paired if on_reference[seed] != where]
    if crossed:
        note += (
            f" {len(crossed)} of the {len(paired)} runs compared with the reference's run of their seed ran on another "
            f"machine than it ({', '.join(crossed)}); re-running the study on one machine removes that."
        )
    else:
        note += " Each arm's run is compared with the reference's run of its seed on the same machine."
    return note
