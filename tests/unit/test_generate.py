"""KV-cache generation: equal to recomputation past the window, sampling options, seeds, stops, streaming."""

import pytest
import torch
from conftest import sharp_tiny_model

from tinygemma.errors import TinyGemmaError
from tinygemma.generate import Batch, LMHead, Ranking, TextDecoder, encode_prompt, generate, generate_ids, sample_next


class CharTokenizer:
    """Bytes as ids 0..255, end-of-text 256, no bos (like gpt2)."""

    name, vocab_size, eot_id, bos_id = "chars", 257, 256, None

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")



@pytest.fixture
def model():
    return sharp_tiny_model()


def test_cached_equals_recomputed_greedy_past_the_window(model):
    assert model.config.sliding_window == 8
    prompts = [[1, 2, 3], list(range(10, 27)), [5]]  # different lengths: left padding in the batch
    cached = generate_ids(model, prompts, max_new_tokens=80, temperature=0)
    recomputed = generate_ids(model, prompts, max_new_tokens=80, temperature=0, use_cache=False)
    assert [len(r) for r in cached] == [80, 80, 80]
    assert cached == recomputed
    one_by_one = [generate_ids(model, [p], max_new_tokens=80, temperature=0)[0] for p in prompts]
    assert one_by_one == cached  # padding does not leak into the rows


def greedy(batch: Batch, row: int, logits: torch.Tensor, others: dict[int, int] | None = None):
    """One greedy step of `row` (and of the `others` rows, given their tokens) -> (token, logits of all rows)."""
    token = int(logits.argmax())
    rows = [row] + list(others or {})
    return token, batch.step(rows, [token] + list((others or {}).values()))


