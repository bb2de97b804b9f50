"""The report from a results directory generated in the test: arms, paired comparisons, category heat maps."""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pandas as pd
import pytest

from dashboards.report import reference_arm, write_report

CATEGORIES = ("reading", "color", "counting")


def _study(tmp_path, effects: dict[str, float], seeds=(0, 1, 2, 3, 4), items=120, name="res"):
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


def test_reference_arm_of_a_one_at_a_time_study_is_the_arm_that_varies_nothing():
    """Each arm of one_at_a_time sets only its own axis (the others are missing from its row, NaN in the table), so
    the arm that sets none is the reference, not the first arm in axis order."""
    trials = pd.DataFrame(
        {
            "arm": ["resolution=32", "encoder.patch_size=16", "reference"],
            "status": "finished",
            "resolution": [32, None, None],
            "encoder.patch_size": [None, 16, None],
        }
    )
    values = {"resolution": 64, "encoder.patch_size": 8}
    assert reference_arm(trials, values) == "reference"
    assert reference_arm(trials[trials["arm"] != "reference"], values) == "resolution=32"  # none matches


def test_a_one_at_a_time_study_speaks_to_a_finding_through_its_reference_arm(tmp_path):
    """The reference arm of one_at_a_time leaves the axis unset (NaN): the finding compares it as the reference's
    value, not as an arm with no value."""
    from dashboards.findings import assess_all

    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0})
    trials = pd.read_parquet(study_dir / "trials.parquet")
    items = pd.read_parquet(study_dir / "items.parquet")
    trials["resolution"] = trials["resolution"].where(trials["arm"] != "res=64")  # the reference: unset
    f1 = next(
        a for a in assess_all(trials, items, ["resolution"], None, {"resolution": 64}) if a["id"] == "F1"
    )
    assert f1["ours"] == "agrees" and f1["comparison"] == "64 vs 32 0shot/vqa" and f1["effect"] > 0.2


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


def test_a_finding_weighs_only_the_arms_the_paper_compared(tmp_path):
    """F6 is about the paper's three connectors: a fourth of ours in the same study (attn-pool-local, far below the
    others here) leaves its verdict as the three alone give it."""
    from dashboards.findings import assess, load_findings

    f6 = next(f for f in load_findings() if f["id"] == "F6")
    names = {32: "avg-pool", 48: "attn-pool", 64: "c-abstractor", 96: "attn-pool-local"}
    study_dir = _study(tmp_path, {"res=32": 0.0, "res=48": 0.0, "res=64": 0.0, "res=96": -0.4})
    trials = pd.read_parquet(study_dir / "trials.parquet")
    trials["connector"] = trials.pop("resolution").map(names)
    items = pd.read_parquet(study_dir / "items.parquet")
    with_ours = assess(f6, trials, items, ["connector"])
    theirs = trials[trials["connector"] != "attn-pool-local"]
    assert with_ours == assess(f6, theirs, items[items["trial_id"].isin(theirs["trial_id"])], ["connector"])
    assert "attn-pool-local" not in with_ours["detail"] and "c-abstractor" in with_ours["detail"]
    everything = assess(f6 | {"values": None}, trials, items, ["connector"])
    assert "attn-pool-local" in everything["detail"] and everything["ours"] == "disagrees"


def test_markdown_summary_and_csv_tables(tmp_path):
    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0})
    write_report(study_dir)
    summary = (study_dir / "summary.md").read_text()
    assert summary.startswith("# res") and "| res=32 | 5 |" in summary and "| F1 |" in summary
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
    scoreboard = page.split("Findings scoreboard")[1].split("<h2>Studies")[0]
    f1 = scoreboard.split("<td rowspan=2>F1</td>")[1].split("<td>F2</td>")[0]
    flat, rising = sorted(f1.split("</tr>")[:2], key=lambda row: "rising/report" in row)
    # Each study's verdict, its leading comparison with the effect and interval, and a link to its report.
    assert "agrees</span>" in rising and "rising/report.html" in rising
    assert re.search(r"64 vs 32 0shot/vqa: <b>\+0\.3\d\d</b> \[\+0\.\d+, \+0\.\d+\], p\(Holm\)", rising)
    assert "inconclusive</span>" in flat and "flat/report.html" in flat and "5 seeds" in flat
    assert (
        "<td>F8</td>" in scoreboard and "not tested" in scoreboard.split("<td>F8</td>")[1].split("</tr>")[0]
    )


