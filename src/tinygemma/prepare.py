"""prepare(): text sources -> token ids -> train.bin / validation.bin + meta.json (docs/DATA.md).

The format itself (the layout, meta.json, reading it back, get_batch) is tinygemma.data's.

How prepare is fast and safe:
- the reading process cuts the input into ~1 MB tasks; `num_proc` worker processes
  decode, split and encode them (one process per core, tiktoken releases nothing to
  share); results come back in task order, so the bytes do not depend on `num_proc`;
- at most 2 tasks per worker are in flight, so memory does not grow with the input;
- everything is written under temporary names and renamed at the very end, meta.json
  last; a killed run leaves the previous output as it was;
- meta.json stores a hash of the inputs and settings: the same run again does nothing.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from tinygemma.config import DATA_DIR, check_fields, ranged
from tinygemma.data import FORMAT_VERSION, bin_dtype, make_meta, pack, read_meta
from tinygemma.errors import TinyGemmaError
from tinygemma.fsutil import atomic_path, exclusive_dir, json_text, writing
from tinygemma.documents import PARAGRAPH_BREAK, Piece, TailCut, Task
from tinygemma.sources import SPLITS, SourceOptions, check_files, count_documents, describe_inputs, first_mb, has_validation, \
    is_text_file, iter_pieces, iter_tasks, parse_task, resolve_files, source_bytes, tail_cut
from tinygemma.tokenizer import AUTO_VOCAB, BPE_AUTO, Tokenizer, auto_bpe_docs, load_tokenizer, parse_bpe_spec, train_bpe

DEFAULT_SOURCE = "hf:roneneldan/TinyStories"
HOLDOUT_BUCKETS = 1_000_000
MIN_HELD_DOCUMENTS = 10  # the hash split is used when it expects at least this many validation documents


@dataclass(frozen=True, kw_only=True)
class PrepareOptions(SourceOptions):
    """Everything `prepare` takes; the CLI and the quickstart each build one. How documents are read
    (text field, --doc-split, builtin and hf: sizes, piece sizes) is the SourceOptions part."""

    source: str = DEFAULT_SOURCE  # hf:NAME, builtin, a file, a folder or a glob (tinygemma.sources)
    val_source: str | None = None  # a separate validation source (else the source's own, else held out)
    tokenizer: str = "gpt2"  # gpt2, gemma3, bpe:N (trained here) or a tokenizer.json path
    out: str = DATA_DIR
    val_fraction: float = ranged(0.01, gt=0, lt=1)  # held out for validation when there is no validation source
    bpe_train_mb: float = ranged(200.0, gt=0)  # bpe:N learns its merges from up to this many MB of training text
    num_proc: int | None = ranged(None, ge=1)  # worker processes (None: every core this process may use)
    force: bool = False  # rebuild even if the output is up to date
    progress: bool | None = None  # a progress bar (None: when stderr is a terminal)
    quiet: bool = False  # print nothing

    def __post_init__(self) -> None:
        check_fields(self, "prepare")


@dataclass(frozen=True)
class Holdout:
    """Where the validation split comes from: "given" (--val-source, or the source's own split), "hash"
    (the documents whose key falls below `fraction`) or "tail" (the text after `tail`)."""

    method: str
    fraction: float = 0.0
    tail: TailCut | None = None
    why: str = ""  # one line, printed by prepare and kept in meta.json

    def held(self, piece: Piece) -> bool:
        return self.method == "hash" and piece.key % HOLDOUT_BUCKETS < self.fraction * HOLDOUT_BUCKETS


def is_held_out(doc: str, fraction: float) -> bool:
    """The hash split's rule for a whole document: by a hash of its text, so it does not depend on
    order, chunking or worker count, and repeated documents land in one split."""
    # crc32 rather than a cryptographic hash: ~4x cheaper per document, and uniform enough for buckets.
    return Holdout("hash", fraction).held(Piece(doc, key=zlib.crc32(doc.encode("utf-8"))))


def plan_holdout(opts: PrepareOptions) -> Holdout:
    """How to make the validation split (docs/DATA.md, "Validation split")."""
    source, fraction = opts.source, opts.val_fraction
    if opts.val_source:
        return Holdout("given", why=f"validation: {opts.val_source} (--val-source)")
    if has_validation(source):
        return Holdout("given", why=f"validation: the validation split of {source}")
    need = math.ceil(MIN_HELD_DOCUMENTS / fraction)
    text_only = not source.startswith("hf:") and all(is_text_file(p) for p in resolve_files(source))
    found = count_documents(source, opts.reading(), need) if text_only else need
    if found >= need:
        return Holdout("hash", fraction, why=f"validation: {fraction:g} of the documents, held out by a hash of "
                                             "their text")
    tail = tail_cut(source, opts.reading(), fraction)
    return Holdout("tail", fraction, tail, why=(
        f"validation: the last {fraction * 100:g}% of the text, from byte {tail.offset:,} of {tail.path} (a "
        f"{tail.boundary} boundary): the source has {_count(found, 'document')}, too few to hold whole ones out "
        f"(that needs {need:,} at --val-fraction {fraction:g})"))


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------- worker side
@dataclass(frozen=True)
class _Encoding:
    """How one prepare turns tasks into ids: what every worker gets (the tokenizer, the .bin dtype, the
    reading options, the holdout), and how many worker processes run, with a progress bar or not."""

    tok: Tokenizer
    dtype: str
    reading: SourceOptions
    holdout: Holdout
    num_proc: int = 1
    show: bool = False


_WORKER: dict = {}


def _init_worker(enc: _Encoding, in_child: bool) -> None:
    if in_child:  # one process per core already: no extra tokenizer threads
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(enc=enc, dtype=np.dtype(enc.dtype))


def _encode_task(task: Task) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """One task -> (ids kept, ids held out for validation, stats kept, stats held out)."""
    enc: _Encoding = _WORKER["enc"]
    pieces, replaced = parse_task(task, enc.reading)
    held = [enc.holdout.held(p) for p in pieces]
    kept, kept_stats = _pack([p for p, h in zip(pieces, held) if not h])
    out, out_stats = _pack([p for p, h in zip(pieces, held) if h])
    kept_stats["replaced_chars"] = replaced  # counted where the bytes were read
    return kept, out, kept_stats, out_stats


def _pack(pieces: list[Piece]) -> tuple[np.ndarray, dict]:
    """Encode pieces into the .bin layout (data.pack) in the .bin dtype, with their stats."""
    tok: Tokenizer = _WORKER["enc"].tok
    ids = tok.encode_batch([p.text for p in pieces]) if pieces else []
    arr = pack(((i, p.opens, p.closes) for i, p in zip(ids, pieces)), tok.bos_id, tok.eot_id)
    if len(arr) and int(arr.max()) >= tok.vocab_size:
        raise TinyGemmaError(f"tokenizer {tok.name} produced id {int(arr.max())} >= its vocab_size "
                             f"{tok.vocab_size}; the tokenizer file is inconsistent")
    docs = sum(p.opens for p in pieces)
    return arr.astype(_WORKER["dtype"]), {
        "tokens": len(arr), "documents": docs,
        "bytes": sum(len(t) if t.isascii() else len(t.encode("utf-8")) for t in (p.text for p in pieces)),
        "paragraphs": docs + sum(len(PARAGRAPH_BREAK.findall(p.text)) for p in pieces), "replaced_chars": 0}


def _results(tasks: Iterator, enc: _Encoding) -> Iterator[tuple]:
    """Encode tasks on `enc.num_proc` processes; yield results in task order, <= 2 per worker in flight."""
    if enc.num_proc <= 1:
        _init_worker(enc, in_child=False)
        yield from map(_encode_task, tasks)
        return
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    # Set before forking: HF tokenizers then skips its "forked after parallelism" warning.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with ctx.Pool(enc.num_proc, initializer=_init_worker, initargs=(enc, True)) as pool:
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(_encode_task, (task,)))
            if len(pending) >= 2 * enc.num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ---------------------------------------------------------------- writing
class _SplitWriter:
    """Appends ids to a temporary .bin beside the final one, hashing as it goes. A write the OS refuses
    (full disk) is one TinyGemmaError line (fsutil.writing); discard() then removes the temporary file."""

    def __init__(self, out: Path, split: str):
        self.final = out / f"{split}.bin"
        self.tmp = out / f".{split}.bin.{os.getpid()}.tmp"
        self.file = None
        with writing(self.final):
            self.file = open(self.tmp, "wb")
        self.sha = hashlib.sha256()
        self.stats = {"tokens": 0, "documents": 0, "paragraphs": 0, "bytes": 0, "replaced_chars": 0}

    def write(self, arr: np.ndarray, stats: dict) -> None:
        buf = memoryview(arr).cast("B")
        with writing(self.final):
            self.file.write(buf)
        self.sha.update(buf)
        for k in self.stats:
            self.stats[k] += stats[k]

    def close(self) -> dict:
        with writing(self.final):
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        return {"file": self.final.name, **self.stats, "sha256": self.sha.hexdigest()}

    def discard(self) -> None:
        """Close and delete the temporary file if it was not renamed into place."""
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # the unflushed rest of a write the disk refused
                pass
        self.tmp.unlink(missing_ok=True)


class _Progress:
    """A tqdm bar over input bytes (or documents) with docs/s and tokens/s."""

    def __init__(self, label: str, total: int | None, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=label, unit="B" if total else " docs", unit_scale=True,
                        disable=not enabled, dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.docs = self.tokens = 0

    def update(self, stats: dict, n_bytes: int) -> None:
        self.docs += stats["documents"]
        self.tokens += stats["tokens"]
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.docs / dt:,.0f} docs/s, {self.tokens / dt / 1e6:.2f} M tok/s", refresh=False)
        self.bar.update(n_bytes if self.bar.total else stats["documents"])

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------- prepare
def prepare(opts: PrepareOptions) -> dict:
    """Tokenize opts.source (and opts.val_source) into opts.out/{train,validation}.bin + meta.json; return meta."""
    out = Path(opts.out)
    say = (lambda *a: None) if opts.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    settings = {"format_version": FORMAT_VERSION, "source": opts.source, "val_source": opts.val_source,
                "tokenizer": opts.tokenizer, "val_fraction": opts.val_fraction, "bpe_train_mb": opts.bpe_train_mb,
                **opts.settings()}
    inputs = [describe_inputs(opts.source, opts), describe_inputs(opts.val_source, opts) if opts.val_source else None,
              _tokenizer_inputs(opts.tokenizer)]
    inputs_sha = hashlib.sha256(json.dumps([settings, inputs], sort_keys=True).encode()).hexdigest()
    for source in filter(None, (opts.source, opts.val_source)):
        check_files(source, opts)
    with exclusive_dir(out, "prepare"):  # one prepare per folder; a refused one leaves no new folder
        _remove_stale_temps(out)
        if not opts.force and (meta := _up_to_date(out, inputs_sha)):
            say(f"{out} is already up to date (same inputs and settings); nothing to do (use --force to rebuild)")
            return meta
        holdout = plan_holdout(opts)
        say(holdout.why)
        tok = _make_tokenizer(opts, holdout, say)
        enc = _Encoding(tok, bin_dtype(tok.vocab_size), opts.reading(), holdout,
                        max(1, opts.num_proc or default_num_proc()),
                        sys.stderr.isatty() if opts.progress is None else opts.progress)
        t0 = time.perf_counter()
        splits, meta = _write(opts, enc, out, settings, inputs_sha)
        _report(out, splits, enc, time.perf_counter() - t0, say)
    return meta


def _write(opts: PrepareOptions, enc: _Encoding, out: Path, settings: dict, inputs_sha: str) -> tuple[dict, dict]:
    """Both splits into temporary files, then renamed into place with meta.json last; -> (split stats, meta)."""
    writers: dict[str, _SplitWriter] = {}
    tok_dir = out / f".tokenizer.{os.getpid()}.tmp"
    try:
        writers.update((split, _SplitWriter(out, split)) for split in SPLITS)
        if enc.holdout.method == "hash":  # one pass; each worker sends held-out documents to validation
            _tokenize(opts.source, "train", writers["train"], writers["validation"], enc)
        else:
            _tokenize(opts.source, "train", writers["train"], None, enc)
            val_split = "train" if opts.val_source else "validation"  # a separate val source is read whole
            _tokenize(opts.val_source or opts.source, val_split, writers["validation"], None, enc)
        splits = {split: w.close() for split, w in writers.items()}
        _check_not_empty(splits, opts.source, opts.val_source)
        meta = _meta(opts, enc, enc.tok.save(tok_dir), splits, settings, inputs_sha)
        _commit(out, writers, tok_dir, meta)
    finally:
        for w in writers.values():
            w.discard()
        shutil.rmtree(tok_dir, ignore_errors=True)
    return splits, meta


def _report(out: Path, splits: dict, enc: _Encoding, seconds: float, say) -> None:
    """What prepare found: documents and paragraphs per split (a wrong --doc-split shows at once), speed."""
    for name, s in splits.items():
        say(f"{name}: {_count(s['documents'], 'document')}, {s['paragraphs'] / max(s['documents'], 1):,.1f} paragraphs "
            f"per document on average, {s['bytes']:,} bytes, {s['tokens']:,} tokens")
    n = sum(s["tokens"] for s in splits.values())
    say(f"prepared {out} ({enc.tok.name}, {enc.dtype}) in {seconds:.1f} s, {n / seconds / 1e6:.2f} M tokens/s with "
        f"{enc.num_proc} process(es)")
    replaced = sum(s["replaced_chars"] for s in splits.values())
    if replaced:
        say(f"warning: {replaced} undecodable byte sequence(s) were replaced by U+FFFD (meta.json replaced_chars)")


def encode_source(source: str, tok: Tokenizer, opts: SourceOptions) -> tuple[np.ndarray, dict]:
    """Every document of `source` (its validation split, for builtin and hf:) read and packed exactly as
    prepare writes a split, in memory: int64 ids and the split's stats (tokens, documents, bytes, ...)."""
    parts, stats = [], {"tokens": 0, "documents": 0, "paragraphs": 0, "bytes": 0, "replaced_chars": 0}
    for ids, _, part_stats, _ in _results(iter_tasks(source, "validation", opts), _Encoding(tok, "int64", opts,
                                                                                             Holdout("given"))):
        parts.append(ids)
        for k in stats:
            stats[k] += part_stats[k]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64), stats


