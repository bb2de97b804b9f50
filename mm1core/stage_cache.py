"""A cache for stages that several trials share (e.g. a pre-trained encoder), keyed by everything that determines them.

The key hashes the stage's config together with the source of mm1core, so changing the code never serves a stale
result. Two processes that need the same missing entry at once build it once: the first takes an exclusive lock on
the entry's lock file and builds; the other blocks on the lock, then finds the entry and loads it. Works on any
filesystem with POSIX locks, so the cache can sit on shared storage.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["code_version", "stage_key", "cached_stage", "is_cached"]


@functools.cache
def code_version() -> str:
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def stage_key(stage: str, determinants: dict[str, Any]) -> str:
    payload = json.dumps({"stage": stage, "code": code_version(), **determinants}, sort_keys=True)
    return f"{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def is_cached(cache_dir: Path, key: str) -> bool:
    return (cache_dir / f"{key}.pt").exists()


def cached_stage(
    cache_dir: Path, key: str, build: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """(the stage's result, whether this call built it). `build` returns a torch-serialisable dict."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.pt"
    with open(cache_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=False), False
        result = build()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(result, tmp)
        os.replace(tmp, path)
        return result, True
