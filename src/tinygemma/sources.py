"""Reading text sources as a stream of small, picklable tasks that workers turn into documents.

A source is `hf:NAME`, `builtin`, a file (.txt/.md, .jsonl, .json, .parquet; other suffixes
are read as text), a directory (every such file under it, sorted) or a glob. How a text file
is cut into documents, and a long document into pieces, is tinygemma.documents'.

Files are read in blocks of ~`chunk_bytes`; a task never splits a document (a long one comes
in pieces cut by a rule that looks only at its text), so the documents are the same for
every chunk size and every number of workers. Parsing (UTF-8 decoding, splitting, JSON)
happens in the worker that encodes the task; the reading process only moves bytes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

from tinygemma.config import check_fields, ranged
from tinygemma.documents import Piece, TailCut, Task, decode_utf8, file_separator, find_tail_cut, parse_text, \
    read_range, str_pieces, text_tasks
from tinygemma.errors import TinyGemmaError

TEXT_SUFFIXES = {".txt", ".text", ".md"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
KNOWN_SUFFIXES = TEXT_SUFFIXES | JSONL_SUFFIXES | {".json", ".parquet"}
SPLITS = ("train", "validation")


@dataclass(frozen=True, kw_only=True)
class SourceOptions:
    """How documents are read; part of the settings hash that makes re-runs no-ops."""

    text_field: str = "text"  # .jsonl/.json/.parquet/hf column holding the text
    doc_split: str = "auto"  # text files: "auto", "line", "blank" or a literal separator (tinygemma.documents)
    builtin_mb: float = ranged(20.0, gt=0)  # size of the builtin train split (validation: builtin_val_mb)
    builtin_val_mb: float = ranged(1.0, gt=0)
    seed: int = ranged(0, ge=0)  # builtin corpus seed (validation uses seed + 1)
    hf_mb: float | None = ranged(None, gt=0)  # hf: stream only the first hf_mb MB of each split (None: all of it)
    segment_bytes: int = ranged(1 << 20, ge=16)  # a longer document is tokenized in pieces of at most this many bytes
    chunk_bytes: int = ranged(1 << 20, ge=1)  # ~text per task; not part of the output (any value gives the same bytes)

    def __post_init__(self) -> None:
        check_fields(self, "source")

    def reading(self) -> "SourceOptions":
        """Just the reading options (of a subclass such as prepare.PrepareOptions), for the worker processes."""
        return SourceOptions(**{f.name: getattr(self, f.name) for f in fields(SourceOptions)})

    def settings(self) -> dict:
        """The options that change the output (all but chunk_bytes)."""
        return {f.name: getattr(self, f.name) for f in fields(SourceOptions) if f.name != "chunk_bytes"}


# ---------------------------------------------------------------- worker side
def parse_task(task: Task, opts: SourceOptions) -> tuple[list[Piece], int]:
    """Task -> (its documents' pieces in order, number of undecodable byte sequences replaced)."""
    if task.kind == "docs":
        return str_pieces(task.data, opts.segment_bytes), 0
    if task.kind == "jsonl":
        text, replaced = decode_utf8(task.data)
        docs = [_field(json_line(line, task.origin), opts.text_field, task.origin)
                for line in text.split("\n") if line.strip()]
        return str_pieces(docs, opts.segment_bytes), replaced
    if task.kind == "text":
        return parse_text(task, opts.segment_bytes)
    raise ValueError(f"unknown task kind {task.kind!r}")


def json_line(line: str, origin: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise TinyGemmaError(f"{origin}: invalid JSON line ({e.msg}): {line[:60]!r}") from None


def _field(record, field: str, origin: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict) or field not in record:
        keys = sorted(record)[:8] if isinstance(record, dict) else type(record).__name__
        raise TinyGemmaError(f"{origin}: a record has no text field {field!r} (it has {keys}); "
                             "pass --text-field NAME")
    value = record[field]
    if not isinstance(value, str):
        raise TinyGemmaError(f"{origin}: field {field!r} holds {type(value).__name__}, not text; pass --text-field NAME")
    return value


# ---------------------------------------------------------------- resolving a source
def resolve_files(source: str) -> list[Path]:
    """A file, directory or glob -> the sorted list of files it names."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in KNOWN_SUFFIXES
                       and not p.name.startswith("."))
    elif any(c in source for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True) if Path(p).is_file())
    else:
        raise TinyGemmaError(f"source {source!r} not found: give a file, directory, glob, hf:NAME or builtin")
    if not files:
        raise TinyGemmaError(f"source {source!r} has no .txt/.jsonl/.json/.parquet files")
    return files


def is_text_file(path: Path) -> bool:
    return path.suffix.lower() not in KNOWN_SUFFIXES - TEXT_SUFFIXES


def describe_inputs(source: str, opts: SourceOptions) -> list:
    """What identifies a source's content cheaply (file path, size, mtime): for the no-op check."""
    if source == "builtin":
        import tinygemma.corpus as corpus

        return ["builtin", hashlib.sha256(Path(corpus.__file__).read_bytes()).hexdigest()]
    if source.startswith("hf:"):
        return [source]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in resolve_files(source)]


def has_validation(source: str) -> bool:
    """Whether the source brings its own validation split (else prepare holds out part of it)."""
    if source == "builtin":
        return True
    if source.startswith("hf:"):
        return "validation" in _hf_split_names(source[3:])
    return False


def iter_tasks(source: str, split: str, opts: SourceOptions, tail: TailCut | None = None) -> Iterator[Task]:
    """Tasks for one split of a source (`split` matters for hf: and builtin, and for files with a `tail` cut)."""
    if source == "builtin":
        yield from _builtin_tasks(split, opts)
    elif source.startswith("hf:"):
        yield from _hf_tasks(source[3:], split, opts)
    else:
        for path, start, end in _file_ranges(resolve_files(source), split, tail):
            yield from _file_tasks(path, start, end, opts)


def iter_pieces(source: str, split: str, opts: SourceOptions, tail: TailCut | None = None) -> Iterator[Piece]:
    """The pieces of a source's documents, read sequentially in this process (BPE training, counting, tests)."""
    for task in iter_tasks(source, split, opts, tail):
        yield from parse_task(task, opts)[0]


def count_documents(source: str, opts: SourceOptions, limit: int) -> int:
    """How many documents a file source has, counting no further than `limit`."""
    n = 0
    for piece in iter_pieces(source, "train", opts):
        n += piece.opens
        if n >= limit:
            break
    return n


def source_bytes(source: str) -> int | None:
    """Total input size for the progress bar, when it is known."""
    if source == "builtin" or source.startswith("hf:"):
        return None
    return sum(p.stat().st_size for p in resolve_files(source))


def tail_cut(source: str, opts: SourceOptions, fraction: float) -> TailCut:
    """Where a validation split cut off the end of a text-file source begins (documents.find_tail_cut)."""
    return find_tail_cut(resolve_files(source), opts.doc_split, fraction, opts.segment_bytes)


def _file_ranges(files: list[Path], split: str, tail: TailCut | None) -> Iterator[tuple[Path, int, int | None]]:
    """(file, first byte, end byte or None) of a split: every file, or the files before / after a tail cut."""
    if tail is None:
        yield from ((p, 0, None) for p in files)
        return
    k = [str(p) for p in files].index(tail.path)
    if split == "train":
        yield from ((p, 0, None) for p in files[:k])
        if tail.offset > 0:
            yield files[k], 0, tail.offset
    else:
        yield files[k], tail.offset, None
        yield from ((p, 0, None) for p in files[k + 1 :])


# ---------------------------------------------------------------- files
def _file_tasks(path: Path, start: int, end: int | None, opts: SourceOptions) -> Iterator[Task]:
    suffix = path.suffix.lower()
    if is_text_file(path):
        yield from text_tasks(path, start, end, file_separator(path, opts.doc_split), opts.chunk_bytes,
                              opts.segment_bytes)
    elif suffix in JSONL_SUFFIXES or (suffix == ".json" and not _starts_with(path, b"[")):
        for block in _blocks(path, opts.chunk_bytes):
            yield Task("jsonl", block, str(path))
    elif suffix == ".json":
        yield from _json_array_tasks(path, opts)
    else:
        yield from _parquet_tasks(path, opts)


def _blocks(path: Path, size: int) -> Iterator[bytes]:
    """~`size`-byte blocks of a JSON-lines file, each ending just after a newline (or at end of file)."""
    carry = b""
    for data in read_range(path, 0, None, size):
        buf = carry + data
        end = buf.rfind(b"\n") + 1
        if end:
            yield buf[:end]
        carry = buf[end:]
    if carry:
        yield carry


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(prefix)


def _json_array_tasks(path: Path, opts: SourceOptions) -> Iterator[Task]:
    """A .json array is read whole (use .jsonl for large data)."""
    text, _ = decode_utf8(path.read_bytes())
    try:
        records = json.loads(text.lstrip("\ufeff"))
    except json.JSONDecodeError as e:
        raise TinyGemmaError(f"{path}: invalid JSON ({e}); .json must be an array of records or JSON lines") from None
    docs = [_field(r, opts.text_field, str(path)) for r in records]
    yield from _doc_tasks(iter(docs), opts.chunk_bytes)


def _parquet_tasks(path: Path, opts: SourceOptions) -> Iterator[Task]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if opts.text_field not in pf.schema_arrow.names:
        raise TinyGemmaError(f"{path}: no column {opts.text_field!r} (columns: {pf.schema_arrow.names}); "
                             "pass --text-field NAME")
    docs = (d for batch in pf.iter_batches(batch_size=1024, columns=[opts.text_field])
            for d in batch.column(0).to_pylist() if d)
    yield from _doc_tasks(docs, opts.chunk_bytes)


def _doc_tasks(docs: Iterator[str], chunk_bytes: int) -> Iterator[Task]:
    """Group in-memory documents into tasks of ~chunk_bytes characters."""
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= chunk_bytes:
            yield Task("docs", batch)
            batch, size = [], 0
    if batch:
        yield Task("docs", batch)


# ---------------------------------------------------------------- builtin and hf
def _builtin_tasks(split: str, opts: SourceOptions) -> Iterator[Task]:
    from tinygemma.corpus import iter_stories

    mb = opts.builtin_mb if split == "train" else opts.builtin_val_mb
    seed = opts.seed if split == "train" else opts.seed + 1

    yield from _doc_tasks(first_mb(iter_stories(seed), mb), opts.chunk_bytes)


def _hf_split_names(name: str) -> list[str]:
    try:
        import datasets

        return list(datasets.get_dataset_split_names(name))
    except Exception as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise TinyGemmaError(f"cannot reach Hugging Face dataset {name!r} ({msg}); when offline use a local "
                             "file (--source train.txt) or --source builtin") from None


def _hf_tasks(name: str, split: str, opts: SourceOptions) -> Iterator[Task]:
    import datasets

    try:  # with a size cap, stream the first rows instead of downloading the whole split
        ds = datasets.load_dataset(name, split=split, streaming=opts.hf_mb is not None)
    except Exception as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise TinyGemmaError(f"cannot load split {split!r} of Hugging Face dataset {name!r} ({msg}); "
                             "when offline use a local file or --source builtin") from None
    if ds.column_names is not None and opts.text_field not in ds.column_names:
        raise TinyGemmaError(f"hf:{name} has no column {opts.text_field!r} (columns: {ds.column_names}); "
                             "pass --text-field NAME")
    docs = (d for batch in ds.iter(batch_size=1000) for d in batch[opts.text_field] if d)
    yield from _doc_tasks(first_mb(docs, opts.hf_mb), opts.chunk_bytes)


def first_mb(docs: Iterator[str], mb: float | None) -> Iterator[str]:
    """The documents until `mb` MB (10^6 UTF-8 bytes) of text have been passed (all of them when mb is None).

    Every "first N MB" limit counts this way: --builtin-mb, --hf-mb, --bpe-train-mb."""
    total = 0
    for doc in docs:
        if mb is not None and total >= mb * 1e6:
            return
        total += len(doc.encode("utf-8"))
        yield doc
