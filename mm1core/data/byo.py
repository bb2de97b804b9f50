"""Bring-your-own data: Parquet and Arrow IPC files in one of three schemas, read into `Document`s.

Schemas (extra columns, and extra fields in the item struct, are ignored; large and view variants of string and
binary are accepted):

- caption:     image: binary (encoded PNG/JPEG/...), caption: string
- interleaved: items: list<struct<text: string, image: binary>>; each item has exactly one of text and image set
- text:        text: string

`validate_files` reports every problem before a study starts, so a malformed file never stops one halfway;
`read_documents` and `read_texts` raise on the first problem. Errors name the file, the row (0-based, within the
file) and the column. See docs/data-formats.md.
"""

from __future__ import annotations

import glob
import io
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError

from mm1core.config import FILE_TASK_KINDS
from mm1core.data.documents import IMAGE_PLACEHOLDER, Document
from mm1core.data.tokenizer import BOS, EOS, IMAGE, PAD

__all__ = [
    "KINDS",
    "MAX_PROBLEMS_PER_FILE",
    "SCHEMAS",
    "SUFFIXES",
    "TASK_OPTIONAL_COLUMNS",
    "TASK_SCHEMAS",
    "DataFileError",
    "Paths",
    "count_rows",
    "decode_image",
    "expand_paths",
    "read_documents",
    "read_task_rows",
    "read_texts",
    "validate_files",
    "validate_task_files",
    "write_documents",
]

_ITEM = pa.struct([("text", pa.string()), ("image", pa.binary())])
SCHEMAS: dict[str, pa.Schema] = {
    "caption": pa.schema([("image", pa.binary()), ("caption", pa.string())]),
    "interleaved": pa.schema([("items", pa.list_(_ITEM))]),
    "text": pa.schema([("text", pa.string())]),
}
KINDS = tuple(SCHEMAS)
# Evaluation task files (EvalTaskConfig.kind -> its schema): the items a file task scores, and its demonstrations.
_ARROW_TYPES = {"binary": pa.binary(), "string": pa.string(), "list<string>": pa.list_(pa.string())}
TASK_SCHEMAS: dict[str, pa.Schema] = {
    kind: pa.schema([(column, _ARROW_TYPES[type_]) for column, type_ in spec.columns])
    for kind, spec in FILE_TASK_KINDS.items()
}
# Optional string columns of a task file: which split a row belongs to, and a category its scores are also broken
# down by.
TASK_OPTIONAL_COLUMNS = ("split", "category")
SUFFIXES = (".parquet", ".arrow", ".feather")
# The columns that carry text: training a tokenizer then never reads a caption file's image bytes.
_TEXT_COLUMNS = {"caption": ("caption",), "interleaved": ("items",), "text": ("text",)}
# Rows are read this many at a time, so that a file of large images never has to fit in memory at once.
_BATCH_ROWS = 256
MAX_PROBLEMS_PER_FILE = 20
_STRING_TYPES = {"string", "large_string", "string_view"}
_BINARY_TYPES = {"binary", "large_binary", "binary_view"}
# Text containing a special token would be encoded as that token (or, for <image>, break the placeholder count).
_RESERVED = (PAD, BOS, EOS, IMAGE)

Paths = str | Path | Iterable[str | Path]


