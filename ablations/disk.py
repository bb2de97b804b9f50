"""What a results folder holds that nothing needs any more, and what a study will store.

`mm1ablate clean` lists, then (with --yes) removes:
- checkpoints (and report logs) of trials that finished or diverged: only an unfinished trial resumes from one;
- cached encoders no study in the folder plans or recorded with the current code (the key hashes the code, so a
  change to mm1core orphans every entry), and encoders' damaged copies;
- data shards built by other code than the current, or for data no study plans or recorded;
- files moved aside as damaged (`*.damaged-*`).
A study's planned trials are read back from its `study.json`, recorded ones from `trials.parquet`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.plan import plan, stage_cache_dir
from ablations.results import RUN_LOCK, study_runner
from ablations.spec import StudyError, study_from_dict
from mm1core.stage_cache import encoder_stage_key

__all__ = ["Removal", "footprint", "removals", "remove", "running_studies"]

# study.json keys the run adds beside the spec
_RUN_KEYS = {
    "reference_values",
    "axis_fields",
    "planned",
    "estimate",
    "runs",
    "search_name",
    "optuna_storage",
}


@dataclass(frozen=True)
class Removal:
    path: Path
    bytes: int
    why: str


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _configs(study_dir: Path) -> list[dict[str, Any]]:
    """Every resolved config the study plans (from study.json) or recorded (trials.parquet)."""
    configs = []
    spec_path = study_dir / "study.json"
    if spec_path.exists():
        spec = {k: v for k, v in json.loads(spec_path.read_text()).items() if k not in _RUN_KEYS}
        try:
            configs += (
                [t.config for t in plan(study_from_dict(spec, validated=True))]
                if spec.get("design") != "search"
                else []
            )
        except (
            StudyError,
            ValueError,
            OSError,
        ):  # a study of an older format: its recorded trials still count
            pass
    trials = study_dir / "trials.parquet"
    if trials.exists():
        import pyarrow.parquet as pq  # here: `plan` imports this module and must start fast

        configs += [
            json.loads(c) for c in pq.read_table(trials, columns=["config_json"]).column(0).to_pylist()
        ]
    return configs


def _statuses(study_dir: Path) -> dict[str, str]:
    from ablations.results import trial_statuses  # here: pyarrow, which `plan` need not import

    return trial_statuses(study_dir)


def _shard_wanted(holds: dict[str, Any], configs: list[dict[str, Any]]) -> bool:
    for config in configs:
        if (
            holds.get("data") == config["data"]
            and holds.get("seed") == config["seed"]
            and holds.get("batch_size") == config["train"]["batch_size"]
            and holds.get("resolution") == config["encoder"]["resolution"]
            and holds.get("num_image_tokens") == config["connector"]["num_image_tokens"]
        ):
            return True
    return False


def removals(results_root: Path) -> list[Removal]:
    from mm1core.data.shards import data_code_version  # here: numpy and pyarrow, which `plan` need not import

    found: list[Removal] = []
    studies = [p.parent for p in sorted(results_root.glob("*/study.json"))]
    configs = [c for study_dir in studies for c in _configs(study_dir)]
    for study_dir in studies:
        statuses = _statuses(study_dir)
        for path in sorted((study_dir / "checkpoints").glob("*")):
            trial_id = path.name.split(".", 1)[0]
            if ".damaged-" in path.name:
                found.append(Removal(path, _size(path), "a damaged file, moved aside"))
            elif statuses.get(trial_id) in ("finished", "diverged"):
                found.append(Removal(path, _size(path), f"checkpoint of a {statuses[trial_id]} trial"))
        for path in sorted((study_dir / "parts").glob("*.damaged-*")):
            found.append(Removal(path, _size(path), "a damaged file, moved aside"))

    cache = stage_cache_dir(results_root)
    wanted = {key for key in map(encoder_stage_key, configs) if key}
    for path in sorted(cache.glob("encoder-*")):
        key = path.name.split(".", 1)[0]
        if ".damaged-" in path.name:
            found.append(Removal(path, _size(path), "a damaged file, moved aside"))
        elif key not in wanted:
            found.append(Removal(path, _size(path), "an encoder no study plans with the current code"))
    current = data_code_version()
    for directory in sorted((cache / "shards").glob("*")):
        described = directory / "key.json"
        holds = json.loads(described.read_text()) if described.exists() else {}
        if holds.get("code") != current:
            found.append(Removal(directory, _size(directory), "data shards of other code than the current"))
        elif not _shard_wanted(holds, configs):
            found.append(Removal(directory, _size(directory), "data shards no study plans"))
    return found


def running_studies(results_root: Path) -> list[str]:
    """Studies whose runner holds their lock now: nothing is removed beside a running study."""
    return [
        path.parent.name for path in sorted(results_root.glob(f"*/{RUN_LOCK}")) if study_runner(path.parent)
    ]


def remove(found: list[Removal]) -> int:
    freed = 0
    for removal in found:
        if removal.path.is_dir():
            shutil.rmtree(removal.path, ignore_errors=True)
        else:
            removal.path.unlink(missing_ok=True)
        freed += removal.bytes
    return freed


def footprint(trials: list[Any]) -> str:
    """What running these trials will store, roughly: a checkpoint each (weights and AdamW's two moments, fp32)
    until `mm1ablate clean`, and one cached encoder per distinct pre-training stage."""
    if not trials:
        return "nothing new"
    checkpoint = sum(_checkpoint_bytes(t.config) for t in trials)
    encoders = {key: t.config for t in trials if (key := encoder_stage_key(t.config))}
    encoder_bytes = sum(4 * _approx_encoder_params(c) for c in encoders.values())
    return (
        f"about {checkpoint / 1e6:,.0f} MB of checkpoints ({len(trials)} trials; `mm1ablate clean` removes them once "
        f"the trials finish) and {encoder_bytes / 1e6:,.1f} MB of pre-trained encoders"
    )


def _checkpoint_bytes(config: dict[str, Any]) -> int:
    """fp32 weights, and AdamW's two moments for what trains (the encoder is frozen unless train.freeze is "all")."""
    encoder = _approx_encoder_params(config)
    rest = _approx_params(config) - encoder
    trained_encoder = config["train"]["freeze"] == "all"
    return 12 * rest + (12 if trained_encoder else 4) * encoder


def _approx_encoder_params(config: dict[str, Any]) -> int:
    enc = config["encoder"]
    return 12 * enc["depth"] * enc["width"] ** 2


def _approx_params(config: dict[str, Any]) -> int:
    """Transformer blocks at 12 width^2 each, the LM's embeddings and the encoder: within tens of percent."""
    lm = config["lm"]
    data = config["data"]
    own_files = any(data.get(f"{source}_files") for source in ("caption", "interleaved", "text"))
    vocab = data["bpe_vocab_size"] if own_files else 100  # the world's own words: under a hundred
    return 12 * lm["depth"] * lm["width"] ** 2 + 2 * vocab * lm["width"] + _approx_encoder_params(config)