def _tokenize(src: str, split: str, writer: "_SplitWriter", held_writer: "_SplitWriter | None", enc: _Encoding) -> None:
    """Stream one source split through the workers into `writer` (held-out documents into `held_writer`)."""
    label = f"{writer.final.stem}{'+validation' if held_writer else ''} {src}"
    bar = _Progress(label, source_bytes(src), enc.show)
    sizes: collections.deque = collections.deque()
    tasks = (sizes.append(_task_size(t)) or t for t in iter_tasks(src, split, enc.reading, enc.holdout.tail))
    for kept, held, kept_stats, held_stats in _results(tasks, enc):
        writer.write(kept, kept_stats)
        if held_writer is not None:
            held_writer.write(held, held_stats)
        bar.update({k: kept_stats[k] + held_stats[k] for k in ("documents", "tokens")}, sizes.popleft())
    bar.close()


def _task_size(task: Task) -> int:
    return len(task.data) if task.kind != "docs" else sum(map(len, task.data))


def _tokenizer_inputs(spec: str) -> list:
    path = Path(spec)
    if spec in ("gpt2", "gemma3") or spec.startswith("bpe:") or not path.is_file():
        return [spec]
    return [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]


def _make_tokenizer(opts: PrepareOptions, holdout: Holdout, say) -> Tokenizer:
    vocab = parse_bpe_spec(opts.tokenizer)
    if vocab is None:
        return load_tokenizer(opts.tokenizer)
    docs = _bpe_docs(opts, holdout)
    if opts.tokenizer == BPE_AUTO:
        vocab, n_bytes, docs = auto_bpe_docs(docs)
        more = "or more " if vocab == AUTO_VOCAB[1] else ""
        say(f"bpe:auto: {n_bytes:,} {more}bytes of training text -> bpe:{vocab} (docs/DATA.md, Tokenizers)")
    say(f"training bpe:{vocab} on up to {opts.bpe_train_mb:g} MB of {opts.source} ...")
    return train_bpe(docs, vocab)