class DataFileError(ValueError):
    """A problem in a data file; the message reads `file: row N (0-based): column 'c': reason`.

    decode_image raises it without context, which it does not know.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.reason, self.path, self.row, self.column = reason, path, row, column
        parts = [] if path is None else [str(path)]
        parts += [] if row is None else [f"row {row} (0-based)"]
        parts += [] if column is None else [f"column {column!r}"]
        super().__init__(": ".join([*parts, reason]))


# --- files -------------------------------------------------------------------------------------------------------


def _files_in(directory: Path) -> list[Path]:
    # Names starting with "." or "_" are Spark/Hive bookkeeping (_SUCCESS, .crc), skipped as pyarrow does.
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and p.suffix in SUFFIXES
        and not any(part.startswith((".", "_")) for part in p.relative_to(directory).parts)
    )


def _expand(paths: Paths) -> tuple[list[Path], list[DataFileError]]:
    entries = [paths] if isinstance(paths, str | Path) else list(paths)
    files: list[Path] = []
    problems: list[DataFileError] = []
    for entry in map(Path, entries):
        if entry.is_dir():
            found = _files_in(entry)
        elif not entry.exists() and any(c in str(entry) for c in "*?["):
            matches = sorted(map(Path, glob.glob(str(entry), recursive=True)))
            found = [
                f for m in matches for f in (_files_in(m) if m.is_dir() else [m]) if f.suffix in SUFFIXES
            ]
        elif not entry.exists():
            problems.append(DataFileError("no such file", path=entry))
            continue
        elif entry.suffix not in SUFFIXES:
            problems.append(
                DataFileError(f"unsupported file type; expected one of {', '.join(SUFFIXES)}", path=entry)
            )
            continue
        else:
            found = [entry]
        if not found:
            problems.append(DataFileError(f"no {', '.join(SUFFIXES)} files found", path=entry))
        files += found
    return files, problems


def expand_paths(paths: Paths) -> list[Path]:
    """The data files that paths (files, directories, globs) name, each directory or glob in sorted order."""
    files, problems = _expand(paths)
    if problems:
        raise problems[0]
    return files


def _ipc_batches(path: Path) -> Iterator[pa.RecordBatch]:
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            # Some writers (Hugging Face datasets among them) put the IPC *stream* format in .arrow files.
            source.seek(0)
            yield from pa.ipc.open_stream(source)
            return
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def _schema(path: Path) -> pa.Schema:
    if path.suffix == ".parquet":
        return pq.read_schema(path)
    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_file(source).schema
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_stream(source).schema


def _num_rows(path: Path) -> int:
    try:
        if path.suffix == ".parquet":
            return pq.read_metadata(path).num_rows
        # Memory-mapped batches are not copied: this reads only batch headers.
        return sum(batch.num_rows for batch in _ipc_batches(path))
    except (OSError, pa.ArrowException) as err:
        raise DataFileError(f"cannot read file ({err})", path=path) from err


def _batches(path: Path, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    if path.suffix == ".parquet":
        with pq.ParquetFile(path) as file:
            yield from file.iter_batches(batch_size=_BATCH_ROWS, columns=list(columns))
        return
    for batch in _ipc_batches(path):
        for offset in range(0, batch.num_rows, _BATCH_ROWS):
            yield batch.slice(offset, _BATCH_ROWS)


def count_rows(paths: Paths) -> int:
    """Rows in all the files, from their metadata."""
    return sum(_num_rows(path) for path in expand_paths(paths))


# --- schema and rows ---------------------------------------------------------------------------------------------


def _compatible(expected: pa.DataType, actual: pa.DataType) -> bool:
    if expected == pa.string():
        return str(actual) in _STRING_TYPES
    if expected == pa.binary():
        return str(actual) in _BINARY_TYPES
    if pa.types.is_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _compatible(
            expected.value_type, actual.value_type
        )
    if pa.types.is_struct(expected):
        return pa.types.is_struct(actual) and all(
            actual.get_field_index(field.name) >= 0
            and _compatible(field.type, actual.field(actual.get_field_index(field.name)).type)
            for field in expected
        )
    raise AssertionError(f"no rule for {expected}")


def _schema_problems(path: Path, kind: str, expected: pa.Schema | None = None) -> list[DataFileError]:
    try:
        schema = _schema(path)
    except (OSError, pa.ArrowException) as err:
        return [DataFileError(f"cannot read file ({err})", path=path)]
    problems = []
    for field in expected or SCHEMAS[kind]:
        index = schema.get_field_index(field.name)
        if index < 0:
            found = ", ".join(repr(n) for n in schema.names) or "none"
            problems.append(DataFileError(f"missing (columns found: {found})", path=path, column=field.name))
        elif not _compatible(field.type, schema.field(index).type):
            reason = f"expected type {field.type}, found {schema.field(index).type}"
            problems.append(DataFileError(reason, path=path, column=field.name))
    return problems


def _rows(path: Path, columns: Sequence[str], start: int = 0) -> Iterator[tuple[int, dict]]:
    """(row index in the file, {column: value}) from `start` on; the schema must have been checked."""
    row = 0
    try:
        for batch in _batches(path, columns):
            if row + batch.num_rows <= start:
                row += batch.num_rows
                continue
            values = [batch.column(c).to_pylist() for c in columns]
            for record in zip(*values, strict=True):
                if row >= start:
                    yield row, dict(zip(columns, record, strict=True))
                row += 1
    except (OSError, pa.ArrowException) as err:
        raise DataFileError(f"cannot read file after row {row} ({err})", path=path) from err


def _to_rgb(image: Image.Image) -> Image.Image:
    # Cameras store rotation in EXIF rather than in the pixels.
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Colour under fully transparent pixels is arbitrary (often black); a viewer shows the background.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def _open_image(data: bytes, *, decode: bool) -> Image.Image:
    """The image identified from its header (cheap), or fully decoded to RGB."""
    try:
        image = Image.open(io.BytesIO(data))
        return _to_rgb(image) if decode else image
    except UnidentifiedImageError as err:
        raise DataFileError("cannot decode image bytes (cannot identify image file)") from err
    # PIL's decoders raise a range of types on corrupt data (OSError, SyntaxError, struct.error, ...).
    except Exception as err:
        raise DataFileError(f"cannot decode image bytes ({err})") from err


def decode_image(data: bytes, resolution: int) -> np.ndarray:
    """(R, R, 3) uint8 RGB: the whole image squashed to a square, never cropped, so nothing in it is lost.

    Bicubic, because PIL widens its kernel when shrinking (antialiased, like an area filter) and interpolates
    smoothly when enlarging, where a box filter would give blocks. Transparent pixels are shown on white.
    Raises DataFileError without file context; validate_files decodes every image, so a study never meets one.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    image = _open_image(data, decode=True).resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _text_problem(text: str) -> str | None:
    if not text.strip():
        return "empty text"
    reserved = [token for token in _RESERVED if token in text]
    return f"contains the reserved token {reserved[0]!r}" if reserved else None


