"""The prepared-data format: train.bin / validation.bin + meta.json, read back; get_batch().

Layout (docs/DATA.md, format_version 2): each .bin is a flat array of token ids; every document
is preceded by the tokenizer's <bos> when it has one (gemma3) and followed by its end-of-text id
(`pack`); dtype uint16 when the vocabulary fits (<= 65,536 ids), else uint32. meta.json says
which dtype, which tokenizer, and the tokens / documents / paragraphs / UTF-8 bytes / sha256 of
each split. tinygemma.prepare writes it from text; this module defines the layout (`pack`,
`start_token`, `bin_dtype`, `make_meta`), writes a folder from ids in memory (`write_prepared`)
and checks and reads it: the memmaps, the seed's get_batch, the trainer's resumable
BatchSampler, inspect.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from tinygemma.config import DATA_DIR
from tinygemma.errors import TinyGemmaError
from tinygemma.fsutil import atomic_write_bytes, atomic_write_json
from tinygemma.sources import SPLITS
from tinygemma.tokenizer import load_tokenizer

FORMAT_VERSION = 2  # 1: no <bos> was written; still read for tokenizers without one (same layout)
LAYOUT = "each document is preceded by tokenizer.bos_id (when not null) and followed by tokenizer.eot_id"


# ---------------------------------------------------------------- the layout
def start_token(bos_id: int | None, eot_id: int) -> int:
    """The token right before a document's first token in prepared data: <bos> when the tokenizer has
    one (`pack` writes it before every document), else end-of-text (which ends the document before).
    Evaluation reads a text after it and generation prompts begin with it, as the model was trained."""
    return eot_id if bos_id is None else bos_id


def pack(pieces: Iterable[tuple[list[int], bool, bool]], bos_id: int | None, eot_id: int) -> np.ndarray:
    """(ids, opens a document, closes it) per piece -> the flat int64 layout: [bos] doc eot [bos] doc eot ...

    A long document comes as several pieces; only its first is preceded by bos, only its last followed by eot."""
    bos, eot = ((bos_id,) if bos_id is not None else ()), (eot_id,)
    parts = []
    for ids, opens, closes in pieces:
        if opens:
            parts.append(bos)
        parts.append(ids)
        if closes:
            parts.append(eot)
    n = sum(map(len, parts))
    return np.fromiter(itertools.chain.from_iterable(parts), dtype=np.int64, count=n)


def bin_dtype(vocab_size: int) -> str:
    """The .bin dtype for a vocabulary: uint16 when every id fits, else uint32."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def make_meta(tokenizer: dict, dtype: str, splits: dict[str, dict], **extra) -> dict:
    """meta.json: the format, the tokenizer reference, the dtype, each split's stats, then `extra` (where from, ...)."""
    from tinygemma import __version__

    return {"format_version": FORMAT_VERSION, "tinygemma_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tokenizer": tokenizer, "dtype": dtype, "layout": LAYOUT, **splits, **extra}


def write_prepared(folder: str | os.PathLike, splits: dict[str, np.ndarray], tokenizer: dict,
                   bytes_per_token: float | None = None) -> dict:
    """A valid prepared folder from token ids in memory (tests, benchmarks, synthetic data); returns its meta.

    `splits` holds the train and validation ids in the layout (`pack`); `tokenizer` is a tokenizer reference
    (name, fingerprint, vocab_size, eot_id, bos_id). Each split's documents are its end-of-text ids; its UTF-8
    bytes are tokens x `bytes_per_token` (0, unknown, without it). prepare() is the way from text."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype, stats = bin_dtype(tokenizer["vocab_size"]), {}
    for split in SPLITS:
        ids = np.asarray(splits[split]).astype(dtype)
        atomic_write_bytes(folder / f"{split}.bin", ids.tobytes())
        stats[split] = {"tokens": len(ids), "documents": int(np.count_nonzero(ids == tokenizer["eot_id"])),
                        "bytes": round(len(ids) * bytes_per_token) if bytes_per_token else 0,
                        "sha256": hashlib.sha256(ids.tobytes()).hexdigest()}
    meta = make_meta(tokenizer, dtype, stats)
    atomic_write_json(folder / "meta.json", meta)
    return meta


# ---------------------------------------------------------------- loading
def read_meta(data_dir: str | os.PathLike = DATA_DIR) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise TinyGemmaError(f"{path} not found: run `tinygemma prepare --out {data_dir}` first")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TinyGemmaError(f"{path} is not valid JSON ({e}); re-run `tinygemma prepare --force`") from None
    version = meta.get("format_version")
    if version == 1 and (meta.get("tokenizer") or {}).get("bos_id") is not None:
        raise TinyGemmaError(f"{path} is format_version 1, written without the <bos> that now opens every document "
                             f"for this tokenizer; re-run `tinygemma prepare --force`")
    if version not in (1, FORMAT_VERSION):
        raise TinyGemmaError(f"{path} has format_version {version}, this tinygemma reads {FORMAT_VERSION}; "
                             "re-run `tinygemma prepare --force`")
    return meta


def split_name(split: str) -> str:
    """A split's name in the files: train or validation ("val" and "valid" are accepted for validation)."""
    if split in ("val", "valid"):
        return "validation"
    if split not in SPLITS:
        raise TinyGemmaError(f"unknown split {split!r}: use train or validation")
    return split