def run_alone(model, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    with Batch(model, rows=1, max_len=64, fast_head=False) as batch:
        row, logits = batch.join(prompt)
        tokens, seen = [], [logits]
        for _ in range(steps):
            token, logits = greedy(batch, row, seen[-1])
            tokens.append(token)
            seen.append(logits[0])
    return tokens, torch.stack(seen)


def test_a_prompt_that_joins_a_running_batch_decodes_as_if_alone(model):
    prompt = [5, 6, 7, 8]
    alone_tokens, alone_logits = run_alone(model, prompt, steps=30)
    with Batch(model, rows=3, max_len=64, fast_head=False) as batch:
        first, logits = batch.join(list(range(10, 23)))  # 13 tokens > window 8
        next_first = int(logits.argmax())
        for _ in range(11):  # the first row is mid-decode, past the window, when the prompt joins
            next_first = int(batch.step([first], [next_first])[0].argmax())
        row, logits = batch.join(prompt)
        tokens, seen, third = [], [logits], None
        for i in range(30):
            if i == 5:  # a third sequence joins for a while, then leaves
                third, third_logits = batch.join([1, 2])
            others = {first: next_first} if third is None else {first: next_first, third: int(third_logits.argmax())}
            token, step_logits = greedy(batch, row, seen[-1], others)
            tokens.append(token)
            seen.append(step_logits[0])
            next_first = int(step_logits[1].argmax())
            if third is not None:
                third_logits = step_logits[2]
            if i == 15:
                batch.leave(third)
                third = None
    assert tokens == alone_tokens
    torch.testing.assert_close(torch.stack(seen), alone_logits, atol=1e-5, rtol=1e-5)


def test_a_freed_row_does_not_see_the_old_sequence(model):
    prompt = [40, 41, 42]
    alone_tokens, alone_logits = run_alone(model, prompt, steps=20)
    with Batch(model, rows=2, max_len=64, fast_head=False) as batch:
        old, logits = batch.join(list(range(100, 120)))
        other, other_logits = batch.join(list(range(60, 72)))
        for _ in range(10):  # the old sequence reaches 30 positions: the whole ring, 30 full-layer columns
            logits, other_logits = batch.step([old, other], [int(logits.argmax()), int(other_logits.argmax())])
        batch.leave(old)
        row, logits = batch.join(prompt)
        assert row == old  # the freed row is reused
        with pytest.raises(TinyGemmaError, match="busy"):
            batch.join([1])
        tokens, seen = [], [logits]
        for _ in range(20):  # beside the longer row, so the reused row's attention is masked
            token, step_logits = greedy(batch, row, seen[-1], {other: int(other_logits.argmax())})
            tokens.append(token)
            seen.append(step_logits[0])
            other_logits = step_logits[1]
    assert tokens == alone_tokens
    torch.testing.assert_close(torch.stack(seen), alone_logits, atol=1e-5, rtol=1e-5)


def test_prompts_are_prefilled_together_as_if_alone(model):
    prompts = [[1, 2, 3], [4, 5, 6], [7, 8], [9, 10, 11]]
    with Batch(model, rows=5, max_len=32, fast_head=False) as batch:
        joined = batch.join_all(prompts)  # one ragged forward: a part for the three of length 3, one for [7, 8]
        assert [row for row, _ in joined] == [0, 1, 3, 2]
        steps = [batch.step([row for row, _ in joined], [5, 6, 7, 8]) for _ in range(3)]
        with pytest.raises(TinyGemmaError, match="busy"):
            batch.join_all([[1], [2]])  # two prompts, one free row
    for i, prompt in enumerate(prompts):
        with Batch(model, rows=1, max_len=32, fast_head=False) as alone:
            row, logits = alone.join(prompt)
            torch.testing.assert_close(joined[i][1], logits, atol=1e-5, rtol=1e-5)
            for step in steps:
                torch.testing.assert_close(step[i], alone.step([row], [5 + i])[0], atol=1e-5, rtol=1e-5)


def test_a_join_in_the_same_forward_as_a_step_gives_what_each_gives_alone(model):
    """step_and_join: rows take their next token while prompts (of two lengths) fill free rows, in one
    forward; every logit equals the one from a step and a join on their own."""
    prompts = [[3, 4, 5, 6], [7], [8, 9, 10, 11]]
    with Batch(model, rows=5, max_len=32, fast_head=False) as together, \
            Batch(model, rows=5, max_len=32, fast_head=False) as apart:
        for b in (together, apart):
            assert [row for row, _ in b.join_all([[1, 2, 3], [4, 5]])] == [0, 1]
        calls = []
        original = model.hidden_states
        model.hidden_states = lambda *a, **k: calls.append(k.get("lengths")) or original(*a, **k)
        try:
            logits, rows = together.step_and_join([0, 1], [6, 7], prompts)
        finally:
            del model.hidden_states
        assert calls == [[1, 1, 4, 4, 1]] and rows == [2, 4, 3]  # one ragged forward; lengths grouped
        step = apart.step([0, 1], [6, 7])
        joined = [apart.join(p) for p in prompts]
        assert [row for row, _ in joined] == [2, 3, 4]
        torch.testing.assert_close(logits[:2], step, atol=1e-5, rtol=1e-5)
        for i, (_, alone) in enumerate(joined):
            torch.testing.assert_close(logits[2 + i], alone, atol=1e-5, rtol=1e-5)
        with pytest.raises(TinyGemmaError, match="busy"):
            together.step_and_join([0], [1], [[1]])  # every row taken


def test_fast_head_gives_the_exact_greedy_tokens(model):
    prompts = [[1, 2, 3], [40, 41]]
    fast = generate_ids(model, prompts, 70, temperature=0, fast_head=True)
    exact = generate_ids(model, prompts, 70, temperature=0, fast_head=False)
    assert fast == exact
    weight = model.embed_tokens.weight
    for rows in (1, 3):  # one row ranks with int8 weights on CPU, several with bf16
        x = torch.randn(rows, model.config.hidden_size)
        logits = LMHead(weight, fast=True)(x)
        ref = x @ weight.T
        approx, err = Ranking.of(weight).logits(x)
        assert ((approx - ref).abs() <= err + approx.abs() * 2**-8).all()  # the stated error bound holds
        assert (logits.argmax(-1) == ref.argmax(-1)).all()
        near = ref >= ref.amax(-1, keepdim=True) - 2 * err  # could be the greedy pick: recomputed exactly
        torch.testing.assert_close(logits[near], ref[near])
        assert (logits - ref).abs().max() < 5e-2  # the rest: int8 or bf16 weights, bf16 sums


def test_fast_head_decides_per_row_what_to_recompute():
    """A flat row (a thousand tokens tie for the top) is recomputed whole; the peaked rows beside it only
    have their few candidates recomputed, as they would alone (a row's logits do not depend on its neighbours)."""
    torch.manual_seed(0)
    u = torch.randn(32)
    weight = torch.cat((u + 1e-4 * torch.randn(1024, 32), 0.3 * torch.randn(1024, 32)))
    peaked = torch.randn(3, 32)
    peaked -= (peaked @ u)[:, None] * u / (u @ u)  # orthogonal to u: the tied tokens score ~0, far below the top
    x = torch.cat((peaked[:1], u[None], peaked[1:]))
    head = LMHead(weight, fast=True, batch_invariant=True)
    together = head(x)
    ref = x @ weight.T
    torch.testing.assert_close(together[1], ref[1], rtol=1e-5, atol=1e-5)  # the flat row: every logit exact
    for i in (0, 2, 3):
        alone = head(x[i : i + 1])[0]
        torch.testing.assert_close(together[i], alone, rtol=1e-5, atol=1e-5)
        near = ref[i] >= ref[i].max() - 0.05
        torch.testing.assert_close(together[i][near], ref[i][near])  # the candidates: exact
        assert (together[i][~near] != ref[i][~near]).float().mean() > 0.5  # the rest: bf16, not recomputed
    assert (together.argmax(-1) == ref.argmax(-1)).all()


def test_fast_head_copies_follow_the_weights(model):
    weight = model.embed_tokens.weight
    first = Ranking.of(weight)
    assert Ranking.of(weight) is first  # made once per version of the weights
    with torch.no_grad():
        weight.mul_(2.0)  # an in-place change, as an optimizer step makes
    try:
        again = Ranking.of(weight)
        assert again is not first
        x = torch.randn(2, weight.size(1))
        approx, err = again.logits(x)
        assert ((approx - x @ weight.T).abs() <= err + approx.abs() * 2**-8).all()  # ranks the new weights
    finally:
        with torch.no_grad():
            weight.mul_(0.5)


def test_sampling_options():
    torch.manual_seed(0)
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(2000, 1)
    assert sample_next(logits[:1], temperature=0).item() == 0
    assert set(sample_next(logits, top_k=2).tolist()) == {0, 1}
    # p = softmax([4,3,2,1,0] / 0.8) ~ [.715, .205, .059, ...]: top_p 0.8 keeps tokens 0 and 1 only
    picks = sample_next(logits, temperature=0.8, top_p=0.8).tolist()
    assert set(picks) == {0, 1}
    hot = sample_next(logits, temperature=5.0).tolist()
    assert len(set(hot)) == 5  # a high temperature reaches every token


def test_same_seed_same_text(model):
    tok = CharTokenizer()
    a = generate(model, tok, "ab", max_new_tokens=30, seed=3)
    b = generate(model, tok, "ab", max_new_tokens=30, seed=3)
    c = generate(model, tok, "ab", max_new_tokens=30, seed=4)
    assert a == b and a != c
    assert a[0].startswith("ab")


def test_num_samples_and_prompt_batches(model):
    tok = CharTokenizer()
    out = generate(model, tok, ["a", "longer prompt"], max_new_tokens=5, num_samples=2, seed=0, temperature=1.0)
    assert len(out) == 4 and out[0].startswith("a") and out[3].startswith("longer prompt")


def test_stops_at_end_of_text(model):
    free = generate_ids(model, [[1, 2, 3, 4], [9]], max_new_tokens=40, temperature=0)
    stop = free[0][10]  # pretend the 11th token of row 0 is end-of-text
    out = generate_ids(model, [[1, 2, 3, 4], [9]], max_new_tokens=40, temperature=0, eot_id=stop)
    for row, full in zip(out, free):
        cut = full.index(stop) if stop in full else len(full)
        assert row == full[:cut]
    assert len(out[0]) <= 10


class LetterTokenizer(CharTokenizer):
    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids if i < 256)


