"""results/index.html: every study in a results directory, with a findings scoreboard across them.

Built from what each study's report wrote (trials.parquet, findings.csv, study.json), so it is cheap to rebuild after
every run or report, and a study still running appears with what it has.
"""

from __future__ import annotations

import html
import json
import sys
import time
from pathlib import Path

import pandas as pd

from dashboards.findings import load_findings
from mm1core.storage import atomic_write_text

__all__ = ["write_index"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
.agrees { color: #176c2f; font-weight: 600; } .disagrees { color: #a33; font-weight: 600; }
.muted { color: #666; font-size: 0.85rem; }
"""


def _studies(results_root: Path) -> list[Path]:
    return sorted(p.parent for p in results_root.glob("*/trials.parquet"))


# Which studies a suite holds: written by `mm1ablate run SUITE` (ablations.suite.record_suite), one JSON per suite.
_SUITES = "suites"


def _suite_records(results_root: Path) -> list[dict]:
    """Every suite run into this results folder, as its record says (ablations.suite.record_suite)."""
    records = []
    for record in sorted(results_root.glob(f"{_SUITES}/*.json")):
        # One bad record must not cost the scoreboard.
        try:
            data = json.loads(record.read_text())
            data["suite"], data["studies"] = str(data["suite"]), [str(s) for s in data["studies"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(
                f"{record}: not a suite record ({err!r}); its studies are listed without their suite",
                file=sys.stderr,
            )
            continue
        records.append(data)
    return records


def _suites_of(records: list[dict]) -> dict[str, list[str]]:
    """Study name -> the suites that list it: the scoreboard puts their verdicts first, ahead of the re-runs and
    explanation studies beside them."""
    held: dict[str, list[str]] = {}
    for data in records:
        for study in data["studies"]:
            held.setdefault(study, []).append(data["suite"])
    return held


def _suites_html(records: list[dict]) -> list[str]:
    """How each suite run into this folder was measured, in the words its record keeps (`summary`)."""
    said = [r for r in records if isinstance(r.get("summary"), list) and r["summary"]]
    if not said:
        return []
    return [
        "<h2>Suites</h2><p class='muted'>Each run of a suite into this folder is a part of its measurement.</p>",
        *(
            f"<p>{html.escape(str(r['summary'][0]))}</p><ul>"
            + "".join(f"<li>{html.escape(str(line).strip())}</li>" for line in r["summary"][1:])
            + "</ul>"
            for r in said
        ),
    ]


def _effect(f) -> str:
    """The finding's leading comparison: effect [95% interval], corrected p, seeds (and runs of each arm, when a
    crossed axis gives each seed several)."""
    effect = getattr(f, "effect", None)
    if effect is None or effect != effect:  # NaN: no comparison spoke (not tested, at chance)
        return "<span class=muted>-</span>"
    runs = getattr(f, "runs", None)
    replication = (
        f"{int(runs)} runs of each arm, {int(f.seeds)} seeds"
        if runs is not None and runs == runs and runs > f.seeds
        else f"{int(f.seeds)} seeds"
    )
    return (
        f"{html.escape(str(f.comparison))}: <b>{effect:+.3f}</b> [{f.ci_low:+.3f}, {f.ci_high:+.3f}], "
        f"p(Holm) {f.p_holm:.2g}, {replication}"
    )


def write_index(results_root: Path) -> Path:
    rows, verdicts = [], {}
    records = _suite_records(results_root)
    suites_of = _suites_of(records)
    for study_dir in _studies(results_root):
        trials = pd.read_parquet(study_dir / "trials.parquet", columns=["status"])
        spec_path = study_dir / "study.json"
        spec = json.loads(spec_path.read_text()) if spec_path.exists() else {}
        name = spec.get("name", study_dir.name)
        report = study_dir / "report.html"
        link = (
            f"<a href='{html.escape(report.relative_to(results_root).as_posix())}'>{html.escape(name)}</a>"
            if report.exists()
            else html.escape(name)
        )
        finished = int((trials["status"] == "finished").sum())
        rows.append(
            f"<tr><td>{link}</td><td>{html.escape(spec.get('description', ''))}</td>"
            f"<td>{finished} / {len(trials)}</td></tr>"
        )
        findings_path = study_dir / "findings.csv"
        if findings_path.exists():
            for f in pd.read_csv(findings_path).itertuples():
                verdicts.setdefault(f.id, []).append((link, f, suites_of.get(name, [])))
    score = []
    for finding in load_findings():
        # A suite's own study first (stable: the studies otherwise in name order), the re-runs and explanations after.
        said = sorted(verdicts.get(finding["id"], []), key=lambda row: not row[2])
        if not said:
            score.append(
                f"<tr><td>{finding['id']}</td><td>{html.escape(finding['claim'])} [{html.escape(finding['tag'])}]"
                "</td><td><span class=muted>not tested</span></td><td></td><td></td><td></td></tr>"
            )
            continue
        for i, (link, f, suites) in enumerate(said):
            head = (
                f"<td rowspan={len(said)}>{finding['id']}</td><td rowspan={len(said)}>"
                f"{html.escape(finding['claim'])} [{html.escape(finding['tag'])}]</td>"
                if i == 0
                else ""
            )
            verdict = str(f.ours)
            score.append(
                f"<tr>{head}<td><span class='{html.escape(verdict.split()[0])}'>{html.escape(verdict)}</span></td>"
                f"<td>{_effect(f)}</td><td>{link}</td>"
                f"<td>{html.escape(', '.join(suites)) or '<span class=muted>-</span>'}</td></tr>"
            )
    page = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mm1ablate studies</title>",
        f"<style>{_STYLE}</style></head><body><h1>Studies</h1>",
        f"<p class='muted'>{html.escape(str(results_root.resolve()))}; generated {time.strftime('%Y-%m-%d %H:%M')}</p>",
        "<h2>Findings scoreboard</h2>",
        "<p class='muted'>Per finding of the paper: our verdict from every study that speaks to it, the comparison "
        "that weighs most (effect on the 0-1 scale of its metric, for F12 the law's slope in ln LR per ln N; its 95% "
        "interval over the runs, the Holm-corrected p), and the study's report, which has every comparison and the "
        "capability floors. Where a suite was run into this folder, the study it lists for a finding comes first: "
        "that row is the suite's verdict, and the rows after it are other studies of the same finding (re-runs at "
        "other seeds, tests of an explanation).</p>",
        "<table><thead><tr><th>finding</th><th>the paper</th><th>ours</th><th>effect</th><th>study</th>"
        "<th>in suite</th></tr></thead><tbody>",
        *score,
        "</tbody></table>",
        *_suites_html(records),
        "<h2>Studies</h2>",
        "<table><thead><tr><th>study</th><th>description</th><th>finished</th></tr></thead><tbody>",
        *rows,
        "</tbody></table></body></html>",
    ]
    path = results_root / "index.html"
    atomic_write_text(path, "\n".join(page))
    return path