def _bpe_docs(opts: PrepareOptions, holdout: Holdout) -> Iterator[str]:
    """The training split's text (held-out documents excluded), up to bpe_train_mb MB (sources.first_mb)."""
    pieces = iter_pieces(opts.source, "train", opts.reading(), holdout.tail)
    return first_mb((p.text for p in pieces if not holdout.held(p)), opts.bpe_train_mb)


def _check_not_empty(splits: dict, source: str, val_source: str | None) -> None:
    if splits["train"]["documents"] == 0:
        raise TinyGemmaError(f"source {source!r} has no documents (empty files?); nothing was written")
    if splits["validation"]["documents"] == 0:
        hint = f"source {val_source!r} has no documents" if val_source else "no document was held out"
        raise TinyGemmaError(f"the validation split is empty ({hint}): pass --val-source FILE or a larger --val-fraction")


def default_num_proc() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _meta(opts: PrepareOptions, enc: _Encoding, tok_ref: dict, splits: dict, settings: dict, inputs_sha: str) -> dict:
    holdout = enc.holdout
    how = {"method": holdout.method}
    if holdout.method != "given":
        how["fraction"] = holdout.fraction
    if holdout.tail is not None:
        how.update(file=holdout.tail.path, offset=holdout.tail.offset, boundary=holdout.tail.boundary)
    source = {"train": opts.source, "validation": opts.val_source or opts.source, "validation_split": holdout.why,
              "holdout": how}
    return make_meta(tok_ref, enc.dtype, splits, source=source, settings=settings, inputs_sha256=inputs_sha)