def test_the_scoreboard_leads_each_finding_with_the_study_its_suite_lists(tmp_path, capsys):
    from dashboards.index import write_index

    # "rising" sorts after "flat" by name; the suite holds it, so its verdict comes first.
    for name, effect in (("rising", -0.3), ("flat", 0.0)):
        write_report(_study(tmp_path, {"res=32": effect, "res=64": 0.0}, name=name))
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "paper.json").write_text(
        json.dumps({"suite": "paper", "studies": ["rising", "x"]})
    )
    page = write_index(tmp_path).read_text()
    f1 = page.split("<td rowspan=2>F1</td>")[1].split("<td>F2</td>")[0]
    first, second = f1.split("</tr>")[:2]
    assert "rising/report.html" in first and "<td>paper</td>" in first
    assert "flat/report.html" in second and "<td><span class=muted>-</span></td>" in second
    # A record that is not one is named on stderr and skipped: the scoreboard is still written.
    (tmp_path / "suites" / "broken.json").write_text("{not json")
    assert "rising/report.html" in write_index(tmp_path).read_text()
    assert "broken.json: not a suite record" in capsys.readouterr().err


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


def _with_floors(study_dir, *, chance: dict[str, float] | None = None, reliance: float = 0.5):
    """The study's trials with the floors and image reliance an evaluation records; chance defaults to each VQA
    category's reference mean (so the reference sits exactly at chance) and the other arms' floors match."""
    trials = pd.read_parquet(study_dir / "trials.parquet")
    reference = trials[trials["arm"] == "res=64"]
    for metric in [*(f"0shot/vqa/{c}" for c in CATEGORIES), "0shot/vqa", "0shot/avg"]:
        level = chance[metric] if chance and metric in chance else float(reference[metric].mean())
        trials[f"floor/chance/{metric}"] = level  # a constant of the evaluation set, the same in every trial
        trials[f"floor/oracle/{metric}"] = 1.0
    trials["heldout/image_reliance"] = reliance
    trials["probe/final/color"] = 0.9
    trials["floor/chance/probe/final/color"] = 0.2
    trials.to_parquet(study_dir / "trials.parquet")
    return study_dir


def test_a_reference_arm_at_chance_opens_the_report_with_a_banner(tmp_path):
    study_dir = _with_floors(_study(tmp_path, {"res=32": -0.3, "res=64": 0.0, "res=128": 0.25}))
    page = write_report(study_dir).read_text()
    banner = page.split("<div class='banner'")[1].split("</div>")[0]
    assert "(res=64) cannot speak to the paper" in banner
    assert "every VQA category (0shot: color, counting, reading)" in banner
    assert page.index("class='banner'") < page.index("<h2>Arms</h2>")  # at the top
    summary = (study_dir / "summary.md").read_text()
    assert "> **⚠ The reference arm (res=64) cannot speak to the paper" in summary
    # Floors beside the categories: a chance row under the heat map and a chance / oracle table.
    assert "floor: chance" in page and "VQA categories and their floors" in page
    floors = page.split("VQA categories and their floors")[1].split("<h2>")[0]
    assert "<th>chance</th><th>oracle</th><th>reference (res=64)</th>" in floors
    assert "0shot/vqa/color" in floors and "(at chance)" in floors
    # Arms are marked where they sit at chance: the reference and the worse arm, not the better one.
    arms = page.split("<h2>Arms</h2>")[1].split("<h2>")[0]
    rows = {r.split("</td>")[0]: r for r in arms.split("<tr><td>")[1:]}
    assert "at chance on 3/3 VQA categories" in rows["res=64"] and "at chance" in rows["res=32"]
    assert "at chance" not in rows["res=128"] and "class='at-chance'" not in rows["res=128"]
    assert "res=32 | 5 |" in summary and "⊘" in summary and "below chance + 10%" in summary


def test_no_banner_for_a_reference_above_its_floors_that_uses_its_images(tmp_path):
    chance = {f"0shot/vqa/{c}": 0.1 for c in CATEGORIES} | {"0shot/vqa": 0.1, "0shot/avg": 0.1}
    study_dir = _with_floors(_study(tmp_path, {"res=32": -0.3, "res=64": 0.0}), chance=chance)
    page = write_report(study_dir).read_text()
    assert "cannot speak to the paper" not in page and "class='banner'" not in page
    assert "cannot speak to the paper" not in (study_dir / "summary.md").read_text()
    assert "floor: chance" in page  # the floors are still shown


