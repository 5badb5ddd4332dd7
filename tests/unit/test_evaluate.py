"""Evaluation: one deterministic pass, every token predicted once, bits per byte from total NLL."""

import math

import pytest
import torch
import torch.nn.functional as F

from tinygemma.config import tiny
from tinygemma.errors import TinyGemmaError
from tinygemma.evaluate import _windows, evaluate_split, evaluate_text, evaluate_tokens, windows_loss
from tinygemma.model import Gemma3Model
from tinygemma.prepare import PrepareOptions, prepare
from tinygemma.tokenizer import load_tokenizer


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
    tokens = torch.randint(1, 256, (70,))  # the start token 0 is put in front
    out = evaluate_tokens(model, tokens.numpy(), n_bytes=300, start_id=0, block_size=16, batch_size=3)
    ref = brute_force_nll(model, torch.cat((torch.tensor([0]), tokens)), 16)
    assert out["tokens"] == 70 and out["bytes"] == 300
    assert out["loss"] == pytest.approx(ref / 70, rel=1e-5)
    assert out["bpb"] == pytest.approx(ref / math.log(2) / 300, rel=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(ref / 70), rel=1e-5)


def test_uniform_model_gives_log_vocab(model):
    with torch.no_grad():
        model.embed_tokens.weight.zero_()  # zero head: every logit 0, p = 1/256
    out = evaluate_tokens(model, list(range(1, 41)), n_bytes=80, start_id=0, block_size=8)
    assert out["loss"] == pytest.approx(math.log(256), rel=1e-6)
    assert out["bpb"] == pytest.approx(40 * 8 / 80, rel=1e-6)  # 8 bits per token, 2 bytes per token


def test_windows_cover_every_target_once():
    for n, block, stride in [(70, 16, 16), (70, 16, 5), (16, 16, 4), (3, 16, 16), (100, 10, 1)]:
        scored = []
        for start, first in _windows(n, block, stride):
            scored += [t for t in range(start + 1 + first, start + block + 1) if t <= n]
        assert scored == list(range(1, n + 1)), (n, block, stride)


def test_a_stream_that_opens_with_the_start_token_is_read_as_it_is(model):
    """Prepared data with <bos> opens every document with it: nothing is put in front, the bos is the context."""
    tokens = torch.randint(1, 256, (50,))
    with_bos = evaluate_tokens(model, torch.cat((torch.tensor([7]), tokens)).numpy(), 100, start_id=7, block_size=16)
    assert with_bos == evaluate_tokens(model, tokens.numpy(), 100, start_id=7, block_size=16)


def test_overlapping_windows_see_more_context(model):
    tokens = torch.randint(1, 256, (60,)).numpy()
    a = evaluate_tokens(model, tokens, 100, 0, block_size=16)
    b = evaluate_tokens(model, tokens, 100, 0, block_size=16, stride=4)
    assert a["tokens"] == b["tokens"] and a["loss"] != b["loss"]
    with pytest.raises(TinyGemmaError, match="stride"):
        evaluate_tokens(model, tokens, 100, 0, block_size=16, stride=17)


def test_max_tokens_scores_whole_documents_with_their_exact_bytes(tmp_path):
    """evaluate_split(max_tokens=N) keeps the whole documents in the first N ids and counts their bytes."""
    docs = [f"Story number {i} is about a cat named Tom.\n\nThe end." for i in range(40)]
    src = tmp_path / "docs.txt"
    src.write_text("\n<|endoftext|>\n".join(docs))
    prepare(PrepareOptions(source=str(src), val_source=str(src), tokenizer="gpt2", out=tmp_path / "d", quiet=True,
                           progress=False))
    model = Gemma3Model(tiny(vocab_size=50257))
    full = evaluate_split(model, tmp_path / "d", block_size=32)
    part = evaluate_split(model, tmp_path / "d", block_size=32, max_tokens=full["tokens"] // 2)
    per_doc_tokens = full["tokens"] // len(docs)
    n_docs = part["tokens"] // per_doc_tokens
    assert part["tokens"] == n_docs * per_doc_tokens < full["tokens"]
    assert part["bytes"] == sum(len(d) for d in docs[:n_docs])
    assert (part["documents"], full["documents"], part["split_documents"]) == (n_docs, 40, 40)


def bos_tokenizer_file(tmp_path, texts):
    """A small byte-level BPE tokenizer.json with <eos> and <bos>, as gemma3 has (so the layout opens with bos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>", "<bos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    return str(tmp_path / "tokenizer.json")


STORIES = [f"Story {i}. Once upon a time a fox named Pip found {i} stones.\n\nPip shared them, and they smiled."
           for i in range(30)]


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe:300", "bos"])
@pytest.mark.parametrize("doc_split,sep", [("auto", "\n<|endoftext|>\n"), ("auto", "\n\n\n"), (r"\n\n\n", "\n\n\n")])
def test_a_text_file_scores_as_the_same_file_prepared(tmp_path, tokenizer, doc_split, sep):
    """evaluate_text reads a file as prepare does: same documents, tokens, bytes, so the same bits per byte."""
    valid = tmp_path / "valid.txt"
    valid.write_text("\n\n" + sep.join(STORIES[20:]) + "\n")
    (tmp_path / "train.txt").write_text(sep.join(STORIES[:20]))
    spec = bos_tokenizer_file(tmp_path, STORIES) if tokenizer == "bos" else tokenizer
    meta = prepare(PrepareOptions(source=str(tmp_path / "train.txt"), val_source=str(valid), tokenizer=spec,
                                  doc_split=doc_split, out=tmp_path / "d", quiet=True, num_proc=1))
    tok = load_tokenizer(meta["tokenizer"], tmp_path / "d")
    torch.manual_seed(0)
    model = Gemma3Model(tiny(vocab_size=tok.vocab_size))
    split = evaluate_split(model, tmp_path / "d", block_size=32, batch_size=3)
    text = evaluate_text(model, tok, valid, doc_split=doc_split, block_size=32, batch_size=3)
    assert (text["tokens"], text["bytes"], text["documents"]) == (split["tokens"], split["bytes"], split["documents"])
    assert text["documents"] == (10 if sep != "\n\n\n" or doc_split != "auto" else 1)
    assert abs(text["bpb"] - split["bpb"]) < 1e-6 and abs(text["loss"] - split["loss"]) < 1e-6


def test_the_trainer_validation_and_eval_are_one_loss(model):
    """windows_loss (the trainer's validation) on consecutive windows = evaluate_tokens on the same stream."""
    from tinygemma.train import fixed_val_windows

    val = torch.cat((torch.tensor([0]), torch.randint(1, 256, (16 * 6,)))).numpy()
    starts = fixed_val_windows(len(val), 16, 6)
    assert list(starts) == [0, 16, 32, 48, 64, 80]  # consecutive windows covering the split
    trainer = windows_loss(model, val, starts, block_size=16, batch_size=4, device="cpu")
    ev = evaluate_tokens(model, val[1:], n_bytes=1, start_id=0, block_size=16, batch_size=2)
    assert abs(trainer - ev["loss"]) < 1e-6
    model.train()
    assert windows_loss(model, val, starts, 16, 4, "cpu") == trainer and model.training  # eval mode, then back
