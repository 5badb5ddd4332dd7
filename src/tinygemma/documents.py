"""Documents in text, and the pieces a long one is read in.

How a text file is cut into documents (`file_separator`, docs/DATA.md):
- "auto" (the default): a file that contains `<|endoftext|>` (TinyStories' own separator) is split
  there; any other file is ONE document (a book, a log, a user's own text), its blank lines kept;
- "line": one document per line; "blank": one per blank-line-separated paragraph (this drops
  every paragraph break); anything else is a literal separator (backslash escapes decoded).
Inside a document the text is kept exactly; documents are stripped of leading and trailing
whitespace and empty ones are dropped. Undecodable bytes are replaced by U+FFFD and counted.

How the output stays the same for every chunk size and worker count, in bounded memory: a text
file is read in blocks of ~chunk_bytes cut just after a separator (`text_tasks`), so a block
never splits a document. A document longer than `segment_bytes` is cut into pieces by a rule
that looks only at its own text (`_segments`): each piece ends before the last paragraph (else
line, word, character) that starts within `segment_bytes` of the piece's start. The reader
applies the rule while it streams a document too long to hold (`_long_document`); a worker
applies it to a long document inside a block (`parse_text`). Pieces are tokenized separately and
concatenated with no end-of-text between them (`data.pack`).

`find_tail_cut` chooses where a validation split cut off the end of a small source begins.
"""

from __future__ import annotations

import functools
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

from tinygemma.errors import TinyGemmaError

AUTO_SEPARATOR = "<|endoftext|>"  # TinyStories' own files put it on a line between stories
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")  # one or more blank (whitespace-only) lines
_BLANK_LINES = re.compile(rb"\n\s*\n")
_TEXT = re.compile(rb"\S")
# Where a piece of a long document may end, best first: just before a paragraph (after the blank
# lines that precede it), a line, a word, or any character (never inside a UTF-8 sequence).
_BOUNDARIES = (
    ("paragraph", re.compile(rb"\n[ \t\r\f\v]*\n\s*(?=\S)")),
    ("line", re.compile(rb"\n\s*(?=\S)")),
    ("word", re.compile(rb"\s+(?=\S)")),
    ("character", re.compile(rb"(?=[^\s\x80-\xbf])")),
)


@dataclass(frozen=True)
class Separator:
    """Where documents end in a text file: kind "literal" (at `text`), "line", "blank" or "none" (one document)."""

    kind: str
    text: str = ""

    def split(self, raw: bytes) -> list[bytes]:
        if self.kind == "none":
            return [raw]
        if self.kind == "line":
            return raw.split(b"\n")
        if self.kind == "blank":
            return _BLANK_LINES.split(raw)
        return raw.split(self.text.encode("utf-8"))

    def last_end(self, buf: bytes) -> int:
        """Where a block may end: just after the last separator in `buf` (0 if there is none)."""
        if self.kind == "literal":
            sep = self.text.encode("utf-8")
            i = buf.rfind(sep)
            return i + len(sep) if i >= 0 else 0
        if self.kind == "line":
            return buf.rfind(b"\n") + 1
        if self.kind == "blank":  # after the last newline that ends a blank line
            i = buf.rfind(b"\n")
            while i > 0:
                j = buf.rfind(b"\n", 0, i)
                if j >= 0 and not buf[j + 1 : i].strip():
                    return i + 1
                i = j
        return 0

    def safe_end(self, buf: bytes) -> int:
        """Bytes of `buf` before this index cannot belong to a separator that the next bytes complete."""
        return len(buf) - len(self.text.encode("utf-8")) + 1 if self.kind == "literal" else len(buf)


class Piece(NamedTuple):
    """A document, or a piece of a long one: `opens` its start, `closes` its end. `key` (a hash of the
    document's first piece) decides which split a held-out document goes to."""

    text: str
    opens: bool = True
    closes: bool = True
    key: int = 0


class Task(NamedTuple):
    """What one worker encodes: raw bytes of a text file ("text"), raw JSON lines ("jsonl") or strings ("docs").

    A "text" task begins inside a document when not `opens` (then `key` is that document's) and ends
    inside one when not `closes`."""

    kind: str
    data: bytes | list[str]
    origin: str = ""
    separator: Separator = Separator("none")
    opens: bool = True
    closes: bool = True
    key: int = 0


@dataclass(frozen=True)
class TailCut:
    """A validation split cut off the end of a source: the text of `path` from byte `offset`
    (at a `boundary`: document, paragraph, line, word or character) and every file after it."""

    path: str
    offset: int
    boundary: str