def test_streaming_pieces_add_up_to_the_text(model):
    pieces = []
    text = generate(model, LetterTokenizer(), "hi", max_new_tokens=40, seed=1, stream=pieces.append)[0]
    assert len(pieces) == 40 and "hi" + "".join(pieces) == text


def test_streaming_holds_back_a_split_utf8_character():
    decoder = TextDecoder(CharTokenizer())
    assert [decoder.push(b) for b in "é!".encode("utf-8")] == ["", "é", "!"]  # 0xC3 0xA9 0x21


def test_text_decoder_holds_back_what_may_start_a_stop_string_and_cuts_before_it():
    decoder = TextDecoder(CharTokenizer(), stop=["THE END", "!!"])
    pieces = [decoder.push(b) for b in "so THE happy!".encode()]
    assert "".join(pieces) == "so THE happy" and not decoder.stopped  # "!" waits: it may begin "!!"
    assert pieces[3:7] == ["", "", "", ""] and pieces[7] == "THE h"  # "THE " waited too
    assert decoder.flush() == "!" and decoder.flush() == ""
    decoder = TextDecoder(CharTokenizer(), stop=["THE END", "!!"])
    pieces = [decoder.push(b) for b in "ok THE END more".encode()]
    assert "".join(pieces) == "ok " and decoder.stopped and pieces[-1] == "" and decoder.flush() == ""