def _image_problem(data: bytes, check: Callable[[bytes], None]) -> str | None:
    try:
        check(data)
    except DataFileError as err:
        return err.reason
    return None


def _row_problems(
    kind: str, values: dict, check_image: Callable[[bytes], None] | None
) -> Iterator[tuple[str, str]]:
    """(column, reason) for each problem; image bytes are checked with check_image, or not at all if None."""
    if kind == "interleaved":
        items = values["items"]
        if items is None:
            yield "items", "null value"
        elif not items:
            yield "items", "document has no items"
        for j, item in enumerate(items or ()):
            text, image = (None, None) if item is None else (item["text"], item["image"])
            if text is not None and image is not None:
                yield "items", f"item {j}: has both text and image"
            elif text is None and image is None:
                yield "items", f"item {j}: has neither text nor image"
            elif text is not None and (problem := _text_problem(text)):
                yield "items", f"item {j}: {problem}"
            elif image is not None and check_image and (problem := _image_problem(image, check_image)):
                yield "items", f"item {j}: {problem}"
        return
    for column, value in values.items():
        if value is None:
            yield column, "null value"
        elif column == "image":
            if check_image and (problem := _image_problem(value, check_image)):
                yield column, problem
        elif isinstance(value, list):  # a task's reference captions or accepted answers
            if not value:
                yield column, "empty list (an item needs at least one reference)"
            for j, entry in enumerate(value):
                if entry is None:
                    yield column, f"entry {j}: null value"
                elif problem := _text_problem(entry):
                    yield column, f"entry {j}: {problem}"
        elif problem := _text_problem(value):
            yield column, problem


def _decode(data: bytes) -> None:
    _open_image(data, decode=True)


def _identify(data: bytes) -> None:
    _open_image(data, decode=False)


def _raise_first(path: Path, row: int, problems: Iterator[tuple[str, str]]) -> None:
    if problem := next(problems, None):
        raise DataFileError(problem[1], path=path, row=row, column=problem[0])


def _check_kind(kind: str) -> None:
    if kind not in SCHEMAS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")


def _words(text: str) -> str:
    return " ".join(text.split())


