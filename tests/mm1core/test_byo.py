"""Bring-your-own data files (Parquet and Arrow IPC) and the byte-level BPE tokenizer trained on them."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from mm1core.data import bpe
from mm1core.data.bpe import BPETokenizer, tokenizer_for_files
from mm1core.data.byo import (
    MAX_PROBLEMS_PER_FILE,
    DataFileError,
    count_rows,
    decode_image,
    expand_paths,
    read_documents,
    read_texts,
    validate_files,
    write_documents,
)
from mm1core.data.documents import Document
from mm1core.data.sources import encode_document

RED, GREEN, BLUE = (255, 0, 0), (0, 160, 0), (0, 0, 255)


def png(color: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def halves_png() -> bytes:
    """Red left half, blue right half, twice as wide as tall: a square resize must keep both halves."""
    image = Image.new("RGB", (48, 24), RED)
    ImageDraw.Draw(image).rectangle((24, 0, 47, 23), fill=BLUE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


RECORDS = {
    "caption": [
        {"image": png(RED), "caption": "a red  square", "id": 7},  # extra key and a double space
        {"image": png(BLUE), "caption": "a blue square"},
    ],
    "interleaved": [
        {"items": [{"text": "first", "image": None}, {"text": None, "image": png(GREEN)}, {"text": "then"}]},
        {"items": [{"image": png(RED)}, {"image": png(BLUE)}, {"text": "two\nimages"}]},
    ],
    "text": [{"text": "just words here"}, {"text": "more words"}],
}
EXPECTED = {
    "caption": [
        Document("<image> a red square", (png(RED),), "caption"),
        Document("<image> a blue square", (png(BLUE),), "caption"),
    ],
    "interleaved": [
        Document("first <image> then", (png(GREEN),), "interleaved"),
        Document("<image> <image> two images", (png(RED), png(BLUE)), "interleaved"),
    ],
    "text": [Document("just words here", (), "text"), Document("more words", (), "text")],
}
COLORS = {"caption": [[RED], [BLUE]], "interleaved": [[GREEN], [RED, BLUE]], "text": [[], []]}


@pytest.mark.parametrize("suffix", [".parquet", ".arrow", ".feather"])
@pytest.mark.parametrize("kind", ["caption", "interleaved", "text"])
def test_round_trip(tmp_path: Path, kind: str, suffix: str) -> None:
    path = tmp_path / f"{kind}{suffix}"
    write_documents(path, kind, RECORDS[kind])
    assert validate_files([path], kind) == []
    assert count_rows(path) == 2
    documents = read_documents([path], kind)
    assert documents == EXPECTED[kind]
    for document, colors in zip(documents, COLORS[kind], strict=True):
        for data, color in zip(document.images, colors, strict=True):
            pixels = decode_image(data, 16)
            assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
            assert (pixels == color).all()


def test_texts_come_without_images(tmp_path: Path) -> None:
    for kind in RECORDS:
        write_documents(tmp_path / f"{kind}.parquet", kind, RECORDS[kind])
    assert list(read_texts(tmp_path / "caption.parquet", "caption")) == ["a red square", "a blue square"]
    assert list(read_texts(tmp_path / "interleaved.parquet", "interleaved")) == [
        "first",
        "then",
        "two images",
    ]
    assert list(read_texts(tmp_path / "text.parquet", "text")) == ["just words here", "more words"]


def test_arrow_stream_format_and_large_types(tmp_path: Path) -> None:
    """Hugging Face datasets writes the IPC stream format into .arrow files, with large_string sometimes."""
    table = pa.table({"text": pa.array(["one two", "three"], pa.large_string()), "n": [1, 2]})
    path = tmp_path / "stream.arrow"
    with pa.ipc.new_stream(path, table.schema) as writer:
        writer.write_table(table)
    assert validate_files(path, "text") == []
    assert count_rows(path) == 2
    assert [d.text for d in read_documents(path, "text")] == ["one two", "three"]


def test_square_resize_keeps_all_content() -> None:
    pixels = decode_image(halves_png(), 8)
    assert (pixels[:, 0] == RED).all() and (pixels[:, -1] == BLUE).all()


def test_transparent_pixels_are_shown_on_white() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buffer, format="PNG")
    assert (decode_image(buffer.getvalue(), 4) == 255).all()


def test_jpeg_decodes() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), GREEN).save(buffer, format="JPEG")
    pixels = decode_image(buffer.getvalue(), 12).astype(int)
    assert np.abs(pixels - GREEN).max() <= 3


def test_decode_image_error_has_no_context_but_says_why() -> None:
    with pytest.raises(DataFileError, match=r"^cannot decode image bytes \(cannot identify image file\)$"):
        decode_image(b"not an image", 8)


def _one_problem(path: Path, kind: str) -> str:
    problems = validate_files([path], kind)
    assert len(problems) == 1, problems
    with pytest.raises(DataFileError) as raised:
        read_documents([path], kind)
    assert str(raised.value) == problems[0]
    return problems[0]


def test_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "captions.parquet"
    pq.write_table(pa.table({"image": [png(RED)], "text": ["a caption in the wrong column"]}), path)
    assert _one_problem(path, "caption") == (
        f"{path}: column 'caption': missing (columns found: 'image', 'text')"
    )


def test_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "captions.arrow"
    table = pa.table({"image": [png(RED)], "caption": [17]})
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)
    assert _one_problem(path, "caption") == f"{path}: column 'caption': expected type string, found int64"


def test_null_caption(tmp_path: Path) -> None:
    path = tmp_path / "captions.parquet"
    write_documents(
        path, "caption", [{"image": png(RED), "caption": "fine"}, {"image": png(RED), "caption": None}]
    )
    assert _one_problem(path, "caption") == f"{path}: row 1 (0-based): column 'caption': null value"


def test_undecodable_image(tmp_path: Path) -> None:
    path = tmp_path / "captions.parquet"
    records = [{"image": png(RED), "caption": "ok"}] * 17 + [{"image": b"\x89PNG garbage", "caption": "bad"}]
    write_documents(path, "caption", records)
    assert _one_problem(path, "caption") == (
        f"{path}: row 17 (0-based): column 'image': cannot decode image bytes (cannot identify image file)"
    )


def test_truncated_image_is_caught_by_validation(tmp_path: Path) -> None:
    """A valid header with cut-off pixel data passes a header check; validation decodes every image."""
    path = tmp_path / "captions.parquet"
    image = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(image, format="PNG")
    write_documents(path, "caption", [{"image": image.getvalue()[:200], "caption": "cut off"}])
    (problem,) = validate_files(path, "caption")
    assert problem.startswith(f"{path}: row 0 (0-based): column 'image': cannot decode image bytes (")


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"text": "both", "image": png(RED)}, "item 1: has both text and image"),
        ({"text": None, "image": None}, "item 1: has neither text nor image"),
        ({"text": "  "}, "item 1: empty text"),
        ({"text": "a literal <image> word"}, "item 1: contains the reserved token '<image>'"),
    ],
)
def test_bad_interleaved_item(tmp_path: Path, item: dict, reason: str) -> None:
    path = tmp_path / "docs.parquet"
    write_documents(path, "interleaved", [{"items": [{"text": "fine"}]}, {"items": [{"text": "ok"}, item]}])
    assert _one_problem(path, "interleaved") == f"{path}: row 1 (0-based): column 'items': {reason}"


def test_document_without_items(tmp_path: Path) -> None:
    path = tmp_path / "docs.arrow"
    write_documents(path, "interleaved", [{"items": []}])
    assert (
        _one_problem(path, "interleaved") == f"{path}: row 0 (0-based): column 'items': document has no items"
    )


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "captions.parquet"
    write_documents(path, "caption", [{"image": b"junk", "caption": ""}])
    assert validate_files(path, "caption") == [
        f"{path}: row 0 (0-based): column 'image': cannot decode image bytes (cannot identify image file)",
        f"{path}: row 0 (0-based): column 'caption': empty text",
    ]


def test_problems_are_capped_per_file(tmp_path: Path) -> None:
    path = tmp_path / "texts.parquet"
    write_documents(path, "text", [{"text": None}] * (MAX_PROBLEMS_PER_FILE + 13) + [{"text": "fine"}])
    problems = validate_files(path, "text")
    assert len(problems) == MAX_PROBLEMS_PER_FILE + 1
    assert problems[0] == f"{path}: row 0 (0-based): column 'text': null value"
    assert problems[-1] == f"{path}: and 13 more problems"


def test_unknown_kind_missing_file_and_unreadable_file(tmp_path: Path) -> None:
    assert validate_files([], "video") == ["unknown kind 'video'; known: caption, interleaved, text"]
    assert validate_files([], "text") == ["no data files given"]
    missing = tmp_path / "nope.parquet"
    assert validate_files([missing], "text") == [f"{missing}: no such file"]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    (problem,) = validate_files([broken], "text")
    assert problem.startswith(f"{broken}: cannot read file (")
    with pytest.raises(DataFileError, match=f"^{broken}: cannot read file"):
        read_documents([broken], "text")
    with pytest.raises(ValueError, match="unknown kind"):
        read_documents([], "video")


def test_directories_and_globs_expand_in_sorted_order(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "part").mkdir(parents=True)
    write_documents(data / "b.parquet", "text", [{"text": "b"}])
    write_documents(data / "a.arrow", "text", [{"text": "a"}])
    write_documents(data / "part" / "c.feather", "text", [{"text": "c"}])
    (data / "_SUCCESS").touch()
    (data / "README.md").write_text("not data")
    write_documents(data / "_tmp.parquet", "text", [{"text": "skipped"}])

    assert expand_paths(data) == [data / "a.arrow", data / "b.parquet", data / "part" / "c.feather"]
    assert [d.text for d in read_documents(data, "text")] == ["a", "b", "c"]
    # A glob means what it says: only directory expansion skips bookkeeping names.
    assert expand_paths(str(data / "*.parquet")) == [data / "_tmp.parquet", data / "b.parquet"]
    assert expand_paths([str(data / "**" / "*.feather"), data / "a.arrow"]) == [
        data / "part" / "c.feather",
        data / "a.arrow",
    ]
    assert count_rows(data) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    assert validate_files([empty, str(tmp_path / "*.parquet")], "text") == [
        f"{empty}: no .parquet, .arrow, .feather files found",
        f"{tmp_path / '*.parquet'}: no .parquet, .arrow, .feather files found",
    ]


def test_row_slice_spans_files(tmp_path: Path) -> None:
    write_documents(tmp_path / "a.parquet", "text", [{"text": f"a{i}"} for i in range(300)])
    write_documents(tmp_path / "b.arrow", "text", [{"text": f"b{i}"} for i in range(5)])
    texts = [d.text for d in read_documents(tmp_path, "text", rows=slice(298, 302))]
    assert texts == ["a298", "a299", "b0", "b1"]
    assert [d.text for d in read_documents(tmp_path, "text", rows=slice(-2, None))] == ["b3", "b4"]
    with pytest.raises(ValueError, match="contiguous"):
        read_documents(tmp_path, "text", rows=slice(0, 10, 2))


# --- BPE ---------------------------------------------------------------------------------------------------------

COLOURS = ["red", "green", "blue", "yellow", "purple"]
SHAPES = ["circle", "square", "triangle", "star"]
SENTENCES = [
    f"the sign at {i % 9} reads {i * 37 % 1000} . a {COLOURS[i % 5]} {SHAPES[i % 4]} sits near the {SHAPES[i % 3]}"
    for i in range(300)
]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tokenizer(no_network: None) -> BPETokenizer:
    return BPETokenizer.train(SENTENCES, vocab_size=400)


def test_bpe_special_tokens_match_word_tokenizer(tokenizer: BPETokenizer) -> None:
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.image_id) == (0, 1, 2, 3)
    assert 260 < tokenizer.vocab_size <= 400


def test_bpe_image_placeholder_is_one_token(tokenizer: BPETokenizer) -> None:
    for text in ["<image> the sign", "the sign <image> a red star <image> <image> .", "<image>"]:
        ids = tokenizer.encode(text)
        assert ids.count(tokenizer.image_id) == text.split().count("<image>")
        assert tokenizer.decode(ids) == text
    inputs, targets = encode_document("<image> a red circle", tokenizer, num_image_tokens=4, max_seq_len=64)
    assert inputs[:5] == [tokenizer.bos_id] + [tokenizer.image_id] * 4
    assert targets[:4] == [-100] * 4


@pytest.mark.parametrize(
    "text",
    [SENTENCES[5], "words the tokenizer never saw: zebra, ÄÖÜ 日本語 🙂", "  two  spaces\nand a newline "],
)
def test_bpe_round_trips_plain_text(tokenizer: BPETokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_bpe_compresses_what_it_was_trained_on(tokenizer: BPETokenizer) -> None:
    assert len(tokenizer.encode(SENTENCES[7])) < len(SENTENCES[7].split()) * 2


def test_bpe_save_load_gives_identical_ids(tokenizer: BPETokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tok" / "bpe.json"
    tokenizer.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.vocab_size == tokenizer.vocab_size
    for text in [*SENTENCES[:20], "<image> unseen words"]:
        assert loaded.encode(text) == tokenizer.encode(text)
    assert os.listdir(path.parent) == ["bpe.json"]  # no temporary file left behind


def test_bpe_rejects_too_small_vocabulary() -> None:
    with pytest.raises(ValueError, match="at least 260"):
        BPETokenizer.train(SENTENCES, vocab_size=100)


def test_tokenizer_for_files_trains_once_and_caches(
    tmp_path: Path, no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_documents(
        tmp_path / "captions.parquet", "caption", [{"image": png(RED), "caption": s} for s in SENTENCES]
    )
    write_documents(tmp_path / "docs.arrow", "interleaved", [{"items": [{"text": "interleaved words"}]}])
    paths = {"caption": [tmp_path / "captions.parquet"], "interleaved": [tmp_path / "docs.arrow"]}
    cache = tmp_path / "cache"
    trained = []
    train = BPETokenizer.train.__func__

    def counting_train(cls, texts, vocab_size):
        trained.append(vocab_size)
        return train(cls, texts, vocab_size)

    monkeypatch.setattr(bpe.BPETokenizer, "train", classmethod(counting_train))
    first = tokenizer_for_files(paths, 300, cache)
    second = tokenizer_for_files(paths, 300, cache)
    assert trained == [300]
    assert second.encode(SENTENCES[3]) == first.encode(SENTENCES[3])
    assert len(list(cache.iterdir())) == 1

    tokenizer_for_files(paths, 320, cache)  # a different vocabulary size is a different tokenizer
    assert trained == [300, 320]
    write_documents(tmp_path / "docs.arrow", "interleaved", [{"items": [{"text": "changed words"}]}])
    tokenizer_for_files(paths, 300, cache)  # so is a changed file
    assert trained == [300, 320, 300]