# ---------------------------------------------------------------- which separator
def literal_separator(spec: str) -> str:
    """`--doc-split` as a literal separator, backslash escapes (\\n, \\t, \\\\, \\uXXXX) decoded."""
    try:
        text = spec.encode("latin-1", "backslashreplace").decode("unicode_escape") if "\\" in spec else spec
    except UnicodeDecodeError as e:
        raise TinyGemmaError(f"--doc-split {spec!r}: bad backslash escape ({e.reason})") from None
    if not text:
        raise TinyGemmaError("--doc-split is empty: give auto, line, blank or a separator such as '<|endoftext|>'")
    return text


def file_separator(path: Path, doc_split: str) -> Separator:
    """How `doc_split` cuts this text file into documents ("auto" looks for <|endoftext|> in it)."""
    if doc_split == "auto":
        stat = path.stat()
        found = _contains(str(path), stat.st_size, stat.st_mtime_ns, AUTO_SEPARATOR.encode())
        return Separator("literal", AUTO_SEPARATOR) if found else Separator("none")
    if doc_split in ("line", "blank"):
        return Separator(doc_split)
    return Separator("literal", literal_separator(doc_split))


@functools.lru_cache(maxsize=1024)
def _contains(path: str, size: int, mtime_ns: int, needle: bytes, block: int = 1 << 24) -> bool:
    """Whether the file holds `needle` (read until the first one; size and mtime key the cache)."""
    with open(path, "rb") as f:
        tail = b""
        while data := f.read(block):
            if needle in tail + data[: len(needle)] or needle in data:
                return True
            tail = data[-len(needle) + 1 :]
    return False


# ---------------------------------------------------------------- reading a text file
def text_tasks(path: Path, start: int, end: int | None, sep: Separator, chunk_bytes: int,
               segment_bytes: int) -> Iterator[Task]:
    """A text file's bytes [start, end) as tasks: blocks cut after a separator, pieces of long documents."""
    carry, opens, key = b"", True, 0  # carry: the unsent bytes; they begin a document if `opens`
    for data in read_range(path, start, end, chunk_bytes):
        buf = carry + data
        cut = sep.last_end(buf)
        if cut:
            yield Task("text", buf[:cut], str(path), sep, opens, True, key)
            carry, opens, key = buf[cut:], True, 0
        else:  # buf is (the start of) one document
            carry, opens, key = yield from _long_document(buf, str(path), sep, opens, key, segment_bytes)
    if carry.strip() or not opens:
        yield Task("text", carry, str(path), sep, opens, True, key)


def _long_document(buf: bytes, origin: str, sep: Separator, opens: bool, key: int, size: int):
    """Send the pieces of the document in `buf` that are certain already (its text goes on past
    segment_bytes from the piece start, so `_segments` would cut there too); return what is left."""
    start = len(buf) - len(buf.lstrip()) if opens else 0
    sent, safe = 0, sep.safe_end(buf)
    while start + size < safe and _TEXT.search(buf, start + size, safe):
        end = start + _cut(buf[start : start + size + 1])
        task = Task("text", buf[start:end], origin, sep, opens, False, key)
        if opens:
            key = parse_text(task, size)[0][0].key  # later pieces go where the document's first piece goes
        yield task
        sent = start = end
        opens = False
    return buf[sent:], opens, key


def read_range(path: Path, start: int, end: int | None, size: int) -> Iterator[bytes]:
    """Bytes [start, end) of a file in blocks of `size`, without a UTF-8 byte-order mark at its start."""
    with open(path, "rb") as f:
        left = (os.fstat(f.fileno()).st_size if end is None else end) - start
        f.seek(start)
        if start == 0 and f.read(3) != b"\xef\xbb\xbf":  # a byte-order mark is not text
            f.seek(0)
        left -= f.tell() - start
        while left > 0 and (data := f.read(min(size, left))):
            left -= len(data)
            yield data


# ---------------------------------------------------------------- bytes -> pieces (worker side)
def parse_text(task: Task, size: int) -> tuple[list[Piece], int]:
    """A "text" task -> (its documents' pieces in order, number of undecodable byte sequences replaced)."""
    parts = task.separator.split(task.data)
    pieces, replaced = [], 0
    for i, raw in enumerate(parts):
        more, n = _raw_pieces(raw, task.opens or i > 0, task.closes or i < len(parts) - 1, task.key, size)
        pieces += more
        replaced += n
    return pieces, replaced