def _commit(out: Path, writers: dict, tok_dir: Path, meta: dict) -> None:
    """Rename the new files into place, meta.json last (the file that makes them valid). meta.json is
    written to its temporary name before the renames, so a full disk cannot strike between them."""
    with atomic_path(out / "meta.json") as meta_tmp:
        meta_tmp.write_text(json_text(meta), encoding="utf-8")
        if (tok_dir / "tokenizer.json").exists():
            os.replace(tok_dir / "tokenizer.json", out / "tokenizer.json")
        for w in writers.values():
            os.replace(w.tmp, w.final)
    if "path" not in meta["tokenizer"]:
        (out / "tokenizer.json").unlink(missing_ok=True)  # left by an earlier file-based run


def _remove_stale_temps(out: Path) -> None:
    """Delete temporaries left by a killed prepare (their pid is in the name and no longer runs)."""
    for p in [*out.glob(".*.bin.*.tmp"), *out.glob(".tokenizer.*.tmp")]:
        pid = p.name.split(".")[-2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _up_to_date(out: Path, inputs_sha: str) -> dict | None:
    try:
        meta = read_meta(out)
    except TinyGemmaError:
        return None
    if meta.get("inputs_sha256") != inputs_sha:
        return None
    for split in SPLITS:
        path = out / f"{split}.bin"
        if not path.exists() or path.stat().st_size != meta[split]["tokens"] * np.dtype(meta["dtype"]).itemsize:
            return None
    return meta