def test_prompts_start_with_the_token_documents_start_with_in_training(model):
    """data.start_token: end-of-text without bos (it ends every document before), else bos (prepare writes it)."""
    tok = CharTokenizer()
    assert encode_prompt(tok, "Hi") == [256, 72, 105] and encode_prompt(tok, "") == [256]
    bos = CharTokenizer()
    bos.bos_id = 255
    assert encode_prompt(bos, "Hi") == [255, 72, 105]


def test_empty_prompt_starts_from_end_of_text(model):
    tok = CharTokenizer()
    assert len(generate(model, tok, "", max_new_tokens=3, temperature=0)[0]) >= 0
    with pytest.raises(TinyGemmaError, match="context"):
        generate_ids(model, [[1]], max_new_tokens=10_000)
    with pytest.raises(TinyGemmaError, match="top-p"):
        generate_ids(model, [[1]], top_p=1.5)


def test_sampling_follows_the_distribution_and_never_picks_a_dropped_token():
    logits = torch.tensor([[0.2, 0.5, 0.3, 0.0]]).log().expand(30_000, 4)  # the last token has probability 0
    picks = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(picks, minlength=4).float() / len(picks)
    assert torch.allclose(freq, torch.tensor([0.2, 0.5, 0.3, 0.0]), atol=0.015) and freq[3] == 0
    edges = sample_next(logits[:3], temperature=1.0, uniform=torch.tensor([0.0, 0.69999, 0.99999]))
    assert edges.tolist() == [0, 1, 2]
    top = sample_next(logits[:1000], temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1))
    assert (top == 1).all()


@pytest.mark.parametrize("V", [300, 1000, 5 * 256])
def test_two_level_sampling_picks_what_one_cumulative_sum_picks(V):
    """The runs-then-tokens search equals the plain inverse CDF over the softmax, token for token,
    across the run boundaries and a short last run (V not a multiple of generate.RUN)."""
    g = torch.Generator().manual_seed(V)
    logits = torch.randn(64, V, generator=g) * 3
    logits[:8, ::2] = float("-inf")  # weightless tokens are never picked
    for temperature in (0.7, 1.0):
        for _ in range(20):
            u = torch.rand(64, generator=g)
            cdf = (logits / temperature).softmax(-1).double().cumsum(-1)
            ref = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True)[:, 0]
            picks = sample_next(logits, temperature, uniform=u)
            assert (picks == ref).float().mean() > 0.99  # a u within float rounding of a boundary may differ
            assert torch.isfinite(logits[torch.arange(64), picks]).all()
