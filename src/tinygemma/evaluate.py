"""Loss, perplexity and bits per byte on a prepared split or a text file.

One deterministic pass, not random batches: the token stream is preceded by one start token
(bos if the tokenizer has one, else end-of-text, the separator the model saw between
documents) and cut into consecutive windows of `block_size`. Every token of the stream is
predicted exactly once. With `stride < block_size` the windows overlap and only each window's
last `stride` targets are scored (the first window scores all), so every prediction after the
first window sees at least `block_size - stride` tokens of context; the default
`stride = block_size` gives non-overlapping windows (fastest; tokens early in a window have
little context, so the figures are slightly pessimistic).

bits per byte = total NLL in bits / UTF-8 bytes of the text. Unlike loss and perplexity
(per token) it is comparable across tokenizers. For a prepared split the byte count is
meta.json's, the bytes of the source documents the split was tokenized from.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tinygemma.errors import TinyGemmaError
from tinygemma.model import Gemma3Model

LOGIT_BUDGET = 64 * 2**20  # bytes of fp32 logits alive at once in the chunked NLL


def _windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int]]:
    """(start, first scored offset) per window over a stream of n_tokens + 1 ids (start token first)."""
    starts, scored_from = [0], [0]
    while starts[-1] + block_size < n_tokens:
        starts.append(starts[-1] + stride)
        scored_from.append(block_size - stride)
    return list(zip(starts, scored_from))


def _batch(ids: torch.Tensor, windows, block_size: int, pad_id: int):
    """Windows -> inputs (B, T) and targets (B, T) with -1 on padding and unscored positions."""
    x = torch.full((len(windows), block_size), pad_id, dtype=torch.long)
    y = torch.full((len(windows), block_size), -1, dtype=torch.long)
    for b, (s, first) in enumerate(windows):
        chunk = ids[s : s + block_size + 1]
        n = chunk.numel() - 1
        x[b, :n], y[b, :n] = chunk[:-1], chunk[1:]
        y[b, : min(first, n)] = -1
    return x, y


@torch.no_grad()
def nll_sum(model: Gemma3Model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum of -log p(y | x) in nats over targets != -1, without materialising all (B, T, V) logits."""
    h = model.hidden_states(x).reshape(-1, model.config.hidden_size)  # (B*T, d)
    y = y.reshape(-1)
    keep = y != -1
    h, y = h[keep], y[keep]
    rows = max(1, LOGIT_BUDGET // (4 * model.config.vocab_size))
    total = 0.0
    for i in range(0, y.numel(), rows):
        logits = F.linear(h[i : i + rows], model.embed_tokens.weight).float()
        total += float(F.cross_entropy(logits, y[i : i + rows], reduction="sum"))
    return total


@torch.no_grad()
def evaluate_tokens(model: Gemma3Model, tokens, n_bytes: int, start_id: int, block_size: int = 256,
                    batch_size: int = 8, device="cpu", stride: int | None = None) -> dict:
    """Loss (nats/token), perplexity and bits per byte of `tokens` (1-D ids) in strided windows."""
    stride = block_size if stride is None else stride
    if not 0 < stride <= block_size:
        raise TinyGemmaError(f"stride must be in 1..block_size ({block_size}), got {stride}")
    if len(tokens) == 0:
        raise TinyGemmaError("nothing to evaluate: the text has no tokens")
    ids = torch.cat((torch.tensor([start_id]), torch.as_tensor(np.asarray(tokens, dtype=np.int64))))
    was_training = model.training
    model.eval()
    total = 0.0
    windows = _windows(len(tokens), block_size, stride)
    try:
        for i in range(0, len(windows), batch_size):
            x, y = _batch(ids, windows[i : i + batch_size], block_size, pad_id=start_id)
            total += nll_sum(model, x.to(device), y.to(device))
    finally:
        model.train(was_training)
    loss = total / len(tokens)
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": total / math.log(2) / max(n_bytes, 1),
            "tokens": len(tokens), "bytes": n_bytes, "block_size": block_size, "stride": stride}


def _start_id(bos_id: int | None, eot_id: int) -> int:
    return bos_id if bos_id is not None else eot_id


def evaluate_split(model: Gemma3Model, data_dir: str | Path, split: str = "validation", block_size: int = 256,
                   batch_size: int = 8, device="cpu", stride: int | None = None, max_tokens: int | None = None) -> dict:
    """Evaluate on a prepared split (data_dir/<split>.bin + meta.json).

    `max_tokens` scores only the whole documents within the split's first max_tokens tokens;
    their byte count is then measured by decoding them (exact, since prepare round-trips).
    """
    from tinygemma.data import load_split, read_meta

    meta = read_meta(data_dir)
    data = load_split(data_dir, split)
    name = "validation" if split in ("val", "valid") else split
    tok = meta["tokenizer"]
    if tok.get("vocab_size", 0) > model.config.vocab_size:
        raise TinyGemmaError(f"the data's tokenizer has {tok['vocab_size']} ids but the model only "
                             f"{model.config.vocab_size}: evaluate with data prepared for this model's tokenizer")
    n_bytes = meta[name]["bytes"]
    if max_tokens is not None and max_tokens < len(data):
        data, n_bytes = _document_prefix(data, max_tokens, tok, data_dir)
    out = evaluate_tokens(model, data, n_bytes, _start_id(tok.get("bos_id"), tok["eot_id"]),
                          block_size, batch_size, device, stride)
    return {"split": name, **out}


def _document_prefix(data, max_tokens: int, tok_ref: dict, data_dir) -> tuple[np.ndarray, int]:
    """The whole documents (each ending in eot) within the first max_tokens ids, and their UTF-8 bytes."""
    from tinygemma.tokenizer import load_tokenizer

    head = np.asarray(data[:max_tokens], dtype=np.int64)
    ends = np.flatnonzero(head == tok_ref["eot_id"])
    if len(ends) == 0:
        raise TinyGemmaError(f"no whole document in the first {max_tokens} tokens; raise --max-tokens")
    head = head[: ends[-1] + 1]
    tok = load_tokenizer(tok_ref, data_dir)
    docs = np.split(head, ends + 1)[:-1]  # each ends with eot
    return head, sum(len(tok.decode(d[:-1].tolist()).encode("utf-8")) for d in docs)


def evaluate_text(model: Gemma3Model, tokenizer, path: str | Path, block_size: int = 256, batch_size: int = 8,
                  device="cpu", stride: int | None = None) -> dict:
    """Evaluate on a UTF-8 text file, tokenized as one document."""
    path = Path(path)
    if not path.is_file():
        raise TinyGemmaError(f"text file {path} not found")
    text = path.read_text(encoding="utf-8")
    tokens = tokenizer.encode(text)
    out = evaluate_tokens(model, tokens, len(text.encode("utf-8")), _start_id(tokenizer.bos_id, tokenizer.eot_id),
                          block_size, batch_size, device, stride)
    return {"text": str(path), **out}
