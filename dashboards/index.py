"""results/index.html: every study in a results directory, with a findings scoreboard across them.

Built from what each study's report wrote (trials.parquet, findings.csv, study.json), so it is cheap to rebuild after
every run or report, and a study still running appears with what it has.
"""

from __future__ import annotations

import html
import json
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


def write_index(results_root: Path) -> Path:
    rows, verdicts = [], {}
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
                verdicts.setdefault(f.id, []).append((name, str(f.ours)))
    score = []
    for finding in load_findings():
        said = verdicts.get(finding["id"], [])
        cells = "<br>".join(
            f"<span class='{v.split()[0]}'>{html.escape(v)}</span> ({html.escape(s)})" for s, v in said
        )
        score.append(
            f"<tr><td>{finding['id']}</td><td>{html.escape(finding['claim'])} [{html.escape(finding['tag'])}]</td>"
            f"<td>{cells or '<span class=muted>no study yet</span>'}</td></tr>"
        )
    page = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mm1ablate studies</title>",
        f"<style>{_STYLE}</style></head><body><h1>Studies</h1>",
        f"<p class='muted'>{html.escape(str(results_root.resolve()))}; generated {time.strftime('%Y-%m-%d %H:%M')}</p>",
        "<table><thead><tr><th>study</th><th>description</th><th>finished</th></tr></thead><tbody>",
        *rows,
        "</tbody></table><h2>Findings scoreboard</h2>",
        "<p class='muted'>The paper's findings and what each study that speaks to one says about it.</p>",
        "<table><thead><tr><th>finding</th><th>the paper</th><th>our studies</th></tr></thead><tbody>",
        *score,
        "</tbody></table></body></html>",
    ]
    path = results_root / "index.html"
    atomic_write_text(path, "\n".join(page))
    return path
