"""Data generation throughput per core: documents of each source, whole training batches, and shard-cache reads.

    .venv/bin/python bench/data_throughput.py [--resolution 64] [--seconds 3]

One thread (generation is single-threaded Python + Pillow, so this is samples per second per core). Prints a Markdown
table for bench/README.md. "Batch" rows build the `small` preset's 5:5:1 training batches end to end (documents,
rendering, tokenisation, tensors); "shard" rows read the same batches back from the Parquet shard cache.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mm1core.data.render import render_scene
from mm1core.data.shards import ShardCache
from mm1core.data.sources import SOURCES, build_tokenizer, make_batch, source_document
from mm1core.presets import get_preset


def rate(work, seconds: float) -> float:
    """Median items per second over rounds of `work()` (which returns how many items it made)."""
    rates, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        start = time.perf_counter()
        items = work()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = get_preset("small")
    data, resolution, tokens = cfg.data, args.resolution, cfg.connector.num_image_tokens
    tokenizer = build_tokenizer(data)
    rng = random.Random(0)
    print(f"1 thread, resolution {resolution}, {tokens} image tokens per image, world {data.world}\n")
    print("| what | samples/s/core | images/sample |\n|---|---|---|")
    for source in SOURCES:
        docs = [source_document(source, rng, data, num_image_tokens=tokens) for _ in range(50)]
        per_doc = sum(len(d.images) for d in docs) / len(docs)

        def make(source=source) -> int:
            for _ in range(20):
                doc = source_document(source, rng, data, num_image_tokens=tokens)
                tokenizer.encode(doc.text)
                for scene in doc.images:
                    render_scene(scene, data.world, resolution)
            return 20

        print(
            f"| {source} document (generate, render, tokenise) | {rate(make, args.seconds):,.0f} | {per_doc:.1f} |"
        )
    batch_size = cfg.train.batch_size
    step = iter(range(10**9))

    def batch() -> int:
        make_batch(
            data,
            tokenizer,
            batch_size=batch_size,
            resolution=resolution,
            num_image_tokens=tokens,
            seed=0,
            step=next(step),
        )
        return batch_size

    print(f"| training batch, {data.ratio} (batch {batch_size}) | {rate(batch, args.seconds):,.0f} | |")
    with tempfile.TemporaryDirectory() as cache_dir:

        def new_cache() -> ShardCache:
            # A fresh instance holds no shard in memory, as a new trial process would not.
            return ShardCache(
                Path(cache_dir),
                data,
                tokenizer,
                seed=0,
                batch_size=batch_size,
                resolution=resolution,
                num_image_tokens=tokens,
            )

        def build(s: int):
            return make_batch(
                data,
                tokenizer,
                batch_size=batch_size,
                resolution=resolution,
                num_image_tokens=tokens,
                seed=0,
                step=s,
            )

        writer = new_cache()
        steps = writer.steps_per_shard * 2
        for s in range(steps):
            writer.get(s, build)  # write the shards
        fresh = new_cache()
        start = time.perf_counter()
        for s in range(steps):
            fresh.get(s, build)
        read = steps * batch_size / (time.perf_counter() - start)
        print(f"| training batch read from the shard cache (cold process) | {read:,.0f} | |")


if __name__ == "__main__":
    main()
