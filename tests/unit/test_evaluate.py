"""Evaluation: one deterministic pass, every token predicted once, bits per byte from total NLL."""

import math

import pytest
import torch
import torch.nn.functional as F

from tinygemma.config import tiny
from tinygemma.errors import TinyGemmaError
from tinygemma.evaluate import _windows, evaluate_tokens
from tinygemma.model import Gemma3Model


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = Gemma3Model(tiny()).eval()
    with torch.no_grad():
        m.embed_tokens.weight.normal_(0, 0.3)
    return m


def brute_force_nll(model, ids, block_size):
    """Sum of NLL over non-overlapping windows, one window per forward pass."""
    total = 0.0
    for s in range(0, len(ids) - 1, block_size):
        x, y = ids[s : s + block_size], ids[s + 1 : s + block_size + 1]
        x = x[: len(y)]
        logits = model(x[None])[0][0]
        total += F.cross_entropy(logits, y, reduction="sum").item()
    return total


def test_matches_window_by_window_computation(model):
    tokens = torch.randint(0, 256, (70,))
    out = evaluate_tokens(model, tokens.numpy(), n_bytes=300, start_id=0, block_size=16, batch_size=3)
    ref = brute_force_nll(model, torch.cat((torch.tensor([0]), tokens)), 16)
    assert out["tokens"] == 70 and out["bytes"] == 300
    assert out["loss"] == pytest.approx(ref / 70, rel=1e-5)
    assert out["bpb"] == pytest.approx(ref / math.log(2) / 300, rel=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(ref / 70), rel=1e-5)


def test_uniform_model_gives_log_vocab(model):
    with torch.no_grad():
        model.embed_tokens.weight.zero_()  # zero head: every logit 0, p = 1/256
    out = evaluate_tokens(model, list(range(40)), n_bytes=80, start_id=0, block_size=8)
    assert out["loss"] == pytest.approx(math.log(256), rel=1e-6)
    assert out["bpb"] == pytest.approx(40 * 8 / 80, rel=1e-6)  # 8 bits per token, 2 bytes per token


def test_windows_cover_every_target_once():
    for n, block, stride in [(70, 16, 16), (70, 16, 5), (16, 16, 4), (3, 16, 16), (100, 10, 1)]:
        scored = []
        for start, first in _windows(n, block, stride):
            scored += [t for t in range(start + 1 + first, start + block + 1) if t <= n]
        assert scored == list(range(1, n + 1)), (n, block, stride)


def test_overlapping_windows_see_more_context(model):
    tokens = torch.randint(0, 256, (60,)).numpy()
    a = evaluate_tokens(model, tokens, 100, 0, block_size=16)
    b = evaluate_tokens(model, tokens, 100, 0, block_size=16, stride=4)
    assert a["tokens"] == b["tokens"] and a["loss"] != b["loss"]
    with pytest.raises(TinyGemmaError, match="stride"):
        evaluate_tokens(model, tokens, 100, 0, block_size=16, stride=17)


def test_max_tokens_scores_whole_documents_with_their_exact_bytes(tmp_path):
    """evaluate_split(max_tokens=N) keeps the whole documents in the first N ids and counts their bytes."""
    from tinygemma.config import tiny
    from tinygemma.prepare import prepare
    from tinygemma.evaluate import evaluate_split
    from tinygemma.model import Gemma3Model

    docs = [f"Story number {i} is about a cat named Tom.\n\nThe end." for i in range(40)]
    src = tmp_path / "docs.txt"
    src.write_text("\n<|endoftext|>\n".join(docs))
    prepare(str(src), val_source=str(src), tokenizer="gpt2", out=tmp_path / "d", quiet=True, progress=False)
    model = Gemma3Model(tiny(vocab_size=50257))
    full = evaluate_split(model, tmp_path / "d", block_size=32)
    part = evaluate_split(model, tmp_path / "d", block_size=32, max_tokens=full["tokens"] // 2)
    per_doc_tokens = full["tokens"] // len(docs)
    n_docs = part["tokens"] // per_doc_tokens
    assert part["tokens"] == n_docs * per_doc_tokens < full["tokens"]
    assert part["bytes"] == sum(len(d) for d in docs[:n_docs])
