"""Files that survive a kill and say when they are damaged: atomic writes, checksummed tensors, quarantine, things
built once by whichever process gets there first, and the hash of the code that made them.

Every file the project writes goes to a temporary name beside its destination and is renamed into place, so a kill
mid-write leaves the previous file or none, never a torn one. Tensor files (cached stages, checkpoints) also get a
`<name>.sha256` written after them: a file whose bytes no longer match (truncated by a full disk, damaged on shared
storage, or from before checksums) is not loaded but moved aside with a message and rebuilt. Loads use
`weights_only=True`, so a cache file can hold tensors and plain containers, never code that runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

__all__ = [
    "DamagedFile",
    "atomic_write",
    "append_jsonl",
    "atomic_write_text",
    "build_once",
    "is_intact",
    "load_checked",
    "quarantine",
    "read_jsonl",
    "save_checked",
    "source_hash",
]


class DamagedFile(RuntimeError):
    """A checksummed file whose bytes do not match its checksum, or that has none."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) fills a temporary file beside `path`, which then replaces `path` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(
        f".{path.name}.{os.getpid()}.tmp"
    )  # per process: two writers never share a temp file
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_jsonl(path: Path, record: Any) -> None:
    """One JSON line appended: a log that a kill can cut short only in its last line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[Any]:
    """The records of an append_jsonl log; a line a kill cut short is skipped (what wrote it writes it again)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_intact(path: Path) -> bool:
    """The file exists and matches the checksum written with it."""
    sidecar = _sidecar(path)
    if not path.exists() or not sidecar.exists():
        return False
    return sidecar.read_text().strip() == _digest(path)


def quarantine(path: Path, reason: str, out: TextIO | None = None) -> Path:
    """Move a damaged file (and its checksum) aside, kept for inspection, and say so."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}-{os.getpid()}")
    os.replace(path, target)
    _sidecar(path).unlink(missing_ok=True)
    print(
        f"[mm1ablate] {path} is damaged ({reason}): moved to {target.name}, it will be rebuilt",
        file=out or sys.stderr,
        flush=True,
    )
    return target


def save_checked(obj: Any, path: Path) -> None:
    import torch  # here, not at the top: the planner checks files with is_intact and never imports torch

    def write(tmp: Path) -> None:
        torch.save(obj, tmp)

    atomic_write(path, write)
    digest = _digest(path)
    atomic_write_text(_sidecar(path), digest + "\n")


def load_checked(path: Path, *, map_location: Any = "cpu") -> Any:
    """The object saved by save_checked; raises DamagedFile when the bytes are not the ones saved."""
    import torch  # the driver and the planner use this module's writers without loading torch

    sidecar = _sidecar(path)
    if not sidecar.exists():
        raise DamagedFile("no checksum beside it")
    expected, actual = sidecar.read_text().strip(), _digest(path)
    if expected != actual:
        raise DamagedFile(f"sha256 {actual[:12]} where {expected[:12]} was written")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (
        Exception
    ) as err:  # matching bytes that are not tensors in plain containers: never unpickled further
        raise DamagedFile(
            f"not a tensor file that loads without running code ({type(err).__name__})"
        ) from err


def build_once(lock: Path, existing: Callable[[], T | None], build: Callable[[], T]) -> tuple[T, bool]:
    """(what `existing()` finds, or else what `build()` makes; whether this call built it), with every process that
    asks at once waiting on one lock file: one builds, the others then find its result."""
    found = existing()
    if found is not None:
        return found, False
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        found = existing()
        if found is not None:
            return found, False
        return build(), True


def source_hash(root: Path, pattern: str) -> str:
    """SHA-256 of the files under `root` that match `pattern` (names and bytes, in sorted order): the version of the
    code that made a cached thing, so a change to that code never reuses it."""
    digest = hashlib.sha256()
    for path in sorted(root.glob(pattern)):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