def load_split(data_dir: str | os.PathLike, split: str, verify: bool = False) -> np.memmap:
    """The split's token ids as a read-only memmap, checked against meta.json (sha256 and ids if `verify`)."""
    split = split_name(split)
    meta = read_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    info, dtype = meta[split], np.dtype(meta["dtype"])
    if not path.exists():
        raise TinyGemmaError(f"{path} not found but meta.json lists it: re-run `tinygemma prepare --force`")
    size = path.stat().st_size
    if size != info["tokens"] * dtype.itemsize:
        raise TinyGemmaError(f"{path} has {size:,} bytes but meta.json says {info['tokens']:,} {dtype} tokens "
                             f"({info['tokens'] * dtype.itemsize:,} bytes): re-run `tinygemma prepare --force`")
    if info["tokens"] == 0:
        raise TinyGemmaError(f"{path} is empty: re-run `tinygemma prepare` with more data")
    data = np.memmap(path, dtype=dtype, mode="r", shape=(info["tokens"],))
    if verify:
        _verify(path, data, info, meta)
    return data


def _verify(path: Path, data: np.memmap, info: dict, meta: dict) -> None:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            sha.update(block)
    if sha.hexdigest() != info["sha256"]:
        raise TinyGemmaError(f"{path} does not match the sha256 in meta.json (changed or corrupted): "
                             "re-run `tinygemma prepare --force`")
    vocab = meta["tokenizer"]["vocab_size"]
    top = max((int(data[i:i + (1 << 24)].max()) for i in range(0, len(data), 1 << 24)), default=0)
    if top >= vocab:
        raise TinyGemmaError(f"{path} holds token id {top} >= vocab_size {vocab} of {meta['tokenizer']['name']}: "
                             "re-run `tinygemma prepare --force`")


_SPLIT_CACHE: dict = {}


def _cached_split(data_dir: str | os.PathLike, split: str) -> tuple[np.memmap, int]:
    """load_split once per (folder, split, file state): get_batch runs every step."""
    split = split_name(split)
    path = Path(data_dir) / f"{split}.bin"
    meta_path = Path(data_dir) / "meta.json"
    key = (str(Path(data_dir).resolve()), split)
    try:
        state = (path.stat().st_mtime_ns, path.stat().st_size, meta_path.stat().st_mtime_ns)
    except FileNotFoundError:
        state = None
    hit = _SPLIT_CACHE.get(key)
    if hit is None or hit[0] != state or state is None:
        data = load_split(data_dir, split)
        hit = (state, data, read_meta(data_dir)["tokenizer"]["vocab_size"])
        _SPLIT_CACHE[key] = hit
    return hit[1], hit[2]


