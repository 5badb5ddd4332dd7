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
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from tinygemma.data import DEFAULT_DIR, FORMAT_VERSION, read_meta
from tinygemma.errors import TinyGemmaError
from tinygemma.fsutil import atomic_write_json
from tinygemma.sources import SPLITS, SourceOptions, describe_inputs, has_validation, iter_documents, iter_tasks, \
    parse_task, source_bytes
from tinygemma.tokenizer import Tokenizer, load_tokenizer, parse_bpe_spec, train_bpe

DEFAULT_SOURCE = "hf:roneneldan/TinyStories"
HOLDOUT_BUCKETS = 1_000_000


# ---------------------------------------------------------------- worker side
_WORKER: dict = {}


def _init_worker(tok: Tokenizer, dtype: str, holdout: float, in_child: bool) -> None:
    if in_child:  # one process per core already: no extra tokenizer threads
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tok=tok, dtype=np.dtype(dtype), holdout=holdout)


def _encode_task(task) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """One task -> (ids kept, ids held out for validation, stats kept, stats held out)."""
    docs, replaced = parse_task(task)
    holdout = _WORKER["holdout"]
    if holdout > 0:
        held = [is_held_out(d, holdout) for d in docs]
        kept_docs = [d for d, h in zip(docs, held) if not h]
        held_docs = [d for d, h in zip(docs, held) if h]
    else:
        kept_docs, held_docs = docs, []
    kept, kept_stats = _pack(kept_docs)
    out, out_stats = _pack(held_docs)
    kept_stats["replaced_chars"] = replaced  # counted where the bytes were read
    return kept, out, kept_stats, out_stats


def is_held_out(doc: str, fraction: float) -> bool:
    """Deterministic document-level validation split: by a hash of the text, so it does not
    depend on order, chunking or worker count, and repeated documents land in one split."""
    # crc32 rather than a cryptographic hash: ~4x cheaper per document, and uniform enough for buckets.
    return zlib.crc32(doc.encode("utf-8")) % HOLDOUT_BUCKETS < fraction * HOLDOUT_BUCKETS


def _pack(docs: list[str]) -> tuple[np.ndarray, dict]:
    """Encode documents into one array: doc0 eot doc1 eot ... (flat, in the .bin dtype)."""
    tok: Tokenizer = _WORKER["tok"]
    dtype = _WORKER["dtype"]
    ids = tok.encode_batch(docs) if docs else []
    n = sum(map(len, ids)) + len(ids)
    eot = (tok.eot_id,)
    flat = itertools.chain.from_iterable(itertools.chain.from_iterable(zip(ids, itertools.repeat(eot))))
    arr = np.fromiter(flat, dtype=np.int64, count=n)  # int64 first so out-of-range ids are caught, not wrapped
    if n and int(arr.max()) >= tok.vocab_size:
        raise TinyGemmaError(f"tokenizer {tok.name} produced id {int(arr.max())} >= its vocab_size "
                             f"{tok.vocab_size}; the tokenizer file is inconsistent")
    n_bytes = sum(len(d) if d.isascii() else len(d.encode("utf-8")) for d in docs)
    return arr.astype(dtype), {"tokens": n, "documents": len(docs), "bytes": n_bytes, "replaced_chars": 0}