def test_a_blind_reference_gets_the_banner_even_above_chance(tmp_path):
    chance = {f"0shot/vqa/{c}": 0.1 for c in CATEGORIES} | {"0shot/vqa": 0.1, "0shot/avg": 0.1}
    study_dir = _with_floors(_study(tmp_path, {"res=32": -0.3, "res=64": 0.0}), chance=chance, reliance=0.004)
    page = write_report(study_dir).read_text()
    banner = page.split("<div class='banner'")[1].split("</div>")[0]
    assert "barely uses its images (held-out image reliance 0.004 nats &lt; 0.02)" in banner
    assert "at chance" not in banner
    assert "blind (image reliance 0.004 nats)" in page


def test_floors_and_probes_are_never_compared_as_metrics(tmp_path):
    study_dir = _with_floors(_study(tmp_path, {"res=32": -0.3, "res=64": 0.0}))
    page = write_report(study_dir).read_text()
    compared = set(pd.read_csv(study_dir / "comparisons.csv")["metric"])
    assert compared == {"0shot/vqa"}
    findings = pd.read_csv(study_dir / "findings.csv")
    assert not findings["detail"].str.contains("floor/|probe/").any()
    section = page.split("Against the reference arm")[1].split("<h2>")[0]
    assert "<th>at chance</th>" in section and "<td class='missing'>both</td>" in section
    everything = page.split("<h2>All metrics</h2>")[1]
    assert "probe/final/color" in everything and "floor/" not in everything


def test_a_finding_drawn_only_from_arms_at_chance_cannot_speak(tmp_path):
    from dashboards.findings import assess, load_findings

    f1 = next(f for f in load_findings() if f["id"] == "F1")
    # 64 px clearly beats 32 px on 0shot/vqa, but chance is set above both arms: the difference cannot speak.
    muted = _with_floors(
        _study(tmp_path / "muted", {"res=32": -0.3, "res=64": 0.0}), chance={"0shot/vqa": 0.9}
    )
    tables = [pd.read_parquet(muted / f) for f in ("trials.parquet", "items.parquet")]
    verdict = assess(f1, *tables, ["resolution"])
    assert verdict["ours"] == "cannot speak (at chance)" and "0shot/vqa" in verdict["detail"]
    # Each arm's mean is said against its line (chance 0.9 + 10% of the way to oracle 1.0).
    assert re.search(r"\(64 0\.\d{3} < 0\.910, 32 0\.\d{3} < 0\.910\)", verdict["detail"])
    # The same study with chance below both arms: the difference speaks, and agrees with the paper.
    heard = _with_floors(
        _study(tmp_path / "heard", {"res=32": -0.3, "res=64": 0.0}), chance={"0shot/vqa": 0.0}
    )
    tables = [pd.read_parquet(heard / f) for f in ("trials.parquet", "items.parquet")]
    assert assess(f1, *tables, ["resolution"])["ours"] == "agrees"


def test_a_comparison_left_out_at_chance_names_how_far_under_the_line_its_arms_sit(tmp_path):
    """A verdict drawn from the metrics that speak lists the one left out with each arm's mean against its chance
    line, so that an arm a hair under the line (a verdict that hangs on it) is visible in the finding."""
    from dashboards.findings import assess, load_findings

    f1 = next(f for f in load_findings() if f["id"] == "F1")
    study_dir = _with_floors(_study(tmp_path, {"res=32": -0.3, "res=64": 0.0}), chance={"0shot/vqa": 0.0})
    trials, items = (pd.read_parquet(study_dir / f) for f in ("trials.parquet", "items.parquet"))
    # The same scores once more as captions, whose chance line (0.6 + 10% of the way to 1.0) is above both arms.
    items = pd.concat([items, items.assign(metric="0shot/cider")], ignore_index=True)
    trials["0shot/cider"] = trials["0shot/vqa"]
    trials["floor/chance/0shot/cider"], trials["floor/oracle/0shot/cider"] = 0.6, 1.0
    verdict = assess(f1, trials, items, ["resolution"])
    assert verdict["ours"] == "agrees"
    reference = trials.loc[trials["arm"] == "res=64", "0shot/vqa"].mean()
    left_out = next(part for part in verdict["detail"].split("; ") if "0shot/cider" in part)
    assert f"every arm at chance (64 {reference:.3f} < 0.640, 32 " in left_out
    assert left_out.endswith(" < 0.640): left out")


