"""Users' own data through a study: validated before anything runs, then trained on with the same mixture."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pyarrow.parquet as pq
from conftest import run_cli
from PIL import Image

from mm1core.config import apply_overrides, config_from_dict, config_to_dict
from mm1core.data.byo import write_documents
from mm1core.data.shards import trial_batch
from mm1core.data.sources import build_tokenizer, make_batch
from mm1core.pipeline import run_trial
from mm1core.presets import get_preset

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 170, 30)}


def _png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), COLORS[color]).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_data(root: Path) -> dict[str, Path]:
    rng = random.Random(0)
    names = list(COLORS)
    captions = [{"image": _png(c), "caption": f"a photo of something {c}"} for c in rng.choices(names, k=30)]
    pages = [
        {
            "items": [
                x for c in rng.choices(names, k=3) for x in ({"image": _png(c)}, {"text": f"this one is {c}"})
            ]
        }
        for _ in range(10)
    ]
    texts = [{"text": f"the sky is {c} today and tomorrow"} for c in rng.choices(names, k=20)]
    paths = {"caption": root / "captions.parquet", "interleaved": root / "pages", "text": root / "text.arrow"}
    paths["interleaved"].mkdir()
    write_documents(paths["caption"], "caption", captions)
    write_documents(paths["interleaved"] / "part-0.parquet", "interleaved", pages[:5])
    write_documents(paths["interleaved"] / "part-1.parquet", "interleaved", pages[5:])
    write_documents(paths["text"], "text", texts)
    return paths


def test_a_trial_trains_on_users_files_with_a_bpe_tokenizer(tmp_path):
    paths = _write_data(tmp_path)
    tree = apply_overrides(
        config_to_dict(get_preset("tiny")),
        {
            "data.ratio": "1:1:1",
            "data.caption_files": str(paths["caption"]),
            "data.interleaved_files": str(paths["interleaved"]),
            "data.text_files": str(paths["text"]),
            "data.bpe_vocab_size": 300,
            # A 300-token BPE spends several tokens per world word: rotary positions have no table to outgrow.
            "lm.positions": "rope",
        },
    )
    cfg = config_from_dict(tree)
    tokenizer = build_tokenizer(cfg.data, tmp_path / "cache")
    assert tokenizer.vocab_size == 300
    batch = trial_batch(cfg, tokenizer, 0)
    assert sorted(set(batch.sources)) == ["caption", "interleaved", "text"]
    texts = [tokenizer.decode([t for t in row.tolist() if t > 3]) for row in batch.tokens]
    assert any("a photo of something" in t for t in texts) and any("the sky is" in t for t in texts)
    assert any("this one is" in t for t in texts)
    # Solid-colour images come through decoded and resized to the encoder's resolution.
    assert batch.images.shape[1:] == (3, 32, 32) and batch.images.shape[0] == sum(batch.images_per_row)
    # A long page of the user's is cut at an image boundary to fit, never mid-image.
    short = config_from_dict(apply_overrides(tree, {"data.max_seq_len": 30, "eval.shots": [0]}))
    for step in range(5):
        cut = make_batch(
            short.data, tokenizer, batch_size=8, resolution=32, num_image_tokens=4, seed=0, step=step
        )
        assert cut.tokens.shape[1] <= 30
        assert int((cut.tokens == tokenizer.image_id).sum()) == 4 * cut.images.shape[0]
    outcome = run_trial(cfg, cache_dir=tmp_path / "cache")
    assert outcome.metrics["heldout/loss"] > 0 and "8shot/vqa" in outcome.metrics


def test_malformed_data_stops_the_study_before_it_runs(tmp_path, write_study):
    paths = _write_data(tmp_path)
    table = pq.read_table(paths["caption"])
    rows = table.to_pylist()
    rows[3]["image"] = b"not an image"
    write_documents(tmp_path / "broken.parquet", "caption", rows)
    study = write_study(
        """
        name: byo
        reference:
          preset: tiny
          overrides:
            data.caption_files: broken.parquet
        axes:
          - name: data.text_files
            values: [text.arrow, missing.parquet]
        seeds: [0]
        """
    )
    result = run_cli("plan", str(study), cwd=tmp_path)
    assert result.returncode != 0
    assert (
        "study.yaml:5:" in result.stderr
        and "broken.parquet: row 3 (0-based): column 'image'" in result.stderr
    )
    assert "study.yaml:8:" in result.stderr and "missing.parquet" in result.stderr
    # Relative paths are the study file's: planning from elsewhere finds the same files.
    (tmp_path / "broken.parquet").unlink()
    write_documents(tmp_path / "broken.parquet", "caption", table.to_pylist())
    fixed = study.read_text().replace("missing.parquet", "text.arrow")
    study.write_text(fixed.replace("values: [text.arrow, text.arrow]", "values: [text.arrow]"))
    result = run_cli("plan", str(study), cwd=tmp_path.parent)
    assert result.returncode == 0, result.stderr