def _document(kind: str, values: dict) -> Document:
    if kind == "caption":
        return Document(f"{IMAGE_PLACEHOLDER} {_words(values['caption'])}", (values["image"],), kind)
    if kind == "text":
        return Document(_words(values["text"]), (), kind)
    words = [
        IMAGE_PLACEHOLDER if item["image"] is not None else _words(item["text"]) for item in values["items"]
    ]
    images = tuple(item["image"] for item in values["items"] if item["image"] is not None)
    return Document(" ".join(words), images, kind)


# --- public reading and writing ----------------------------------------------------------------------------------


def validate_files(paths: Paths, kind: str) -> list[str]:
    """Every problem in the files, each naming file, row and column; at most MAX_PROBLEMS_PER_FILE per file.

    Decodes every image, so that a study started after a clean report never meets an undecodable one.
    """
    if kind not in SCHEMAS:
        return [f"unknown kind {kind!r}; known: {', '.join(KINDS)}"]
    files, problems = _expand(paths)
    if not files and not problems:
        return ["no data files given"]
    report = [str(p) for p in problems]
    for path in files:
        found = _file_problems(path, kind)
        report += [str(p) for p in itertools.islice(found, MAX_PROBLEMS_PER_FILE)]
        if more := sum(1 for _ in found):
            report.append(f"{path}: and {more} more problems")
    return report


def _file_problems(path: Path, kind: str) -> Iterator[DataFileError]:
    if problems := _schema_problems(path, kind):
        yield from problems
        return
    try:
        for row, values in _rows(path, SCHEMAS[kind].names):
            for column, reason in _row_problems(kind, values, _decode):
                yield DataFileError(reason, path=path, row=row, column=column)
    except DataFileError as err:
        yield err


def read_documents(paths: Paths, kind: str, *, rows: slice | None = None) -> list[Document]:
    """Documents (source=kind, images the encoded bytes) from rows `rows` of the files taken as one sequence.

    Raises DataFileError on the first problem. Images are only identified from their headers here, not decoded:
    validate_files checks that they decode.
    """
    _check_kind(kind)
    files = expand_paths(paths)
    offsets = list(itertools.accumulate((_num_rows(path) for path in files), initial=0))
    start, stop, step = (rows or slice(None)).indices(offsets[-1])
    if step != 1:
        raise ValueError(f"rows must be a contiguous slice, got step {step}")
    documents: list[Document] = []
    for path, (first, end) in zip(files, itertools.pairwise(offsets), strict=True):
        if end <= start or first >= stop:
            continue
        if problems := _schema_problems(path, kind):
            raise problems[0]
        for row, values in _rows(path, SCHEMAS[kind].names, start=max(start - first, 0)):
            if first + row >= stop:
                break
            _raise_first(path, row, _row_problems(kind, values, _identify))
            documents.append(_document(kind, values))
    return documents


def read_texts(paths: Paths, kind: str) -> Iterator[str]:
    """The text in the files (captions, interleaved text items, text rows), without reading caption images."""
    _check_kind(kind)
    for path in expand_paths(paths):
        if problems := _schema_problems(path, kind):
            raise problems[0]
        for row, values in _rows(path, _TEXT_COLUMNS[kind]):
            _raise_first(path, row, _row_problems(kind, values, None))
            if kind == "interleaved":
                yield from (_words(item["text"]) for item in values["items"] if item["text"] is not None)
            else:
                yield _words(values[_TEXT_COLUMNS[kind][0]])


# --- evaluation task files ---------------------------------------------------------------------------------------


def _task_columns(path: Path, kind: str, split: str) -> tuple[list[str], list[DataFileError]]:
    """The columns to read from a task file (the kind's, and the optional ones it has), or its schema problems."""
    expected = TASK_SCHEMAS[kind]
    problems = _schema_problems(path, kind, expected)
    if problems:
        return [], problems
    schema = _schema(path)
    columns = list(expected.names)
    for name in TASK_OPTIONAL_COLUMNS:
        index = schema.get_field_index(name)
        if index < 0:
            continue
        if str(schema.field(index).type) not in _STRING_TYPES:
            problems.append(
                DataFileError(
                    f"expected type string, found {schema.field(index).type}", path=path, column=name
                )
            )
        columns.append(name)
    if split and "split" not in columns:
        problems.append(
            DataFileError(f"missing (the task takes the rows of split {split!r})", path=path, column="split")
        )
    return columns, problems