def _windows(data: np.memmap, starts: np.ndarray, block_size: int, device, vocab: int, split: str):
    """(B,) start offsets -> x, y int64 (B, block_size) on `device`; y is x shifted by one."""
    import torch

    win = data[starts[:, None] + np.arange(block_size + 1)]  # (B, T+1), read from the memmap
    if win.size and int(win.max()) >= vocab:
        raise TinyGemmaError(f"the {split} split holds token id {int(win.max())} >= vocab_size {vocab}: "
                             "the .bin does not belong to this meta.json; re-run `tinygemma prepare --force`")
    win = torch.from_numpy(win.astype(np.int64))
    x, y = win[:, :-1].contiguous(), win[:, 1:].contiguous()
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def _check_block(n_tokens: int, block_size: int, split: str) -> None:
    if block_size >= n_tokens:
        raise TinyGemmaError(f"block_size {block_size} >= the {n_tokens:,} tokens of the {split} split: "
                             "use a smaller block_size or prepare more data")


def get_batch(split: str, block_size: int, batch_size: int, device, data_dir: str | os.PathLike = DATA_DIR):
    """The seed's get_batch: random windows drawn with torch's global RNG; int64 x, y of shape (B, T)."""
    import torch

    data, vocab = _cached_split(data_dir, split)
    _check_block(len(data), block_size, split)
    ix = torch.randint(len(data) - block_size, (batch_size,)).numpy()
    return _windows(data, ix, block_size, device, vocab, split)


class BatchSampler:
    """Seeded random windows for the trainer; batch k depends only on (seed, rank, k), so
    saving the step counter is an exact resume. Each rank draws its own stream."""

    def __init__(self, data_dir: str | os.PathLike, split: str, block_size: int, batch_size: int, *,
                 seed: int = 0, rank: int = 0, world_size: int = 1, device="cpu"):
        self.data_dir, self.split = data_dir, split_name(split)
        self.block_size, self.batch_size = block_size, batch_size
        self.seed, self.rank, self.world_size, self.device = seed, rank, world_size, device
        self.step = 0
        data, _ = _cached_split(data_dir, self.split)
        _check_block(len(data), block_size, self.split)

    def next_batch(self):
        data, vocab = _cached_split(self.data_dir, self.split)
        rng = np.random.default_rng([self.seed, self.rank, self.step])
        starts = rng.integers(0, len(data) - self.block_size, size=self.batch_size)
        self.step += 1
        return _windows(data, starts, self.block_size, self.device, vocab, self.split)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size, "step": self.step,
                "split": self.split, "block_size": self.block_size, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        for k in ("split", "block_size", "batch_size"):
            if state.get(k) != getattr(self, k):
                raise TinyGemmaError(f"sampler state has {k}={state.get(k)!r} but this run uses {getattr(self, k)!r}; "
                                     "resume with the same data settings")
        self.seed, self.step = state["seed"], state["step"]


# ---------------------------------------------------------------- inspect
def inspect(data_dir: str | os.PathLike = DATA_DIR, windows: int = 3, length: int = 64, seed: int | None = None,
            verify: bool = False) -> str:
    """Stats from meta.json and a few decoded random windows of the training split."""
    meta = read_meta(data_dir)
    t = meta["tokenizer"]
    lines = [f"{data_dir}: tokenizer {t['name']} (vocab {t['vocab_size']:,}, eot {t['eot_id']}, bos {t['bos_id']}), "
             f"dtype {meta['dtype']}, source {meta['source']['train']}"]
    for split in SPLITS:
        s = meta[split]
        data = load_split(data_dir, split, verify=verify)
        paragraphs = f" {s['paragraphs'] / max(s['documents'], 1):.1f} paragraphs/doc" if "paragraphs" in s else ""
        lines.append(f"  {split:<10} {s['tokens']:>13,} tokens {s['documents']:>11,} docs {s['bytes']:>14,} bytes "
                     f"{s['bytes'] / max(s['tokens'], 1):.2f} bytes/token {s['tokens'] / max(s['documents'], 1):.0f} "
                     f"tokens/doc{paragraphs}{'  sha256 ok' if verify else ''}")
    tok = load_tokenizer(t, base_dir=data_dir)
    data = load_split(data_dir, "train")
    rng = np.random.default_rng(seed)
    n = min(length, len(data))
    for i in range(windows):
        start = int(rng.integers(0, len(data) - n + 1))
        lines.append(f"--- train window {i + 1} at token {start:,}:")
        lines.append(tok.decode(data[start:start + n]))
    return "\n".join(lines)