def _results(tasks: Iterator, num_proc: int, init_args: tuple) -> Iterator[tuple]:
    """Encode tasks on `num_proc` processes; yield results in task order, <= 2 per worker in flight."""
    if num_proc <= 1:
        _init_worker(*init_args, in_child=False)
        yield from map(_encode_task, tasks)
        return
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    # Set before forking: HF tokenizers then skips its "forked after parallelism" warning.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with ctx.Pool(num_proc, initializer=_init_worker, initargs=(*init_args, True)) as pool:
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(_encode_task, (task,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ---------------------------------------------------------------- writing
class _SplitWriter:
    """Appends ids to a temporary .bin beside the final one, hashing as it goes."""

    def __init__(self, out: Path, split: str):
        self.final = out / f"{split}.bin"
        self.tmp = out / f".{split}.bin.{os.getpid()}.tmp"
        self.file = open(self.tmp, "wb")
        self.sha = hashlib.sha256()
        self.stats = {"tokens": 0, "documents": 0, "bytes": 0, "replaced_chars": 0}

    def write(self, arr: np.ndarray, stats: dict) -> None:
        buf = memoryview(arr).cast("B")
        self.file.write(buf)
        self.sha.update(buf)
        for k in self.stats:
            self.stats[k] += stats[k]

    def close(self) -> dict:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return {"file": self.final.name, **self.stats, "sha256": self.sha.hexdigest()}

    def discard(self) -> None:
        """Close and delete the temporary file if it was not renamed into place."""
        self.file.close()
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
def prepare(source: str = DEFAULT_SOURCE, *, val_source: str | None = None, tokenizer: str = "gpt2",
            out: str | os.PathLike = DEFAULT_DIR, num_proc: int | None = None, text_field: str = "text",
            doc_split: str = "blank", val_fraction: float = 0.01, builtin_mb: float = 20.0,
            builtin_val_mb: float = 1.0, seed: int = 0, hf_mb: float | None = None, bpe_train_mb: float = 200.0,
            force: bool = False,
            chunk_bytes: int = 1 << 20, progress: bool | None = None, quiet: bool = False) -> dict:
    """Tokenize `source` (and `val_source`) into `out`/{train,validation}.bin + meta.json; return meta."""
    out = Path(out)
    opts = SourceOptions(text_field=text_field, doc_split=doc_split, builtin_mb=builtin_mb,
                         builtin_val_mb=builtin_val_mb, seed=seed, hf_mb=hf_mb, chunk_bytes=chunk_bytes)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if not 0 < val_fraction < 1:
        raise TinyGemmaError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    num_proc = max(1, int(num_proc or default_num_proc()))
    settings = {"format_version": FORMAT_VERSION, "source": source, "val_source": val_source,
                "tokenizer": tokenizer, "val_fraction": val_fraction, "bpe_train_mb": bpe_train_mb, **opts.settings()}
    inputs = [describe_inputs(source, opts), describe_inputs(val_source, opts) if val_source else None,
              _tokenizer_inputs(tokenizer)]
    inputs_sha = hashlib.sha256(json.dumps([settings, inputs], sort_keys=True).encode()).hexdigest()
    if out.is_dir():
        _remove_stale_temps(out)
    if not force and (meta := _up_to_date(out, inputs_sha)):
        say(f"{out} is already up to date (same inputs and settings); nothing to do (use --force to rebuild)")
        return meta

    holdout = 0.0 if (val_source or has_validation(source)) else val_fraction
    tok = _make_tokenizer(tokenizer, source, holdout, bpe_train_mb, opts, say)
    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    writers = {split: _SplitWriter(out, split) for split in SPLITS}
    tok_dir = out / f".tokenizer.{os.getpid()}.tmp"
    show = sys.stderr.isatty() if progress is None else progress
    try:
        if holdout:  # one pass; each worker sends held-out documents to validation
            _tokenize(source, "train", writers["train"], writers["validation"], tok, dtype, holdout, num_proc, opts, show)
        else:
            _tokenize(source, "train", writers["train"], None, tok, dtype, 0.0, num_proc, opts, show)
            val_split = "train" if val_source else "validation"  # a separate val source is read whole
            _tokenize(val_source or source, val_split, writers["validation"], None, tok, dtype, 0.0, num_proc, opts, show)
        splits = {split: w.close() for split, w in writers.items()}
        _check_not_empty(splits, source, val_source, holdout)
        meta = _meta(source, val_source, holdout, tok.save(tok_dir), dtype, splits, settings, inputs_sha)
        _commit(out, writers, tok_dir, meta)
    finally:
        for w in writers.values():
            w.discard()
        shutil.rmtree(tok_dir, ignore_errors=True)
    dt = time.perf_counter() - t0
    n = sum(s["tokens"] for s in splits.values())
    say(f"prepared {out}: " + ", ".join(f"{k} {v['tokens']:,} tokens / {v['documents']:,} docs" for k, v in splits.items())
        + f" ({tok.name}, {dtype}) in {dt:.1f} s, {n / dt / 1e6:.2f} M tokens/s with {num_proc} process(es)")
    replaced = sum(s["replaced_chars"] for s in splits.values())
    if replaced:
        say(f"warning: {replaced} undecodable byte sequence(s) were replaced by U+FFFD (meta.json replaced_chars)")
    return meta


def _tokenize(src: str, split: str, writer: "_SplitWriter", held_writer: "_SplitWriter | None", tok: Tokenizer,
              dtype: str, holdout: float, num_proc: int, opts: SourceOptions, show: bool) -> None:
    """Stream one source split through the workers into `writer` (held-out documents into `held_writer`)."""
    label = f"{writer.final.stem}{'+validation' if held_writer else ''} {src}"
    bar = _Progress(label, source_bytes(src), show)
    sizes: collections.deque = collections.deque()
    tasks = (sizes.append(_task_size(t)) or t for t in iter_tasks(src, split, opts))
    for kept, held, kept_stats, held_stats in _results(tasks, num_proc, (tok, dtype, holdout)):
        writer.write(kept, kept_stats)
        if held_writer is not None:
            held_writer.write(held, held_stats)
        bar.update({k: kept_stats[k] + held_stats[k] for k in ("documents", "tokens")}, sizes.popleft())
    bar.close()


def _task_size(task) -> int:
    return len(task[1]) if task[0] != "docs" else sum(map(len, task[1]))


def _tokenizer_inputs(spec: str) -> list:
    path = Path(spec)
    if spec in ("gpt2", "gemma3") or spec.startswith("bpe:") or not path.is_file():
        return [spec]
    return [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]


def _make_tokenizer(spec: str, source: str, holdout: float, bpe_train_mb: float, opts: SourceOptions, say) -> Tokenizer:
    vocab = parse_bpe_spec(spec)
    if vocab is None:
        return load_tokenizer(spec)
    say(f"training {spec} on up to {bpe_train_mb:g} MB of {source} ...")
    return train_bpe(_bpe_docs(source, holdout, bpe_train_mb, opts), vocab)


def _bpe_docs(source: str, holdout: float, budget_mb: float, opts: SourceOptions) -> Iterator[str]:
    """Training documents only (held-out ones excluded), up to `budget_mb`."""
    total = 0
    for doc in iter_documents(source, "train", opts):
        if holdout and is_held_out(doc, holdout):
            continue
        if total >= budget_mb * 1e6:
            return
        total += len(doc)
        yield doc


def _check_not_empty(splits: dict, source: str, val_source: str | None, holdout: float) -> None:
    if splits["train"]["documents"] == 0:
        raise TinyGemmaError(f"source {source!r} has no documents (empty files?); nothing was written")
    if splits["validation"]["documents"] == 0:
        hint = (f"source {val_source!r} has no documents" if val_source else
                f"no document fell into the {holdout:g} validation fraction")
        raise TinyGemmaError(f"the validation split is empty ({hint}): pass --val-source FILE or a larger --val-fraction")


def default_num_proc() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _meta(source, val_source, holdout, tok_ref, dtype, splits, settings, inputs_sha) -> dict:
    from tinygemma import __version__

    return {
        "format_version": FORMAT_VERSION,
        "tinygemma_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"train": source, "validation": val_source or source,
                   "validation_split": f"held out {holdout:g} of documents by text hash" if holdout else "given"},
        "tokenizer": tok_ref,
        "dtype": dtype,
        "layout": "each document is followed by tokenizer.eot_id; no bos is written",
        **splits,
        "settings": settings,
        "inputs_sha256": inputs_sha,
    }


def _commit(out: Path, writers: dict, tok_dir: Path, meta: dict) -> None:
    """Rename the new files into place, meta.json last (the file that makes them valid)."""
    if (tok_dir / "tokenizer.json").exists():
        os.replace(tok_dir / "tokenizer.json", out / "tokenizer.json")
    for w in writers.values():
        os.replace(w.tmp, w.final)
    atomic_write_json(out / "meta.json", meta)
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
