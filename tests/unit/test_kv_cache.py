"""The model's cached forward (KVCache) equals its plain forward: past the sliding window, with rows
at different positions, prepared for inference or not, in fp32 and with bf16 weights."""

import pytest
import torch

from tinygemma.config import FULL, SLIDING, ModelConfig
from tinygemma.model import Gemma3Model, KVCache

SHAPES = {
    "mqa": dict(n_layers=2, n_heads=4, n_kv_heads=1, layer_types=(SLIDING, FULL)),
    "gqa-full-first": dict(n_layers=3, n_heads=4, n_kv_heads=2, layer_types=(FULL, SLIDING, SLIDING)),
}


def random_model(dtype=torch.float32, window: int = 8, **shape) -> Gemma3Model:
    cfg = ModelConfig(vocab_size=300, hidden_size=64, head_dim=16, intermediate_size=96, sliding_window=window,
                      query_pre_attn_scalar=24, max_position_embeddings=256, **shape)
    m = Gemma3Model(cfg).eval()
    with torch.no_grad():  # random norms, so a misplaced (1 + w) shows
        for name, p in m.named_parameters():
            p.normal_(0.0, 0.5 if name.endswith("norm.weight") else 0.1)
    return m.to(dtype)


@torch.no_grad()
def cached_and_plain(model: Gemma3Model, prompt_lens: list[int], steps: int, max_len: int = 64):
    """Each row's prompt goes into its own row; then all rows decode together, each at its own position.
    -> hidden states (rows, 1 + steps, d) of the cached path and of the plain forward over each whole sequence."""
    seqs = torch.randint(0, model.config.vocab_size, (len(prompt_lens), max(prompt_lens) + steps))
    cache = KVCache(model.config, len(prompt_lens), max_len, dtype=model.embed_tokens.weight.dtype)
    cached = [[model.hidden_states(s[None, :n], cache=cache, rows=[r])[0, -1]]
              for r, (s, n) in enumerate(zip(seqs, prompt_lens))]
    for i in range(steps):
        ids = torch.stack([s[n + i] for s, n in zip(seqs, prompt_lens)])[:, None]  # (rows, 1)
        h = model.hidden_states(ids, cache=cache)
        for r in range(len(prompt_lens)):
            cached[r].append(h[r, 0])
    plain = [model.hidden_states(s[None, : n + steps])[0, n - 1 :] for s, n in zip(seqs, prompt_lens)]
    return torch.stack([torch.stack(c) for c in cached]), torch.stack(plain)


@pytest.mark.parametrize("prepared", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_cached_equals_plain_past_the_window_with_rows_at_different_positions(shape, prepared):
    model = random_model(**SHAPES[shape])
    with model.prepared_for_inference() if prepared else torch.no_grad():
        # 13 > window 8 (the prompt's own sliding mask, the ring rotated); rows 10 and 12 apart;
        # 20 steps wrap the ring twice more
        cached, plain = cached_and_plain(model, [13, 3, 1], steps=20)
    assert plain.abs().mean() > 0.1  # not trivially zero
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)


def test_window_longer_than_the_cache():
    """max_len < sliding_window: the ring has max_len columns and the window never bites."""
    model = random_model(window=64, **SHAPES["mqa"])
    assert KVCache(model.config, 1, 30).k[0].shape[2] == 30  # layer 0 slides
    cached, plain = cached_and_plain(model, [9, 2], steps=18, max_len=30)  # 27 positions
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)


def test_bf16_weights_keep_fp32_norms():
    model = random_model(torch.bfloat16, **SHAPES["mqa"])
    with model.prepared_for_inference():
        cached, plain = cached_and_plain(model, [12, 5], steps=12)
        assert all(n.prepared_gain.dtype == torch.float32 for n in (model.norm, model.layers[0].input_layernorm))
    assert cached.dtype == torch.bfloat16
    torch.testing.assert_close(cached.float(), plain.float(), atol=0.05, rtol=0.02)


def test_prepared_for_inference_is_the_same_maths_and_is_undone():
    model = random_model(**SHAPES["gqa-full-first"])
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        ref = model(x)[0]
        with model.prepared_for_inference():
            with model.prepared_for_inference():  # nested: the outer block keeps its preparation
                pass
            assert model.layers[0].self_attn.qkv_t is not None and model.layers[0].mlp.down_t is not None
            prepared = model(x)[0]
        assert model.layers[0].self_attn.qkv_t is None and model.layers[0].mlp.down_t is None and model.norm.prepared_gain is None
        torch.testing.assert_close(prepared, ref, atol=1e-5, rtol=1e-5)
        w = model.layers[0].self_attn.v_proj.weight
        w.add_(torch.randn_like(w))  # training changes the weights afterwards
        plain = model(x)[0]
        with model.prepared_for_inference():
            prepared = model(x)[0]
    assert (plain - ref).abs().max() > 1e-3
    torch.testing.assert_close(prepared, plain, atol=1e-5, rtol=1e-5)  # the new weights, not stale copies


