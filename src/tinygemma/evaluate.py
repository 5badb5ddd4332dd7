"""Loss, perplexity and bits per byte on a prepared split or a text file: one reader, one loss.

A text file is read exactly as `prepare` reads a source (the same `--doc-split`, separators,
pieces and packing: `prepare.encode_source`), so a file and the same file prepared as a split
give the same token stream, the same byte count and the same figures.

One deterministic pass, not random batches: the stream is read after the start token the model
saw before every document in training (`data.start_token`: with <bos>, every document of the
stream already opens with it; without, end-of-text is put in front) and cut into consecutive
windows of `block_size`. Every token after the first is predicted exactly once. With
`stride < block_size` the windows overlap and only each window's last `stride` targets are
scored (the first window scores all), so every prediction after the first window sees at least
`block_size - stride` tokens of context; the default `stride = block_size` gives non-overlapping
windows (fastest; tokens early in a window have little context, so the figures are slightly
pessimistic).

`nll_sum` is the one loss every evaluation uses: this pass, the trainer's periodic validation
(`windows_loss`) and the quickstart's report. It is the model's own training loss (the chunked
head + cross-entropy of loss.py, without its gradients), summed instead of averaged.

bits per byte = total NLL in bits / UTF-8 bytes of the documents' text (meta.json's `bytes`).
Unlike loss and perplexity (per token) it is comparable across tokenizers.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch

from tinygemma.errors import TinyGemmaError


@torch.no_grad()
def nll_sum(model, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """(sum of -log p(y | x) in nats, number of targets) over the targets != -1 of a batch.

    `model` may be wrapped (DDP, FSDP2, compiled): it is called, so its hooks run. Its loss is the
    mean over the counted targets; times their count it is the sum, in float64 from here on."""
    n = int((y != -1).sum())
    if n == 0:
        return 0.0, 0
    _, loss = model(x, y)
    return float(loss) * n, n


def windows_loss(model, data: np.ndarray, starts: np.ndarray, block_size: int, batch_size: int, device,
                 amp=contextlib.nullcontext()) -> float:
    """Mean next-token loss (nats/token) over the windows data[s : s + block_size + 1] (the trainer's
    validation: the same fixed windows every time; every rank runs all of them)."""
    total, count = 0.0, 0
    with _eval_mode(model):
        for i in range(0, len(starts), batch_size):
            rows = [torch.from_numpy(np.asarray(data[s : s + block_size + 1], dtype=np.int64))
                    for s in starts[i : i + batch_size]]
            xy = torch.stack(rows).to(device)  # (b, T+1)
            with amp:
                nll, n = nll_sum(model, xy[:, :-1], xy[:, 1:])
            total, count = total + nll, count + n
    return total / count


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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


def scored_batches(tokens, start_id: int, block_size: int, batch_size: int, stride: int):
    """The evaluator's reading of a packed stream: (number of scored targets, an iterator of (x, y) batches),
    `start_id` put in front unless the stream opens with it, strided windows, -1 on unscored targets."""
    if not 0 < stride <= block_size:
        raise TinyGemmaError(f"stride must be in 1..block_size ({block_size}), got {stride}")
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if len(ids) and int(ids[0]) != start_id:
        ids = torch.cat((torch.tensor([start_id]), ids))
    n_scored = len(ids) - 1
    if n_scored < 1:
        raise TinyGemmaError("nothing to evaluate: the text has no tokens")
    windows = _windows(n_scored, block_size, stride)
    batches = (_batch(ids, windows[i : i + batch_size], block_size, pad_id=start_id)
               for i in range(0, len(windows), batch_size))
    return n_scored, batches


def evaluate_tokens(model, tokens, n_bytes: int, start_id: int, block_size: int = 256, batch_size: int = 8,
                    device="cpu", stride: int | None = None) -> dict:
    """Loss (nats/token), perplexity and bits per byte of a packed stream `tokens` (1-D ids) read after
    `start_id` (put in front unless the stream opens with it), in strided windows."""
    stride = block_size if stride is None else stride
    n_scored, batches = scored_batches(tokens, start_id, block_size, batch_size, stride)
    total = 0.0
    with _eval_mode(model):
        for x, y in batches:
            total += nll_sum(model, x.to(device), y.to(device))[0]
    loss = total / n_scored
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": total / math.log(2) / max(n_bytes, 1),
            "tokens": n_scored, "bytes": n_bytes, "block_size": block_size, "stride": stride}


def evaluate_split(model, data_dir: str | Path, split: str = "validation", block_size: int = 256,
                   batch_size: int = 8, device="cpu", stride: int | None = None, max_tokens: int | None = None) -> dict:
    """Evaluate on a prepared split (data_dir/<split>.bin + meta.json).

    `max_tokens` scores only the whole documents within the split's first max_tokens tokens;
    their byte count is then measured by decoding them (exact, since prepare round-trips).
    The result says which documents it covers: `documents` of the split's `split_documents`.
    """
    from tinygemma.data import load_split, read_meta, split_name, start_token

    meta = read_meta(data_dir)
    tok = meta["tokenizer"]
    if tok["vocab_size"] > model.config.vocab_size:
        raise TinyGemmaError(f"the data's tokenizer has {tok['vocab_size']} ids but the model only "
                             f"{model.config.vocab_size}: evaluate with data prepared for this model's tokenizer")
    data = load_split(data_dir, split, vocab_size=model.config.vocab_size)
    name = split_name(split)
    n_bytes, n_docs = meta[name]["bytes"], meta[name]["documents"]
    if max_tokens is not None and max_tokens < len(data):
        data, n_bytes, n_docs = _document_prefix(data, max_tokens, tok, data_dir)
    out = evaluate_tokens(model, data, n_bytes, start_token(tok.get("bos_id"), tok["eot_id"]),
                          block_size, batch_size, device, stride)
    return {"split": name, "source": meta["source"]["validation" if name == "validation" else "train"],
            "documents": n_docs, "split_documents": meta[name]["documents"], **out}


def _document_prefix(data, max_tokens: int, tok_ref: dict, data_dir) -> tuple[np.ndarray, int, int]:
    """The whole documents (each ending in eot) within the first max_tokens ids, their UTF-8 bytes and number."""
    from tinygemma.tokenizer import load_tokenizer

    head = np.asarray(data[:max_tokens], dtype=np.int64)
    ends = np.flatnonzero(head == tok_ref["eot_id"])
    if len(ends) == 0:
        raise TinyGemmaError(f"no whole document in the first {max_tokens} tokens; raise --max-tokens")
    head = head[: ends[-1] + 1]
    tok = load_tokenizer(tok_ref, data_dir)
    bos = tok_ref.get("bos_id")
    docs = [d[1 if bos is not None else 0 : -1] for d in np.split(head, ends + 1)[:-1]]  # [bos] text eot
    return head, sum(len(tok.decode(d.tolist()).encode("utf-8")) for d in docs), len(docs)


def evaluate_text(model, tokenizer, source: str | Path, doc_split: str = "auto", block_size: int = 256,
                  batch_size: int = 8, device="cpu", stride: int | None = None) -> dict:
    """Evaluate on a text file (or anything `prepare --source` takes), read as prepare reads it."""
    from tinygemma.data import start_token
    from tinygemma.prepare import encode_source
    from tinygemma.sources import SourceOptions

    source = str(source)
    tokens, stats = encode_source(source, tokenizer, SourceOptions(doc_split=doc_split))
    if stats["documents"] == 0:
        raise TinyGemmaError(f"nothing to evaluate: {source} has no documents")
    out = evaluate_tokens(model, tokens, stats["bytes"], start_token(tokenizer.bos_id, tokenizer.eot_id),
                          block_size, batch_size, device, stride)
    return {"text": source, "documents": stats["documents"], **out}