def _raw_pieces(raw: bytes, opens: bool, closes: bool, key: int, size: int) -> tuple[list[Piece], int]:
    """One document's bytes, or the part of it in this task, -> its pieces (stripped where it opens/closes)."""
    if opens:
        raw = raw.lstrip()
    if closes:
        raw = raw.rstrip()
    if opens and closes and not raw:
        return [], 0  # an empty document
    texts, replaced = [], 0
    for segment in _segments(raw, size):
        text, n = decode_utf8(segment)
        texts.append(text)
        replaced += n
    if opens:
        texts[0] = texts[0].lstrip()  # also the Unicode whitespace that bytes.strip() leaves
    if closes:
        texts[-1] = texts[-1].rstrip()
    if opens and closes and texts == [""]:
        return [], replaced
    return _as_pieces(texts, opens, closes, key), replaced


def str_pieces(docs: list[str], size: int) -> list[Piece]:
    """Whole documents given as text (JSON, parquet, hf, builtin) -> pieces."""
    pieces = []
    for doc in docs:
        doc = doc.strip()
        if not doc:
            continue
        if 4 * len(doc) <= size or len(raw := doc.encode("utf-8")) <= size:
            pieces.append(Piece(doc, key=zlib.crc32(doc.encode("utf-8"))))
        else:  # the cuts fall between UTF-8 characters, so each piece decodes on its own
            pieces += _as_pieces([s.decode("utf-8") for s in _segments(raw, size)], True, True, 0)
    return pieces


def _as_pieces(texts: list[str], opens: bool, closes: bool, key: int) -> list[Piece]:
    if opens:  # the document's key is its first piece's: the same however the document reached the worker
        key = zlib.crc32(texts[0].encode("utf-8"))
    last = len(texts) - 1
    return [Piece(t, opens and i == 0, closes and i == last, key) for i, t in enumerate(texts)]


def _segments(raw: bytes, size: int) -> list[bytes]:
    """A document's bytes (from a piece start) cut into pieces of at most `size` bytes by `_cut`."""
    out, start = [], 0
    while len(raw) - start > size:
        end = start + _cut(raw[start : start + size + 1])
        out.append(raw[start:end])
        start = end
    out.append(raw[start:])
    return out


def _cut(window: bytes) -> int:
    """Where a piece that begins `window` ends: just before the last paragraph in it (after the blank
    lines before that paragraph), else before the last line, word or character; 0 < cut < len(window).

    The byte after the cut is never whitespace, so the next piece starts with text."""
    for _, boundary in _BOUNDARIES:
        cut = 0
        for m in boundary.finditer(window):
            cut = m.end()
        if cut:
            return cut
    return len(window) - 1


def decode_utf8(raw: bytes) -> tuple[str, int]:
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - raw.count("\ufffd".encode())


# ---------------------------------------------------------------- the tail of a small source
def find_tail_cut(files: list[Path], doc_split: str, fraction: float, reach: int) -> TailCut:
    """Where a validation split cut off the end of a text source begins: the document boundary nearest
    the point `fraction` of the source's bytes before its end, looked for within `reach` bytes of
    that point; else the nearest paragraph break, else line break, space or character."""
    sizes = [p.stat().st_size for p in files]
    total = sum(sizes)
    point, k = round(total * (1 - fraction)), 0
    while k < len(files) - 1 and sum(sizes[: k + 1]) <= point:
        k += 1
    before = sum(sizes[:k])
    x = point - before  # the point inside files[k]
    lo, hi = max(0, x - reach), min(sizes[k], x + reach)
    with open(files[k], "rb") as f:
        f.seek(lo)
        window = f.read(hi - lo)
    ends = {e for e in (0, sizes[k]) if lo <= e <= hi} | {lo + e for e in _separator_ends(file_separator(
        files[k], doc_split), window)}
    tiers = [("document", ends)] + [(kind, {lo + m.end() for m in p.finditer(window)}) for kind, p in _BOUNDARIES]
    for kind, cuts in tiers:
        cuts = [c for c in cuts if 0 < before + c < total]
        if cuts:
            return TailCut(str(files[k]), min(cuts, key=lambda c: (abs(c - x), c)), kind)
    raise TinyGemmaError(f"{files[0]} is too small to hold out a validation split; pass --val-source FILE")


def _separator_ends(sep: Separator, window: bytes) -> list[int]:
    if sep.kind == "none":
        return []
    pattern = {"line": re.compile(rb"\n"), "blank": _BLANK_LINES}.get(sep.kind) or re.compile(
        re.escape(sep.text.encode("utf-8")))
    return [m.end() for m in pattern.finditer(window)]
