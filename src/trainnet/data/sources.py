"""Streaming readers of dataset sources: text files and folders, jsonl, parquet, `datasets` save-to-disk folders.

    for doc in iter_docs(Path("corpus/"), field="text"):   # Doc(text, where, last)
        ...

A file is read by its name: *.jsonl / *.jsonl.gz (one JSON object per line, text in `field`), *.parquet
(a string column `field`), anything else as text (a file is one document, read in ~4 MiB pieces cut after
a newline). A folder is read file by file in sorted path order, skipping binary files as the byte corpus
does; a folder written by `datasets.Dataset.save_to_disk` is read as that dataset (`split` picks one of a
DatasetDict). With raw=True text files yield bytes, undecoded. Every bad input raises SourceError naming
the file and the line or row.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainnet.data.corpus import _looks_binary

PIECE = 4 << 20  # bytes of a text file per piece
BATCH = 1024  # rows per parquet / datasets batch
Progress = Callable[[int], None]


class SourceError(ValueError):
    """Unusable dataset input; the message names the file and, where there is one, the line or row."""


@dataclass(frozen=True)
class Doc:
    text: str | bytes
    where: str  # "file line 3", for messages
    last: bool = True  # False: more pieces of the same document follow


def _noop(_: int) -> None:
    pass


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or
                              ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()))


def kind_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def list_files(src: Path) -> list[Path]:
    """The files a source folder contributes, in order (binary text-kind files skipped)."""
    files = sorted((p for p in src.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
    out = []
    for f in files:
        if kind_of(f) == "text":
            with open(f, "rb") as fp:
                if _looks_binary(fp.read(8192)):
                    continue
        out.append(f)
    return out


def source_size(src: Path) -> int:
    """Bytes on disk of everything the source reads (the progress bar's total)."""
    if src.is_file():
        return src.stat().st_size
    return sum(f.stat().st_size for f in src.rglob("*") if f.is_file())


def iter_docs(src: Path, field: str = "text", split: str | None = None, raw: bool = False,
              progress: Progress = _noop) -> Iterator[Doc]:
    src = src.expanduser()
    if not src.exists():
        raise SourceError(f"data source does not exist: {src}")
    if is_hf_dataset(src):
        yield from _hf_docs(src, field, split, progress)
        return
    if src.is_file():
        with open(src, "rb") as fp:
            if kind_of(src) == "text" and _looks_binary(fp.read(8192)):
                raise SourceError(f"data file is not text (binary content or not UTF-8): {src}")
        files = [src]
    else:
        files = list_files(src)
        if not files:
            raise SourceError(f"data folder has no text, jsonl or parquet files: {src}")
    for f in files:
        kind = kind_of(f)
        if kind == "jsonl":
            yield from _jsonl_docs(f, field, progress)
        elif kind == "parquet":
            yield from _parquet_docs(f, field, progress)
        else:
            yield from _text_docs(f, raw, progress)


def check_source(src: Path, field: str = "text", split: str | None = None) -> None:
    """Fail fast, before any long pass: the source exists and every parquet file has a string `field`
    column (jsonl rows can only be checked as they stream by)."""
    src = src.expanduser()
    if not src.exists():
        raise SourceError(f"data source does not exist: {src}")
    if is_hf_dataset(src):
        next(iter(_hf_docs(src, field, split, _noop)), None)
        return
    for f in [src] if src.is_file() else list_files(src):
        if kind_of(f) == "parquet":
            next(iter(_parquet_docs(f, field, _noop)), None)


def _text_docs(path: Path, raw: bool, progress: Progress) -> Iterator[Doc]:
    try:
        fp = open(path, "rb")
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fp:
        offset, carry = 0, b""
        while True:
            block = fp.read(PIECE)
            data = carry + block
            if not block:  # the end: the rest (maybe empty) closes the document
                yield Doc(data if raw else _decode(data, path, offset), str(path), last=True)
                return
            progress(len(block))
            # cut after the last newline so a piece never splits a line (or a UTF-8 character)
            cut = data.rfind(b"\n") + 1 or len(data)
            piece, carry = data[:cut], data[cut:]
            if piece:
                yield Doc(piece if raw else _decode(piece, path, offset), str(path), last=False)
            offset += len(piece)


def _decode(data: bytes, path: Path, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not valid UTF-8 at byte {offset + exc.start}") from None


def _text_field(obj: Any, field: str, where: str) -> str:
    if not isinstance(obj, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if field not in obj:
        raise SourceError(f"{where}: no field {field!r} (fields: {', '.join(sorted(obj)) or 'none'})")
    value = obj[field]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise SourceError(f"{where}: field {field!r} is {kind}, expected a string")
    return value


def _jsonl_docs(path: Path, field: str, progress: Progress) -> Iterator[Doc]:
    try:
        fp = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fp:
        for n, line in enumerate(fp, start=1):
            progress(len(line))
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                obj = json.loads(line)
            except UnicodeDecodeError as exc:
                raise SourceError(f"{where}: not valid UTF-8 ({exc.reason})") from None
            except json.JSONDecodeError as exc:
                raise SourceError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            yield Doc(_text_field(obj, field, where), where)


def _check_string_type(arrow_type: Any, where: str, field: str) -> None:
    import pyarrow as pa

    if not (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or getattr(pa.types, "is_string_view", lambda _: False)(arrow_type)):
        raise SourceError(f"{where}: column {field!r} has type {arrow_type}, expected a string column")


def _parquet_docs(path: Path, field: str, progress: Progress) -> Iterator[Doc]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for corrupt or non-parquet files
        raise SourceError(f"{path}: not a readable parquet file ({exc})") from None
    if field not in schema.names:
        raise SourceError(f"{path}: no column {field!r} (columns: {', '.join(schema.names)})")
    _check_string_type(schema.field(field).type, str(path), field)
    rows, size, row = max(pf.metadata.num_rows, 1), path.stat().st_size, 0
    try:
        batches = pf.iter_batches(batch_size=BATCH, columns=[field])
        for batch in batches:
            for value in batch.column(0).to_pylist():
                if value is None:
                    raise SourceError(f"{path} row {row}: field {field!r} is null, expected a string")
                yield Doc(value, f"{path} row {row}")
                row += 1
            progress(size * batch.num_rows // rows)
    except SourceError:
        raise
    except Exception as exc:  # a column that cannot be decoded part-way through the file
        raise SourceError(f"{path}: unreadable parquet column {field!r} near row {row} ({exc})") from None


def _hf_docs(path: Path, field: str, split: str | None, progress: Progress) -> Iterator[Doc]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for damaged folders
        raise SourceError(f"{path}: not a readable datasets folder ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        pick = split or ("train" if "train" in ds else names[0] if len(names) == 1 else None)
        if pick not in ds:
            raise SourceError(f"{path}: choose a split with --split (splits: {', '.join(names)})")
        ds, where = ds[pick], f"{path} [{pick}]"
    else:
        where = str(path)
    if field not in ds.column_names:
        raise SourceError(f"{where}: no column {field!r} (columns: {', '.join(ds.column_names)})")
    feature = ds.features[field]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise SourceError(f"{where}: column {field!r} has type {feature}, expected a string column")
    if len(ds) == 0:
        return
    size, rows, row = source_size(path), len(ds), 0
    for batch in ds.select_columns([field]).iter(batch_size=BATCH):
        values = batch[field]
        for value in values:
            if value is None:
                raise SourceError(f"{where} row {row}: field {field!r} is null, expected a string")
            yield Doc(value, f"{where} row {row}")
            row += 1
        progress(size * len(values) // rows)


def stdlib_docs(subdir: str | None = None) -> tuple[list[dict[str, str]], list[Path]]:
    """The default corpus as documents: {"path", "text"} for every *.py file the byte corpus reads (the
    running Python's standard library, same order), or only those under `subdir` (e.g. "json"). Empty files
    are left out (the byte corpus skips them too); so are the files that are not UTF-8 (returned as the
    second value: a jsonl or parquet row holds text, the byte corpus holds their raw bytes)."""
    from trainnet.data.corpus import _stdlib_files, stdlib_dir

    root = stdlib_dir()
    files = _stdlib_files(root / subdir if subdir else root)
    rows, skipped = [], []
    for f in files:
        data = f.read_bytes()
        if not data:
            continue
        try:
            rows.append({"path": f.relative_to(root).as_posix(), "text": data.decode("utf-8")})
        except UnicodeDecodeError:
            skipped.append(f)
    return rows, skipped


def write_docs(path: Path, rows: list[dict[str, str]], row_group_size: int = 256) -> Path:
    """Write documents (dicts of strings, e.g. from stdlib_docs) as *.jsonl (one JSON object a line, UTF-8) or
    *.parquet (one string column per key), by the file name; iter_docs reads either back in the same order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = kind_of(path)
    if kind == "jsonl" and not path.name.lower().endswith(".gz"):
        with open(path, "w", encoding="utf-8") as fp:
            for row in rows:
                fp.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys = list(rows[0]) if rows else ["text"]
        table = pa.table({k: pa.array([r[k] for r in rows], type=pa.string()) for k in keys})
        pq.write_table(table, path, row_group_size=row_group_size)
    else:
        raise SourceError(f"{path}: write_docs writes *.jsonl or *.parquet files")
    return path
