"""Generated training batches cached on disk as Parquet shards, keyed by everything that determines them.

Why: rendering scenes and tokenising documents costs ~15-20% of a CPU training step. A batch is a pure function of
(data config, seed, step) and a few model settings, so trials of a study that share those (arms over the connector,
the encoder's loss, the learning rate, ...) can render each batch once and read it after, and a resumed trial
re-reads its batches instead of re-rendering them.

Layout: `<cache_dir>/shards/<key>/<index>.parquet` holds steps [index * S, (index + 1) * S), one row per sample;
`key.json` beside them says, readably, what the key holds. The key is a sha256 of the canonical JSON of: the
DataConfig (world included), seed, batch size, resolution, image tokens per image, steps per shard S, a hash of the
tokenizer's vocabulary and special ids, and a hash of the source of mm1core/data/*.py, so changing the generator
never serves stale batches.

A row holds its tokens and targets without trailing padding (re-padded to the batch's longest row on reading), its
source, and its images as raw uint8 pixels (n x R x R x 3, in placeholder order): a quarter of float32's size, and
uint8 / 255 is the very op that made the batch's floats, so a cached batch is bit-identical to a fresh one.

Concurrency mirrors stage_cache: the builder of a missing shard holds an exclusive flock on the shard's lock file,
writes to a temporary file and renames it into place, so a partial shard is never visible; a second process wanting
the same shard blocks on the lock, then reads. A shard that cannot be read (say, truncated by a crash) is rebuilt.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mm1core.config import DataConfig, MM1Config
from mm1core.data.sources import Batch, data_files, images_to_tensor, make_batch
from mm1core.data.tokenizer import Tokenizer
from mm1core.storage import atomic_write, atomic_write_text, build_once, source_hash

__all__ = [
    "DEFAULT_STEPS_PER_SHARD",
    "ShardCache",
    "data_code_version",
    "shard_cache",
    "shard_key",
    "trial_batch",
]

DEFAULT_STEPS_PER_SHARD = 25

_SCHEMA = pa.schema(
    [
        ("step", pa.int32()),
        ("tokens", pa.list_(pa.int32())),
        ("targets", pa.list_(pa.int32())),
        ("source", pa.string()),
        ("images", pa.binary()),
        ("num_images", pa.int32()),
    ]
)


@functools.cache
def data_code_version() -> str:
    """The version of the data code alone: a change to the model leaves the shards of batches valid."""
    return source_hash(Path(__file__).parent, "*.py")


def _vocabulary_hash(tokenizer: Tokenizer) -> str:
    vocabulary = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    specials = [tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.image_id]
    return hashlib.sha256(json.dumps([specials, vocabulary]).encode()).hexdigest()


def shard_key(
    data: DataConfig,
    tokenizer: Tokenizer,
    *,
    seed: int,
    batch_size: int,
    resolution: int,
    num_image_tokens: int,
    steps_per_shard: int = DEFAULT_STEPS_PER_SHARD,
) -> tuple[str, dict]:
    """(the key, what it holds)."""
    holds = {
        "data": dataclasses.asdict(data),
        "seed": seed,
        "batch_size": batch_size,
        "resolution": resolution,
        "num_image_tokens": num_image_tokens,
        "steps_per_shard": steps_per_shard,
        "tokenizer": _vocabulary_hash(tokenizer),
        "code": data_code_version(),
    }
    canonical = json.dumps(holds, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest(), holds


@dataclasses.dataclass
class _Shard:
    first_row: np.ndarray  # (S + 1,): step s of the shard is rows [first_row[s], first_row[s + 1])
    token_offsets: np.ndarray
    tokens: np.ndarray
    targets: np.ndarray
    sources: list[str]
    images: pa.BinaryArray
    num_images: np.ndarray


class ShardCache:
    """Batches of one (data config, seed, batch size, resolution, image tokens, tokenizer), S steps per file."""

    def __init__(
        self,
        cache_dir: Path,
        data: DataConfig,
        tokenizer: Tokenizer,
        *,
        seed: int,
        batch_size: int,
        resolution: int,
        num_image_tokens: int,
        steps_per_shard: int = DEFAULT_STEPS_PER_SHARD,
    ) -> None:
        self.key, self._holds = shard_key(
            data,
            tokenizer,
            seed=seed,
            batch_size=batch_size,
            resolution=resolution,
            num_image_tokens=num_image_tokens,
            steps_per_shard=steps_per_shard,
        )
        self.directory = Path(cache_dir) / "shards" / self.key
        self.steps_per_shard = steps_per_shard
        self._batch_size = batch_size
        self._resolution = resolution
        self._pad_id = tokenizer.pad_id
        # Consecutive steps mostly fall in the same shard: keeping it saves re-reading the file every step.
        self._loaded: tuple[int, _Shard] | None = None

    def get(self, step: int, build_step: Callable[[int], Batch]) -> Batch:
        """The batch at `step`, from its shard; a missing shard is built first with build_step (all its steps)."""
        index, offset = divmod(step, self.steps_per_shard)
        if self._loaded is None or self._loaded[0] != index:
            self._loaded = (index, self._shard(index, build_step))
        return self._batch(self._loaded[1], offset)

    def _shard(self, index: int, build_step: Callable[[int], Batch]) -> _Shard:
        path = self.directory / f"{index}.parquet"

        def built() -> _Shard:
            self._describe_key()
            first = index * self.steps_per_shard
            steps = range(first, first + self.steps_per_shard)
            atomic_write(path, lambda tmp: pq.write_table(self._table(steps, build_step), tmp))
            # Read back what was written, so the run that builds a shard sees exactly what later runs read.
            shard = self._read(path)
            if shard is None:
                raise RuntimeError(f"the shard just written to {path} cannot be read back")
            return shard

        return build_once(
            self.directory / f"{index}.lock", lambda: self._read(path) if path.exists() else None, built
        )[0]

    def _describe_key(self) -> None:
        path = self.directory / "key.json"
        if not path.exists():
            text = json.dumps({"key": self.key, **self._holds}, indent=2, sort_keys=True)
            atomic_write_text(path, text + "\n")

    def _table(self, steps: range, build_step: Callable[[int], Batch]) -> pa.Table:
        columns: dict[str, list] = {name: [] for name in _SCHEMA.names}
        for step in steps:
            batch = build_step(step)
            pixels = (batch.images * 255).round().to(torch.uint8)
            if not torch.equal(pixels.float().div_(255.0), batch.images):
                # Images not made from uint8 pixels would come back altered from the cache.
                raise ValueError(
                    f"the images of step {step} are not uint8 pixels / 255; they cannot be cached"
                )
            pixels = pixels.permute(0, 2, 3, 1).contiguous().numpy()
            keep = (batch.tokens != self._pad_id) | (batch.targets != -100)
            lengths = (keep * torch.arange(1, keep.shape[1] + 1)).amax(dim=1)
            # Trailing padding is restored by re-padding to the longest row, so that row must keep its full width.
            lengths[lengths.argmax()] = batch.tokens.shape[1]
            first_image = 0
            for row, (length, n) in enumerate(zip(lengths.tolist(), batch.images_per_row, strict=True)):
                columns["step"].append(step)
                columns["tokens"].append(batch.tokens[row, :length].tolist())
                columns["targets"].append(batch.targets[row, :length].tolist())
                columns["source"].append(batch.sources[row])
                columns["images"].append(pixels[first_image : first_image + n].tobytes())
                columns["num_images"].append(n)
                first_image += n
        return pa.Table.from_pydict(columns, schema=_SCHEMA)

    def _read(self, path: Path) -> _Shard | None:
        """The shard at path; None (with a warning) if it cannot be read or does not hold this cache's rows."""
        try:
            table = pq.read_table(path, schema=_SCHEMA)
        except (OSError, pa.ArrowException) as err:
            warnings.warn(f"rebuilding unreadable batch shard {path}: {err}", stacklevel=2)
            return None
        if table.num_rows != self.steps_per_shard * self._batch_size:
            warnings.warn(f"rebuilding batch shard {path}: it holds {table.num_rows} rows", stacklevel=2)
            return None
        tokens = table.column("tokens").combine_chunks()
        targets = table.column("targets").combine_chunks()
        return _Shard(
            first_row=np.arange(self.steps_per_shard + 1) * self._batch_size,
            token_offsets=tokens.offsets.to_numpy(),
            tokens=tokens.values.to_numpy(),
            targets=targets.values.to_numpy(),
            sources=table.column("source").to_pylist(),
            images=table.column("images").combine_chunks(),
            num_images=table.column("num_images").to_numpy(),
        )

    def _batch(self, shard: _Shard, offset: int) -> Batch:
        rows = range(shard.first_row[offset], shard.first_row[offset + 1])
        bounds = shard.token_offsets[rows.start : rows.stop + 1]
        starts, ends = bounds[:-1], bounds[1:]
        width = int((ends - starts).max())
        tokens = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        targets = np.full((len(rows), width), -100, dtype=np.int64)
        for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
            tokens[i, : end - start] = shard.tokens[start:end]
            targets[i, : end - start] = shard.targets[start:end]
        r = self._resolution
        pixels = b"".join(shard.images[rows.start : rows.stop].to_pylist())
        images = list(np.frombuffer(pixels, dtype=np.uint8).reshape(-1, r, r, 3))
        return Batch(
            tokens=torch.from_numpy(tokens),
            targets=torch.from_numpy(targets),
            images=images_to_tensor(images, r),
            sources=shard.sources[rows.start : rows.stop],
            images_per_row=shard.num_images[rows.start : rows.stop].tolist(),
        )