def test_a_trend_over_arms_all_at_chance_cannot_speak(tmp_path):
    from dashboards.findings import assess, load_findings

    f1 = next(f for f in load_findings() if f["id"] == "F1")
    three = {"res=32": -0.3, "res=64": 0.0, "res=96": 0.15}
    # With three values F1 is weighed by the trend over all of them; every arm below chance leaves it nothing to say.
    muted = _with_floors(_study(tmp_path / "muted", three), chance={"0shot/vqa": 0.9})
    tables = [pd.read_parquet(muted / f) for f in ("trials.parquet", "items.parquet")]
    verdict = assess(f1, *tables, ["resolution"])
    assert verdict["ours"] == "cannot speak (at chance)" and "trend" in verdict["detail"]
    # One arm above chance is enough for the trend to speak.
    heard = _with_floors(_study(tmp_path / "heard", three), chance={"0shot/vqa": 0.55})
    tables = [pd.read_parquet(heard / f) for f in ("trials.parquet", "items.parquet")]
    verdict = assess(f1, *tables, ["resolution"])
    assert verdict["ours"] == "agrees" and verdict["comparison"].startswith("trend 32 .. 96")


def test_a_study_whose_seeds_share_an_encoder_says_its_verdicts_exclude_encoder_noise(tmp_path):
    from dashboards.provenance import shared_encoder_note

    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0})
    trials = pd.read_parquet(study_dir / "trials.parquet")

    def with_encoder(seed_from: str) -> pd.DataFrame:
        config = {"encoder_pretrain": {"loss": "clip", "seed": 0, "seed_from": seed_from}}
        return trials.assign(config_json=json.dumps(config))

    assert shared_encoder_note(with_encoder("trial")) is None
    with_encoder("stage").to_parquet(study_dir / "trials.parquet")
    write_report(study_dir)
    assert "exclude the encoder's" in (study_dir / "summary.md").read_text()
    assert "exclude the encoder&#x27;s" in (study_dir / "report.html").read_text()


def test_a_study_trained_by_two_versions_of_the_model_code_says_which_trials_each_trained(tmp_path):
    """A study resumed after a change to mm1core keeps the trials it had finished: its report names the versions."""
    from dashboards.provenance import code_versions_note

    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0})
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert code_versions_note(trials.assign(code_version="a223dc4c48af")) is None
    older = trials["arm"] == "res=32"
    mixed = trials.assign(code_version=["c9aaa3d12dbd" if old else "a223dc4c48af" for old in older])
    # A trial that did not finish trained nothing that is compared.
    mixed.loc[mixed.index[0], "status"] = "failed"
    assert code_versions_note(mixed.assign(code_version="a223dc4c48af")) is None
    mixed.to_parquet(study_dir / "trials.parquet")
    write_report(study_dir)
    finished = mixed[mixed["status"] == "finished"]
    counts = finished.groupby("code_version").size()
    summary = (study_dir / "summary.md").read_text()
    assert "trained by 2 versions of the model code" in summary, summary
    assert f"c9aaa3d12dbd: {counts['c9aaa3d12dbd']} trials (res=32)" in summary
    assert f"a223dc4c48af: {counts['a223dc4c48af']} trials (res=64)" in summary
    assert "trained by 2 versions of the model code" in (study_dir / "report.html").read_text()


