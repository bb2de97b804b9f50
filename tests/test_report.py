"""The report from a results directory generated in the test: arms, paired comparisons, category heat maps."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from dashboards.report import reference_arm, write_report

CATEGORIES = ("reading", "color", "counting")


def _study(tmp_path, effects: dict[str, float], seeds=(0, 1), items=120, name="res"):
    """A finished study whose arms differ from the reference ("res=64") by known per-item effects."""
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.2, 0.8, size=items)
    trials, rows = [], []
    for arm, effect in effects.items():
        for seed in seeds:
            p = np.clip(difficulty + effect + rng.normal(0, 0.02, size=items), 0, 1)
            scores = (rng.uniform(size=items) < p).astype(float)
            trial_id = f"{arm}-{seed}"
            rows += [
                {
                    "trial_id": trial_id,
                    "arm": arm,
                    "seed": seed,
                    "metric": "0shot/vqa",
                    "item_id": i,
                    "category": CATEGORIES[i % 3],
                    "score": s,
                }
                for i, s in enumerate(scores)
            ]
            by_category = {f"0shot/vqa/{c}": scores[k::3].mean() for k, c in enumerate(CATEGORIES)}
            trials.append(
                {
                    "trial_id": trial_id,
                    "arm": arm,
                    "seed": seed,
                    "status": "finished",
                    "error": "",
                    "resolution": int(arm.split("=")[1]),
                    "0shot/vqa": scores.mean(),
                    "0shot/avg": scores.mean(),
                    **by_category,
                }
            )
    study_dir = tmp_path / name
    study_dir.mkdir(parents=True)
    pd.DataFrame(trials).to_parquet(study_dir / "trials.parquet")
    pd.DataFrame(rows).to_parquet(study_dir / "items.parquet")
    spec = {
        "name": name,
        "description": "<b>bold</b>",
        "axes": [{"name": "resolution"}],
        "reference_values": {"resolution": 64},
    }
    (study_dir / "study.json").write_text(json.dumps(spec))
    return study_dir


def test_reference_arm_is_the_one_with_the_reference_values(tmp_path):
    trials = pd.read_parquet(_study(tmp_path, {"res=32": -0.3, "res=64": 0.0}) / "trials.parquet")
    assert reference_arm(trials, {"resolution": 64}) == "res=64"
    assert reference_arm(trials, {"resolution": 999}) == "res=32"  # none matches: the first in axis order


def test_comparisons_give_verdicts_against_the_reference(tmp_path):
    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0, "res=96": 0.0, "res=128": 0.25})
    page = write_report(study_dir).read_text()
    section = page.split("Against the reference arm")[1].split("<h2>")[0]
    cells = [row.split("</td><td>") for row in section.split("<tr><td>")[1:]]
    rows = {c[0]: " ".join(c) for c in cells}
    assert set(rows) == {"res=32", "res=96", "res=128"}
    assert "worse" in rows["res=32"] and "better" in rows["res=128"]
    assert "no detectable difference" in rows["res=96"]
    assert "3 comparisons (Holm)" in section
    assert "VQA accuracy by question category" in page  # the per-category heat map
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page


def test_the_paper_beside_us_says_agrees_disagrees_or_inconclusive(tmp_path):
    from dashboards.findings import assess, load_findings

    findings = {f["id"]: f for f in load_findings()}
    assert set(findings) == {f"F{i}" for i in range(1, 13)}
    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0})
    trials = pd.read_parquet(study_dir / "trials.parquet")
    items = pd.read_parquet(study_dir / "items.parquet")
    rising = assess(findings["F1"], trials, items, ["resolution"])
    assert rising["ours"] == "agrees" and "64 vs 32 0shot/vqa +" in rising["detail"]
    assert assess(findings["F8"], trials, items, ["resolution"]) is None  # the study does not vary data_ratio
    for name, effect, expected in (("falling", 0.3, "disagrees"), ("flat", 0.0, "inconclusive")):
        other = _study(tmp_path / name, {"res=32": effect, "res=64": 0.0})
        tables = [pd.read_parquet(other / f) for f in ("trials.parquet", "items.parquet")]
        assert assess(findings["F1"], *tables, ["resolution"])["ours"] == expected
    page = write_report(study_dir).read_text()
    assert "The paper beside us" in page and "F1" in page and "approx." not in page.split("F1")[1][:300]


def test_markdown_summary_and_csv_tables(tmp_path):
    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0})
    write_report(study_dir)
    summary = (study_dir / "summary.md").read_text()
    assert summary.startswith("# res") and "| res=32 | 2 |" in summary and "| F1 |" in summary
    assert "worse" in summary
    arms = pd.read_csv(study_dir / "arms.csv")
    assert list(arms["arm"]) == ["res=32", "res=64"] and "0shot/avg mean" in arms.columns
    assert set(pd.read_csv(study_dir / "comparisons.csv")["verdict"]) == {"worse"}
    assert pd.read_csv(study_dir / "findings.csv").loc[0, "id"] == "F1"


def test_index_lists_every_study_with_a_findings_scoreboard(tmp_path):
    from dashboards.index import write_index

    for name, effect in (("rising", -0.3), ("flat", 0.0)):
        write_report(_study(tmp_path, {"res=32": effect, "res=64": 0.0}, name=name))
    page = write_index(tmp_path).read_text()
    assert "rising/report.html" in page and "flat/report.html" in page and "Findings scoreboard" in page
    assert "agrees</span> (rising)" in page and "inconclusive</span> (flat)" in page
    assert "agrees" in page and "no study yet" in page  # F1 spoken to; F8 not


def test_a_running_study_lists_the_trials_still_to_come(tmp_path):
    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0})
    spec = json.loads((study_dir / "study.json").read_text())
    trials = pd.read_parquet(study_dir / "trials.parquet")
    spec["planned"] = [
        {"trial_id": t, "arm": a, "seed": s}
        for t, a, s in zip(trials.trial_id, trials.arm, trials.seed, strict=True)
    ]
    spec["planned"].append({"trial_id": "res=96-0", "arm": "res=96", "seed": 0})
    (study_dir / "study.json").write_text(json.dumps(spec))
    page = write_report(study_dir).read_text()
    assert "Not finished yet: 1 planned trials are running or queued" in page and "res=96-0" in page