@functools.lru_cache(maxsize=2)
def shard_cache(
    cache_dir: Path,
    data: DataConfig,
    tokenizer: Tokenizer,
    *,
    seed: int,
    batch_size: int,
    resolution: int,
    num_image_tokens: int,
) -> ShardCache:
    """One ShardCache per process and setting, so the shard it holds in memory outlives a single step's call."""
    return ShardCache(
        cache_dir,
        data,
        tokenizer,
        seed=seed,
        batch_size=batch_size,
        resolution=resolution,
        num_image_tokens=num_image_tokens,
    )


def trial_batch(cfg: MM1Config, tokenizer: Tokenizer, step: int, *, cache_dir: Path | None = None) -> Batch:
    """The multimodal stage's batch at `step` for a trial's config.

    cache_dir: read generated batches from Parquet shards there (shards.py), building missing ones; a study that
    brings its own data files is not cached (its documents are read from those files already).
    """
    settings = {
        "batch_size": cfg.train.batch_size,
        "resolution": cfg.encoder.resolution,
        "num_image_tokens": cfg.connector.num_image_tokens,
        "seed": cfg.seed,
    }
    if cache_dir is None or data_files(cfg.data):
        return make_batch(cfg.data, tokenizer, step=step, **settings)
    cache = shard_cache(Path(cache_dir), cfg.data, tokenizer, **settings)
    return cache.get(step, lambda s: make_batch(cfg.data, tokenizer, step=s, **settings))