def test_a_study_run_on_two_kinds_of_machine_says_which_seeds_it_compares_across_them(tmp_path):
    """The same trial gives other runs on another CPU: a study run in parts on two machines names the pairs that
    mix them."""
    from dashboards.provenance import machines_note

    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0})
    trials = pd.read_parquet(study_dir / "trials.parquet")
    one = trials.assign(cpu_model="AMD EPYC", device="cpu x1 threads")
    assert machines_note(one, "res=64") is None
    # Rows from before the device was recorded are named by their CPU alone (not as a GPU called "nan").
    older = one.assign(
        device=[float("nan") if a == "res=32" else "cpu x1 threads" for a in one["arm"]],
        cpu_model=["Intel(R) Xeon(R) Processor" if a == "res=32" else "AMD EPYC" for a in one["arm"]],
    )
    assert "Intel(R) Xeon(R) Processor: 5 trials (res=32)" in machines_note(older, "res=64")
    # More threads round a matrix product's sums in another order: another machine as far as the runs go.
    assert "2 kinds of machine" in machines_note(
        one.assign(device=["cpu x2 threads" if s == 4 else "cpu x1 threads" for s in one["seed"]]), "res=64"
    )
    # Seeds 0-2 of both arms on one machine, then the study resumed on another: res=32's seeds 3 and 4 there, the
    # reference's seed 3 too, its seed 4 on the first machine.
    later = (one["seed"] >= 3) & ~((one["arm"] == "res=64") & (one["seed"] == 4))
    mixed = one.assign(cpu_model=["Intel(R) Xeon(R) Processor" if x else "AMD EPYC" for x in later])
    note = machines_note(mixed, "res=64")
    assert "Intel(R) Xeon(R) Processor, cpu x1 threads: 3 trials (res=32, res=64)" in note
    assert "AMD EPYC, cpu x1 threads: 7 trials (res=32, res=64)" in note
    assert (
        "1 of the 5 runs compared with the reference's run of their seed ran on another machine than it"
        in note
    )
    assert "(res=32 seed 4)" in note
    # A GPU is named by its device, whatever the host's CPU.
    gpu = one.assign(device=["NVIDIA H200" if a == "res=32" else "cpu x1 threads" for a in one["arm"]])
    assert "NVIDIA H200: 5 trials (res=32)" in machines_note(gpu, "res=64")
    # A run begun on one machine and resumed on another is neither's: it is named by both, in order.
    amd, xeon = (
        {"cpu_model": "AMD EPYC", "device": "cpu x1 threads"},
        {"cpu_model": "Intel(R) Xeon(R) Processor", "device": "cpu x1 threads"},
    )
    handed_on = (one["arm"] == "res=32") & (one["seed"] == 0)
    resumed = one.assign(
        machines_json=[json.dumps([amd, xeon] if x else [amd]) for x in handed_on],
        cpu_model=["Intel(R) Xeon(R) Processor" if x else "AMD EPYC" for x in handed_on],
    )
    note = machines_note(resumed, "res=64")
    assert (
        "AMD EPYC, cpu x1 threads, then Intel(R) Xeon(R) Processor, cpu x1 threads: 1 trials (res=32)" in note
    )
    assert "(res=32 seed 0)" in note
    # Resumed on the machine that began it: one machine.
    assert (
        machines_note(resumed.assign(machines_json=json.dumps([amd]), cpu_model="AMD EPYC"), "res=64") is None
    )
    assert "5 of the 5 runs" in machines_note(gpu, "res=64")
    # Each pair on one machine, the machines differing between seeds: said, and no pair named.
    by_seed = one.assign(
        cpu_model=["Intel(R) Xeon(R) Processor" if s >= 3 else "AMD EPYC" for s in one["seed"]]
    )
    assert "on the same machine" in machines_note(by_seed, "res=64")
    mixed.to_parquet(study_dir / "trials.parquet")
    write_report(study_dir)
    assert "ran on 2 kinds of machine" in (study_dir / "summary.md").read_text()
    assert "ran on 2 kinds of machine" in (study_dir / "report.html").read_text()


def test_an_increasing_finding_over_three_values_tests_the_trend(tmp_path):
    from dashboards.findings import assess, load_findings

    f1 = next(f for f in load_findings() if f["id"] == "F1")
    rising = _study(tmp_path / "rising", {"res=32": -0.2, "res=64": 0.0, "res=96": 0.2})
    verdict = assess(
        f1, *(pd.read_parquet(rising / f) for f in ("trials.parquet", "items.parquet")), ["resolution"]
    )
    assert verdict["ours"] == "agrees" and "trend 32 .. 96 vs 32 0shot/vqa +0.4" in verdict["detail"]


def test_stale_rows_are_listed_apart_and_never_averaged_in(tmp_path):
    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0, "res=128": 0.25})
    trials = pd.read_parquet(study_dir / "trials.parquet")
    spec = json.loads((study_dir / "study.json").read_text())
    # The plan no longer holds res=128 (say the axis was edited): its rows stay on disk, out of every table.
    planned = trials[trials["arm"] != "res=128"]
    spec["planned"] = planned[["trial_id", "arm", "seed"]].to_dict("records")
    (study_dir / "study.json").write_text(json.dumps(spec))
    page = write_report(study_dir).read_text()
    assert "Stale: 5 recorded trials are not in the current plan" in page
    summary = (study_dir / "summary.md").read_text()
    assert "res=128" not in summary and "res=32" in summary
    assert "res=128" not in pd.read_csv(study_dir / "comparisons.csv")["arm"].tolist()


def test_arms_scored_under_different_protocols_are_not_compared(tmp_path):
    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0, "res=128": 0.25})
    trials = pd.read_parquet(study_dir / "trials.parquet")
    trials["protocol/0shot"] = "aaaaaaaaaaaa"
    trials.loc[trials["arm"] == "res=128", "protocol/0shot"] = "bbbbbbbbbbbb"  # say, scored on other items
    trials.to_parquet(study_dir / "trials.parquet")
    page = write_report(study_dir).read_text()
    assert "res=128 is not compared with res=64 on 0shot/*: their evaluation protocols differ" in page
    compared = pd.read_csv(study_dir / "comparisons.csv")
    assert set(compared["arm"]) == {"res=32"}
    assert "protocol/0shot" not in page.split("All metrics")[1]  # a fingerprint is not a metric


