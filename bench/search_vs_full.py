"""Does early stopping pay? A search study with ASHA against the same configurations run to the end.

    .venv/bin/python bench/search_vs_full.py studies/lr_width_search.yaml [--results-dir results]

Runs the search (or reads it, if it has run), counts its trial-steps (a run stopped at step s costs s), then runs
every configuration it tried to the end as a `zip` study of the same reference (the same configs, so the same trial
ids: a stopped run resumes from the checkpoint it was stopped at, so the comparison costs only the steps the search
saved), and ranks the configurations by their final metric.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import yaml


def run(cli: str, study: Path, results: Path) -> None:
    subprocess.run([cli, "--results-dir", str(results), "run", str(study)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study", type=Path)
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    args = parser.parse_args()
    cli = str(Path(sys.executable).with_name("mm1ablate"))
    spec = yaml.safe_load(args.study.read_text())
    run(cli, args.study, args.results_dir)
    search_dir = args.results_dir / spec["name"]
    storage = f"sqlite:///{(search_dir / 'optuna.db').resolve()}"
    name = json.loads((search_dir / "study.json").read_text())["search_name"]
    search = optuna.load_study(study_name=name, storage=storage)
    rows = pd.read_parquet(search_dir / "trials.parquet")
    rows = rows[rows["search"] == name]
    steps = int(spec.get("budget", {}).get("multimodal", {}).get("steps") or 0)
    spent = rows.apply(lambda r: steps if r["status"] == "finished" else r["stopped_at_step"], axis=1).sum()
    # The configurations the search tried to a result (run to the end or stopped by ASHA); a run that a killed
    # driver left FAIL in Optuna was no decision of the search and is not one of its configurations.
    trials = search.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    full_steps = len(trials) * steps

    # The same configurations, to the end.
    full = dict(spec, name=f"{spec['name']}-to-the-end", design="zip")
    full.pop("search")
    full["axes"] = [
        {"name": axis["name"], "values": [t.params[axis["name"]] for t in trials]} for axis in spec["axes"]
    ]
    full["description"] = f"every configuration of {spec['name']} run to the end (bench/search_vs_full.py)"
    full_path = args.results_dir / f"{full['name']}.yaml"
    full_path.write_text(yaml.safe_dump(full, sort_keys=False))
    full_dir = args.results_dir / full["name"]
    (full_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for checkpoint in (search_dir / "checkpoints").glob("*.pt*"):
        target = full_dir / "checkpoints" / checkpoint.name
        if not target.exists():
            shutil.copy2(checkpoint, target)
    run(cli, full_path, args.results_dir)
    ended = pd.read_parquet(full_dir / "trials.parquet")
    ended = ended[ended["status"] == "finished"]
    metric = spec["search"]["metric"]
    ranked = ended.sort_values(metric, ascending=spec["search"].get("mode", "max") == "min").reset_index(
        drop=True
    )
    best = search.best_trial.params
    match = ranked[
        ranked.apply(
            lambda r: all(abs(float(r[k]) - float(v)) <= 1e-9 * abs(float(v)) for k, v in best.items()),
            axis=1,
        )
    ]
    rank = int(match.index[0]) + 1 if len(match) else None
    print(
        f"search: {len(trials)} configurations, {spent} trial-steps of {full_steps} ({spent / full_steps:.0%})"
    )
    print(
        f"search's best {best}: {metric} {search.best_value:.4f}; rank {rank} of {len(ranked)} run to the end"
    )
    print(ranked[[*best, metric]].head(5).to_string())


if __name__ == "__main__":
    main()
