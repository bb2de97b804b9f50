from __future__ import annotations

import dataclasses
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from mm1core.data.shards import ShardCache, shard_key, trial_batch
from mm1core.data.sources import Batch, build_tokenizer, make_batch
from mm1core.presets import get_preset

STEPS_PER_SHARD = 3
CFG = get_preset("tiny")
SETTINGS = {
    "seed": CFG.seed,
    "batch_size": CFG.train.batch_size,
    "resolution": CFG.encoder.resolution,
    "num_image_tokens": CFG.connector.num_image_tokens,
}


def _cache(cache_dir: Path, **changes) -> ShardCache:
    data = changes.pop("data", CFG.data)
    settings = SETTINGS | changes
    return ShardCache(cache_dir, data, build_tokenizer(data), steps_per_shard=STEPS_PER_SHARD, **settings)


def _build(step: int) -> Batch:
    return make_batch(CFG.data, build_tokenizer(CFG.data), step=step, **SETTINGS)


class _Counted:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, step: int) -> Batch:
        self.calls += 1
        return _build(step)


def _assert_identical(got: Batch, want: Batch) -> None:
    for name in ("tokens", "targets", "images"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), name
    assert got.sources == want.sources
    assert got.images_per_row == want.images_per_row


def test_cached_batches_are_bit_identical_to_fresh_ones(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    steps = [0, 2, 4, 3]  # in the first shard, then a later one, then back to its first step
    for step in steps:
        _assert_identical(cache.get(step, _build), _build(step))
    from_disk = _cache(tmp_path)
    for step in steps:
        _assert_identical(from_disk.get(step, pytest.fail), _build(step))
    assert sorted(p.name for p in cache.directory.glob("*.parquet")) == ["0.parquet", "1.parquet"]
    assert json.loads((cache.directory / "key.json").read_text())["seed"] == CFG.seed


def test_a_shard_is_built_once(tmp_path: Path) -> None:
    build = _Counted()
    cache = _cache(tmp_path)
    for step in range(STEPS_PER_SHARD):
        cache.get(step, build)
    _cache(tmp_path).get(1, build)
    assert build.calls == STEPS_PER_SHARD


def test_key_changes_with_what_determines_the_batches(tmp_path: Path) -> None:
    base = _cache(tmp_path).directory
    variants = [
        {"data": dataclasses.replace(CFG.data, ratio="5:5:1")},
        {"data": dataclasses.replace(CFG.data, world=dataclasses.replace(CFG.data.world, clutter=0))},
        {"seed": CFG.seed + 1},
        {"resolution": 48},
        {"num_image_tokens": 9},
        {"batch_size": 4},
    ]
    directories = {_cache(tmp_path, **v).directory for v in variants}
    assert len(directories) == len(variants) and base not in directories


def test_key_is_stable_across_processes() -> None:
    here, _ = shard_key(CFG.data, build_tokenizer(CFG.data), **SETTINGS)
    code = (
        "from mm1core.data.shards import shard_key; from mm1core.data.sources import build_tokenizer;"
        "from mm1core.presets import get_preset; c = get_preset('tiny');"
        "print(shard_key(c.data, build_tokenizer(c.data), seed=c.seed, batch_size=c.train.batch_size,"
        " resolution=c.encoder.resolution, num_image_tokens=c.connector.num_image_tokens)[0])"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    assert there.stdout.strip() == here


def _get_counting(cache_dir: Path, counter: Path, barrier) -> None:
    def build(step: int) -> Batch:
        with open(counter, "a") as f:
            f.write(f"{step}\n")
        return _build(step)

    barrier.wait()
    _cache(cache_dir).get(0, build)


def test_concurrent_processes_build_a_missing_shard_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    counter = tmp_path / "built"
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_get_counting, args=(tmp_path, counter, barrier)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert counter.read_text().split() == [str(s) for s in range(STEPS_PER_SHARD)]


def test_a_truncated_shard_is_rebuilt(tmp_path: Path) -> None:
    _cache(tmp_path).get(0, _build)
    path = _cache(tmp_path).directory / "0.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    build = _Counted()
    with pytest.warns(UserWarning, match="unreadable"):
        got = _cache(tmp_path).get(1, build)
    assert build.calls == STEPS_PER_SHARD
    _assert_identical(got, _build(1))
    _assert_identical(_cache(tmp_path).get(1, pytest.fail), _build(1))


def test_uint8_pixels_survive_the_float_round_trip() -> None:
    pixels = torch.arange(256, dtype=torch.uint8)
    floats = pixels.float().div_(255.0)
    assert torch.equal((floats * 255).round().to(torch.uint8), pixels)


def test_trial_batch_reads_through_the_cache(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(CFG.data)
    _assert_identical(trial_batch(CFG, tokenizer, 1, cache_dir=tmp_path), trial_batch(CFG, tokenizer, 1))
    assert len(list((tmp_path / "shards").glob("*/0.parquet"))) == 1