def _two_axis_tables(score, seeds=range(5), items=150):
    """trials and items of a resolution x encoder_loss grid; per-item success probability score(res, loss)."""
    rng = np.random.default_rng(8)
    difficulty = rng.uniform(-0.2, 0.2, size=items)
    trials, rows = [], []
    for res in (32, 64):
        for loss in ("aim", "clip"):
            for seed in seeds:
                trial_id = f"{res}-{loss}-{seed}"
                p = np.clip(score(res, loss) + difficulty + rng.normal(0, 0.01), 0, 1)
                scores = (rng.uniform(size=items) < p).astype(float)
                arm = f"resolution={res},encoder_loss={loss}"
                trials.append(
                    {"trial_id": trial_id, "arm": arm, "seed": seed, "status": "finished", "resolution": res}
                    | {"encoder_loss": loss, "0shot/vqa": scores.mean()}
                )
                rows += [
                    {"trial_id": trial_id, "arm": arm, "seed": seed, "metric": "0shot/vqa", "item_id": i}
                    | {"score": s}
                    for i, s in enumerate(scores)
                ]
    return pd.DataFrame(trials), pd.DataFrame(rows)


def test_highest_impact_compares_resolution_with_the_other_encoder_axes():
    from dashboards.findings import assess, load_findings

    f1 = next(f for f in load_findings() if f["id"] == "F1")
    axes = ["resolution", "encoder_loss"]
    # Resolution moves accuracy by 0.3, the objective by 0.05: resolution has the larger impact.
    ranked = assess(
        f1, *_two_axis_tables(lambda res, loss: 0.3 + 0.3 * (res == 64) + 0.05 * (loss == "clip")), axes
    )
    assert ranked["ours"] == "agrees" and "resolution effect minus encoder_loss range" in ranked["detail"]
    # Both help, but the objective more: the direction agrees, "highest impact" does not.
    outranked = assess(
        f1, *_two_axis_tables(lambda res, loss: 0.2 + 0.15 * (res == 64) + 0.4 * (loss == "clip")), axes
    )
    assert outranked["ours"] == "disagrees"


def test_a_crossed_study_counts_its_seeds_apart_from_its_runs(tmp_path):
    """Blocked by seed and the other axis, each arm has seeds x values runs: the scoreboard says so, and never calls
    them seeds (it once said "10 seeds" of a 5-seed study)."""
    from dashboards.findings import assess, load_findings
    from dashboards.index import write_index

    f1 = next(f for f in load_findings() if f["id"] == "F1")
    crossed = assess(
        f1, *_two_axis_tables(lambda res, loss: 0.3 + 0.3 * (res == 64)), ["resolution", "encoder_loss"]
    )
    assert crossed["seeds"] == 5 and crossed["runs"] == 10
    undetected = assess(
        f1,
        *_two_axis_tables(lambda res, loss: 0.5 + 0.004 * (res == 64), seeds=range(3)),
        ["resolution", "encoder_loss"],
    )
    assert undetected["ours"] == "inconclusive" and "runs of each arm would" in undetected["detail"]
    assert "seeds would" not in undetected["detail"]
    study_dir = tmp_path / "crossed"
    study_dir.mkdir()
    pd.DataFrame({"status": ["finished"]}).to_parquet(study_dir / "trials.parquet")
    pd.DataFrame([crossed]).to_csv(study_dir / "findings.csv", index=False)
    assert (
        "p(Holm) " in (page := write_index(tmp_path).read_text()) and "10 runs of each arm, 5 seeds" in page
    )
    one_at_a_time = assess(f1, *_two_axis_tables(lambda res, loss: 0.3 + 0.3 * (res == 64)), ["resolution"])
    assert one_at_a_time["seeds"] == 5


def test_a_one_at_a_time_study_blocks_arms_that_leave_other_axes_at_the_reference(tmp_path):
    """Arms of a one-at-a-time study record no value for the axes they leave alone: the finding still compares
    them (a report once crashed on the missing values)."""
    from dashboards.findings import assess, load_findings

    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0})
    trials = pd.read_parquet(study_dir / "trials.parquet")
    items = pd.read_parquet(study_dir / "items.parquet")
    trials["train.lr"] = float("nan")  # a second axis, not set by these arms
    f1 = next(f for f in load_findings() if f["id"] == "F1")
    assert assess(f1, trials, items, ["resolution", "train.lr"])["ours"] == "agrees"


