"""A cache for stages that several trials share (e.g. a pre-trained encoder), keyed by everything that determines them.

The key hashes the stage's config together with the source of mm1core, so changing the code never serves a stale
result. Two processes that need the same missing entry at once build it once: the first takes an exclusive lock on
the entry's lock file and builds; the other blocks on the lock, then finds the entry and loads it. Works on any
filesystem with POSIX locks, so the cache can sit on shared storage. Keys need no torch, so the planner can say
which stages are cached without importing it. Entries are checksummed (mm1core.storage): a damaged one is moved
aside and rebuilt, and the planner says it will be.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mm1core.config import encoder_seed
from mm1core.storage import (
    DamagedFile,
    build_once,
    is_intact,
    load_checked,
    quarantine,
    save_checked,
    source_hash,
)

__all__ = ["cache_state", "cached_stage", "code_version", "encoder_stage_key", "stage_key"]


@functools.cache
def code_version() -> str:
    """The version of the whole core: any change to it rebuilds every cached stage."""
    return source_hash(Path(__file__).parent, "**/*.py")[:12]


def stage_key(stage: str, determinants: dict[str, Any]) -> str:
    payload = json.dumps({"stage": stage, "code": code_version(), **determinants}, sort_keys=True)
    return f"{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def encoder_stage_key(config: dict) -> str | None:
    """The cache key of a trial's pre-trained encoder, from its resolved config dict; None if it pre-trains none.

    Everything that determines the encoder: its architecture, its stage config, the world, and its seed (the trial's
    seed enters it unless `encoder_pretrain.seed_from` is "stage": then, as in the paper, one pre-trained encoder
    serves every seed of an arm).
    """
    pretrain = config["encoder_pretrain"]
    if pretrain["loss"] == "none":
        return None
    return stage_key(
        f"encoder-{pretrain['loss']}",
        {
            "encoder": config["encoder"],
            "pretrain": pretrain,
            "world": config["data"]["world"],
            "seed": encoder_seed(config),
        },
    )


def cache_state(cache_dir: Path, key: str) -> str:
    """ "cached" (present and intact), "damaged" (present, will be rebuilt) or "missing"."""
    path = cache_dir / f"{key}.pt"
    if not path.exists():
        return "missing"
    return "cached" if is_intact(path) else "damaged"


def cached_stage(cache_dir: Path, key: str, build: Callable[[Path], Any]) -> tuple[Any, bool]:
    """(the stage's result, whether this call built it); the result is tensors in plain containers.

    build(progress) may checkpoint to `progress`: a builder killed part-way leaves it, and the next one resumes there.
    """
    path = cache_dir / f"{key}.pt"

    def existing() -> Any:
        if not path.exists():
            return None
        try:
            return load_checked(path)
        except DamagedFile as err:
            quarantine(path, str(err))
            return None

    def built() -> Any:
        progress = cache_dir / f"{key}.progress.pt"
        result = build(progress)
        save_checked(result, path)
        progress.unlink(missing_ok=True)
        progress.with_name(progress.name + ".sha256").unlink(missing_ok=True)
        return result

    return build_once(cache_dir / f"{key}.lock", existing, built)