def _task_rows(
    paths: Paths, kind: str, split: str, check_image: Callable[[bytes], None]
) -> Iterator[tuple[Path, int, dict, list[DataFileError]]]:
    """(file, row, values, problems) of every row of the split; a file's own problems come as row -1."""
    files, problems = _expand(paths)
    for problem in problems:
        yield Path(str(problem.path)), -1, {}, [problem]
    for path in files:
        columns, problems = _task_columns(path, kind, split)
        if problems:
            yield path, -1, {}, problems
            continue
        try:
            for row, values in _rows(path, columns):
                if split and values.get("split") != split:
                    continue
                found = [
                    DataFileError(reason, path=path, row=row, column=column)
                    for column, reason in _row_problems(kind, values, check_image)
                ]
                yield path, row, values, found
        except DataFileError as err:
            yield path, -1, {}, [err]


def validate_task_files(paths: Paths, kind: str, *, split: str = "") -> list[str]:
    """Every problem in an evaluation task's files (TASK_SCHEMAS[kind]), as validate_files; decodes every image.

    A split that selects no row at all is a problem too: the task would score nothing."""
    if kind not in TASK_SCHEMAS:
        return [f"unknown task kind {kind!r}; known: {', '.join(TASK_SCHEMAS)}"]
    report: list[str] = []
    per_file: dict[Path, int] = {}
    rows = 0
    for path, row, _, problems in _task_rows(paths, kind, split, _decode):
        rows += row >= 0
        for problem in problems:
            per_file[path] = per_file.get(path, 0) + 1
            if per_file[path] <= MAX_PROBLEMS_PER_FILE:
                report.append(str(problem))
    report += [
        f"{path}: and {count - MAX_PROBLEMS_PER_FILE} more problems"
        for path, count in per_file.items()
        if count > MAX_PROBLEMS_PER_FILE
    ]
    if not report and not rows:
        report.append(f"{paths}: no rows" + (f" of split {split!r}" if split else ""))
    return report


def read_task_rows(paths: Paths, kind: str, *, split: str = "") -> list[dict]:
    """The rows of an evaluation task's files (those of `split`, if given), in file order; raises on the first
    problem. Images stay encoded; validate_task_files checks that they decode."""
    _check_task_kind(kind)
    out = []
    for _, _, values, problems in _task_rows(paths, kind, split, _identify):
        if problems:
            raise problems[0]
        out.append(values)
    return out


def _check_task_kind(kind: str) -> None:
    if kind not in TASK_SCHEMAS:
        raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(TASK_SCHEMAS)}")


def write_documents(path: str | Path, kind: str, records: Iterable[Mapping]) -> None:
    """Write records (dicts with the schema's columns; other keys ignored) to a .parquet, .arrow or .feather file.

    kind: a training kind (SCHEMAS), or `task:<kind>` for an evaluation task file (TASK_SCHEMAS) with its optional
    `split` and `category` columns."""
    if kind.startswith("task:"):
        _check_task_kind(kind[5:])
        schema = TASK_SCHEMAS[kind[5:]]
        records = list(records)  # which optional columns to write is known only after seeing every record
        present = set().union(*(record.keys() for record in records))
        schema = pa.schema(
            [*schema, *((name, pa.string()) for name in TASK_OPTIONAL_COLUMNS if name in present)]
        )
    else:
        _check_kind(kind)
        schema = SCHEMAS[kind]
    path = Path(path)
    if path.suffix == ".parquet":
        writer = pq.ParquetWriter(path, schema)
    elif path.suffix in SUFFIXES:
        writer = pa.ipc.new_file(path, schema)
    else:
        raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(SUFFIXES)}")
    records = iter(records)
    with writer:
        # In chunks, so that converting a large data set never holds it all in memory.
        while chunk := list(itertools.islice(records, _BATCH_ROWS)):
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