def test_a_reporter_started_ahead_writes_only_when_told(tmp_path):
    """`mm1ablate run` starts `python -m dashboards` with its trials, so that its imports are paid while they train:
    told, it writes the report and the index; closed untold (the run ended with nothing to report), nothing."""
    from ablations.handoff import Reporter

    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0})
    untold = Reporter(study_dir, tmp_path, tracking_uri=None)
    untold.close()
    assert untold.process.returncode == 0
    assert not (study_dir / "report.html").exists() and not (tmp_path / "index.html").exists()

    told = Reporter(study_dir, tmp_path, tracking_uri="http://127.0.0.1:5000", nice=5)
    # It waits at a lower priority than the run that started it, so its imports take no CPU from the trials.
    # (`nice` lowers its own priority, then becomes the reporter: the first instants of the process are still ours.)
    lowered = min(os.getpriority(os.PRIO_PROCESS, 0) + 5, 19)
    deadline = time.monotonic() + 10
    while os.getpriority(os.PRIO_PROCESS, told.process.pid) != lowered and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.getpriority(os.PRIO_PROCESS, told.process.pid) == lowered
    assert told.write() == study_dir / "report.html"
    assert "127.0.0.1:5000" in (study_dir / "report.html").read_text()
    assert (tmp_path / "index.html").exists()


def test_a_report_due_where_a_reporter_was_started_ahead_is_written_by_that_one(tmp_path):
    """A run with nothing left to train still reports (runs counted from another study are new rows): with the
    reporter `mm1ablate run` started before its imports, not with a second one importing beside it."""
    from ablations.handoff import REPORTER_NICE, prestart_reporter, write_report

    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0})
    ahead = prestart_reporter(study_dir, tmp_path, tracking_uri=None, nice=REPORTER_NICE)
    assert (
        write_report(study_dir, tmp_path, tracking_uri=None, nice=REPORTER_NICE) == study_dir / "report.html"
    )
    assert ahead.process.poll() == 0  # it was told to write, wrote, and ended


def test_the_cost_table_sums_time_per_arm_and_gives_the_most_memory_a_worker_held(tmp_path):
    from dashboards.cost import cost_table

    study_dir = _study(tmp_path, {"res=32": -0.3, "res=64": 0.0}, seeds=(0, 1))
    trials = pd.read_parquet(study_dir / "trials.parquet")
    trials["wall_time_s"] = [60.0, 120.0, 600.0, 660.0]
    trials["cost/cpu_s"] = [50.0, 100.0, 500.0, 550.0]
    trials["cost/worker_rss_mb"] = [1500.0, 1800.0, 2048.0, 3072.0]
    trials.to_parquet(study_dir / "trials.parquet")
    table = cost_table(trials, {}).set_index("arm")
    assert table.loc["res=32", "wall_s"] == 180.0 and table.loc["res=64", "cpu_s"] == 1050.0
    assert table.loc["res=32", "worker_mb"] == 1800.0 and table.loc["res=64", "worker_mb"] == 3072.0
    write_report(study_dir)
    cost = (study_dir / "report.html").read_text().split("<h2>Cost</h2>")[1].split("</table>")[0]
    assert "worker memory, most (GB)" in cost
    assert "<td>res=64</td><td>2</td><td>21.0</td>" in cost and "<td>3.0</td>" in cost
    assert cost.split("all trials")[1].count("<b>3.0</b>") == 1


def _lr_sweep(slope: float, noise: float, seed: int = 0, smallest_below: bool = False) -> pd.DataFrame:
    """Finished runs of a learning-rate sweep at three sizes, two seeds, whose optimum follows exp(slope ln N + 1);
    with smallest_below, the smallest size is swept only below its optimum."""
    rng = np.random.default_rng(seed)
    rows = []
    for size in (2e5, 8e5, 3.2e6):
        best = np.exp(slope * np.log(size) + 1.0)
        grid = (
            [1 / 32, 1 / 16, 1 / 8, 1 / 4] if smallest_below and size == 2e5 else [0.25, 0.5, 1.0, 2.0, 4.0]
        )
        for lr in best * np.array(grid) * rng.uniform(0.8, 1.25):
            for run_seed in (0, 1):
                loss = 1.0 + 0.1 * run_seed + 0.05 * np.log(lr / best) ** 2 + rng.normal(0.0, noise)
                rows.append(
                    {
                        "trial_id": f"{size}/{lr}/{run_seed}",
                        "seed": run_seed,
                        "status": "finished",
                        "lm.width": int(size),
                        "train.lr": float(lr),
                        "num_params": size,
                        "heldout/loss": loss,
                    }
                )
    return pd.DataFrame(rows)