def test_cache_refuses_what_it_cannot_hold():
    model = random_model(**SHAPES["mqa"])
    cache = KVCache(model.config, 2, 4)
    with torch.no_grad():
        model.hidden_states(torch.tensor([[1, 2, 3]]), cache=cache, rows=[0])
        with pytest.raises(ValueError, match="empty rows"):  # a second prompt into a row that holds one
            model.hidden_states(torch.tensor([[4, 5]]), cache=cache, rows=[0])
        model.hidden_states(torch.tensor([[4]]), cache=cache, rows=[0])
        with pytest.raises(ValueError, match="4 positions; 5 requested"):
            model.hidden_states(torch.tensor([[5]]), cache=cache, rows=[0])
        with pytest.raises(ValueError, match="different rows"):
            model.hidden_states(torch.tensor([[5], [6]]), cache=cache, rows=[1, 1])
        cache.reset(0)  # a freed row takes a new prompt
        model.hidden_states(torch.tensor([[4, 5]]), cache=cache, rows=[0])
    assert cache.lengths == [2, 0]


@pytest.mark.parametrize("prepared", [False, True])
def test_a_ragged_forward_prefills_some_rows_while_others_decode(prepared):
    """One call: rows 0 and 2 take their next token while rows 1 and 3 (just reset) take prompts of 11
    (past the window of 8) and 3 tokens. Each row's hidden states equal the plain forward's."""
    model = random_model(**SHAPES["gqa-full-first"])
    V = model.config.vocab_size
    seqs = [torch.randint(0, V, (n,)) for n in (6, 11, 9, 3)]
    cache = KVCache(model.config, 4, 32)
    with model.prepared_for_inference() if prepared else torch.no_grad():
        for r in (0, 1, 2):  # rows 0 and 2 hold 5 and 8 tokens; row 1 held one sequence and was reset
            model.hidden_states(seqs[r][None, : len(seqs[r]) - 1] if r != 1 else seqs[1][None, :4], cache=cache, rows=[r])
        cache.reset(1)
        feed = [(0, seqs[0][-1:]), (2, seqs[2][-1:]), (1, seqs[1]), (3, seqs[3])]
        flat = torch.cat([ids for _, ids in feed])[None]
        h = model.hidden_states(flat, cache=cache, rows=[r for r, _ in feed], lengths=[len(ids) for _, ids in feed])
        assert [(p.rows, p.length) for p in cache.parts] == [(2, 1), (1, 11), (1, 3)]
        got = torch.split(h[0], [len(ids) for _, ids in feed])
        for (r, ids), hr in zip(feed, got):
            plain = model.hidden_states(seqs[r][None])[0, -len(ids):]
            torch.testing.assert_close(hr, plain, atol=1e-5, rtol=1e-5)
        assert cache.lengths == [6, 11, 9, 3]
        # and the rows go on decoding together from there
        nxt = torch.randint(0, V, (4, 1))
        step = model.hidden_states(nxt, cache=cache)[:, 0]
        for r in range(4):
            plain = model.hidden_states(torch.cat([seqs[r], nxt[r]])[None])[0, -1]
            torch.testing.assert_close(step[r], plain, atol=1e-5, rtol=1e-5)


def test_a_ragged_call_is_checked():
    model = random_model(**SHAPES["mqa"])
    cache = KVCache(model.config, 2, 16)
    with torch.no_grad():
        model.hidden_states(torch.tensor([[1, 2, 3]]), cache=cache, rows=[0])
        with pytest.raises(ValueError, match="ragged"):  # lengths that do not add up to the tokens
            model.hidden_states(torch.tensor([[4, 5, 6]]), cache=cache, rows=[0, 1], lengths=[1, 1])
        with pytest.raises(ValueError, match="empty rows"):  # a prompt for a row that holds tokens
            model.hidden_states(torch.tensor([[4, 5, 6]]), cache=cache, rows=[0, 1], lengths=[2, 1])
        model.hidden_states(torch.tensor([[4, 5, 6]]), cache=cache, rows=[0, 1], lengths=[1, 2])
    assert cache.lengths == [4, 2]