def test_the_learning_rate_law_is_judged_by_the_sign_of_its_slope_fitted_to_every_run():
    """F12 gets a verdict, not just a figure: the optimum falling with size agrees, rising disagrees, and runs too
    noisy to place the optima say inconclusive; the paper's slope is set beside ours."""
    from dashboards.findings import assess, load_findings

    f12 = next(f for f in load_findings() if f["id"] == "F12")
    items = pd.DataFrame(columns=["trial_id", "metric", "item_id", "score"])
    axes = ["lm.width", "train.lr"]
    falling = assess(f12, _lr_sweep(-0.4214, 0.003), items, axes)
    assert falling["ours"] == "agrees" and falling["ci_high"] < 0 and falling["p_holm"] < 0.05
    assert falling["effect"] == pytest.approx(-0.4214, abs=0.03) and falling["seeds"] == 2
    assert "the paper's -0.4214 is inside that interval" in falling["detail"]
    assert "outside the peak LRs swept" not in falling["detail"]
    # A smallest size swept only below its optimum: the fit extrapolates it, and says so.
    short = assess(f12, _lr_sweep(-0.4214, 0.003, smallest_below=True), items, axes)
    assert "the optimum at N=200,000" in short["detail"] and "N=800,000" not in short["detail"]
    rising = assess(f12, _lr_sweep(+0.4, 0.003), items, axes)
    assert rising["ours"] == "disagrees" and rising["ci_low"] > 0 and "outside" in rising["detail"]
    assert assess(f12, _lr_sweep(-0.4, 0.2), items, axes)["ours"] == "inconclusive"
    one_size = _lr_sweep(-0.4, 0.003)
    one_size = one_size[one_size["num_params"] == 2e5]
    assert assess(f12, one_size, items, axes)["ours"] == "not tested"


def test_a_text_claim_is_read_on_each_textcore_task_against_its_own_floor():
    """An arm that learned scene questions and not arithmetic sits under TextCore's chance line on the average, while
    the task it learned moves with the axis: F9 reads that task's items on their own floor, and leaves the unlearned
    one out."""
    from dashboards.findings import assess, load_findings

    f9 = next(f for f in load_findings() if f["id"] == "F9")
    rng = np.random.default_rng(0)
    chance = {"scene_qa": 0.08, "arithmetic": 0.026}
    learned = {
        "5:5:1": {"scene_qa": 0.22, "arithmetic": 0.02},
        "5:5:0": {"scene_qa": 0.02, "arithmetic": 0.0},
    }
    ease = {task: rng.uniform(0.2, 1.8, size=200) for task in chance}  # an item's ease, the same in every run
    trials, rows = [], []
    for ratio, accuracy in learned.items():
        for seed in range(3):
            trial_id = f"{ratio}-{seed}"
            by_task = {}
            for task, p in accuracy.items():
                scores = (rng.uniform(size=200) < p * ease[task]).astype(float)
                by_task[task] = scores.mean()
                rows += [
                    {"trial_id": trial_id, "arm": ratio, "seed": seed, "metric": "textcore/avg",
                     "item_id": f"{task}-{i}", "category": task, "score": s}
                    for i, s in enumerate(scores)
                ]  # fmt: skip
            average = {"textcore/avg": np.mean(list(by_task.values()))}
            floors = {f"floor/chance/textcore/{t}": c for t, c in chance.items()}
            floors["floor/chance/textcore/avg"] = np.mean(list(chance.values()))
            floors |= {f"floor/oracle/{m}": 1.0 for m in ("textcore/avg", *(f"textcore/{t}" for t in chance))}
            trials.append(
                {"trial_id": trial_id, "arm": ratio, "seed": seed, "status": "finished", "data_ratio": ratio}
                | {f"textcore/{t}": v for t, v in by_task.items()}
                | average
                | floors
            )
    trials, items = pd.DataFrame(trials), pd.DataFrame(rows)
    assert trials.loc[trials["data_ratio"] == "5:5:1", "textcore/avg"].mean() < 0.053 + 0.1 * (1 - 0.053)

    verdict = assess(f9, trials, items, ["data_ratio"])
    assert verdict["ours"] == "agrees"
    assert verdict["comparison"] == "5:5:1 vs 5:5:0 textcore/scene_qa" and verdict["effect"] > 0.15
    left_out = [part.split()[3] for part in verdict["detail"].split("; ") if part.endswith(": left out")]
    assert left_out == ["textcore/avg", "textcore/arithmetic"]
