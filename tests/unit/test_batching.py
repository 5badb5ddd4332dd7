"""The continuous-batching engine: the same tokens as generate_ids, per-sequence seeds, joins mid-run, stops, cancel, bounds."""

import threading

import pytest
import torch
from conftest import sharp_tiny_model

from tinygemma.batching import Engine, QueueFull, Sampling, Sequence
from tinygemma.errors import TinyGemmaError
from tinygemma.generate import generate_ids


class ByteTokenizer:
    """Bytes as ids 0..255, end-of-text 256 (changed per test to stop on a chosen token)."""

    name, vocab_size, bos_id = "bytes", 257, None

    def __init__(self, eot_id=256):
        self.eot_id = eot_id

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def model():
    return sharp_tiny_model()


class Collect:
    """A sequence's events: its text and finish reason, and a flag set when it finishes."""

    def __init__(self):
        self.text, self.reason, self.done = "", None, threading.Event()

    def __call__(self, piece, reason):
        self.text += piece
        if reason is not None:
            self.reason = reason
            self.done.set()


def write(engine, prompts, samplings):
    """Submit one sequence per (prompt, sampling) at once and wait for all -> [(text, reason, tokens)]."""
    seqs = [Sequence(p, s, Collect()) for p, s in zip(prompts, samplings)]
    engine.submit(seqs)
    for s in seqs:
        assert s.on_event.done.wait(60)
    return [(s.on_event.text, s.on_event.reason, s.tokens) for s in seqs]


@pytest.fixture
def engine(model):
    with Engine(model, ByteTokenizer(), rows=4, max_len=256, max_waiting=8).start() as e:
        yield e


def test_greedy_sequences_write_what_generate_ids_writes(model, engine):
    prompts = [[104, 105], list(range(60, 80)), [33]]
    expected = generate_ids(model, prompts, max_new_tokens=40, temperature=0)
    got = write(engine, prompts, [Sampling(max_new_tokens=40, temperature=0)] * 3)
    tok = ByteTokenizer()
    assert [text for text, _, _ in got] == [tok.decode(ids) for ids in expected]
    assert all(reason == "length" and n == 40 for _, reason, n in got)


def test_a_seeded_sequence_writes_the_same_alone_or_beside_others(engine):
    seeded = Sampling(max_new_tokens=60, temperature=1.0, top_p=0.95, seed=123)
    alone = write(engine, [[72, 105]], [seeded])[0]
    others = [Sampling(max_new_tokens=n, temperature=t, top_k=k) for n, t, k in ((10, 0.7, 5), (80, 1.3, None), (30, 0, None))]
    beside = write(engine, [[1, 2, 3], [72, 105], [9] * 30, [50]], [others[0], seeded, others[1], others[2]])
    assert beside[1] == alone and alone[2] == 60
    unseeded = write(engine, [[72, 105]] * 2, [Sampling(max_new_tokens=60, temperature=1.0)] * 2)
    assert unseeded[0][0] != unseeded[1][0] != alone[0]


def test_new_sequences_join_while_a_long_one_writes(engine):
    long = Sequence([1], Sampling(max_new_tokens=200, temperature=0), Collect())
    engine.submit([long])
    short = write(engine, [[2]], [Sampling(max_new_tokens=5, temperature=0)])[0]
    assert short[1] == "length" and not long.on_event.done.is_set()  # it did not wait for the long one
    assert long.on_event.done.wait(60) and long.tokens == 200


def test_end_of_text_and_stop_strings_end_a_sequence_with_stop(model):
    free = generate_ids(model, [[5, 6]], max_new_tokens=30, temperature=0)[0]
    eot = free[10]
    with Engine(model, ByteTokenizer(eot_id=eot), rows=2, max_len=64, max_waiting=0).start() as e:
        text, reason, n = write(e, [[5, 6]], [Sampling(max_new_tokens=30, temperature=0)])[0]
    assert reason == "stop" and n == free.index(eot) and text == ByteTokenizer().decode(free[:n])
    full = ByteTokenizer().decode(free)
    stop = full[12:15]
    with Engine(model, ByteTokenizer(), rows=2, max_len=64, max_waiting=0).start() as e:
        text, reason, n = write(e, [[5, 6]], [Sampling(max_new_tokens=30, temperature=0, stop=(stop,))])[0]
    assert reason == "stop" and text == full[: full.index(stop)] and n < 30


def test_cancel_frees_the_row_and_a_full_engine_says_so(model):
    with Engine(model, ByteTokenizer(), rows=1, max_len=2048, max_waiting=1).start() as e:
        _cancel_and_bounds(e)


def _cancel_and_bounds(e):
    first, second = (Sequence([1], Sampling(max_new_tokens=2000, temperature=0), Collect()) for _ in range(2))
    e.submit([first, second])
    with pytest.raises(QueueFull):
        e.submit([Sequence([1], Sampling(max_new_tokens=5), Collect())])
    first.cancel()
    assert first.on_event.done.wait(10) and first.on_event.reason == "cancelled" and first.tokens < 2000
    second.cancel()
    assert second.on_event.done.wait(10) and e.stats()["active"] == 0 and e.stats()["finished"] == {"cancelled": 2}
    third = write(e, [[1]], [Sampling(max_new_tokens=3, temperature=0)])[0]  # the rows are free again
    assert third[1:] == ("length", 3)
    with pytest.raises(TinyGemmaError, match="fit"):
        e.submit([Sequence([1] * 2000, Sampling(max_new_tokens=100), Collect())])


def test_after_each_step_sees_every_event_of_the_step_before_it(model):
    """A server hands a step's events over in one go: the callback runs after each step, once all of
    that step's pieces were made, and once more at the end."""
    log, steps = [], []
    with Engine(model, ByteTokenizer(), rows=2, max_len=64, max_waiting=2) as engine:
        engine.after_each_step(lambda: steps.append(len(log)))
        seqs = [Sequence([1, 2, 3], Sampling(max_new_tokens=5, temperature=0), lambda p, r, i=i: log.append((i, r)))
                for i in range(2)]
        engine.submit(seqs)
        engine.start()
        while not all(s.finish_reason for s in seqs):
            threading.Event().wait(0.01)
    assert steps and steps[-1] == len(log) == 2 * 5 + 2  # 5 pieces and a finish each, all handed over
    assert all(b - a in (0, 2, 4) for a, b in zip([0] + steps, steps))  # whole steps: both rows' events together


def test_a_sequence_joins_in_the_forward_of_the_others_step(model):
    """A request that arrives while others write costs its prompt's tokens in their next forward, not a
    prefill forward of its own (Batch.step_and_join)."""
    calls = []
    original = model.hidden_states
    model.hidden_states = lambda ids, **k: calls.append((tuple(ids.shape), k.get("lengths"))) or original(ids, **k)
    late = Collect()
    try:
        with Engine(model, ByteTokenizer(), rows=2, max_len=64, max_waiting=2) as engine:
            joined = []

            def first(piece, reason):  # from the engine's thread, as its third token is taken
                if piece and len(joined) == 2:
                    engine.submit([Sequence([9, 8, 7, 6], Sampling(max_new_tokens=3, temperature=0), late)])
                joined.append(piece)

            engine.submit([Sequence([1, 2, 3], Sampling(max_new_tokens=6, temperature=0), first)])
            engine.start()
            assert late.done.wait(30)
    finally:
        del model.hidden_states
    assert late.reason == "length" and len(late.text) > 0
    assert ((1, 5), [1, 4]) in calls  # the first sequence's token and the joiner's 4 prompt tokens, one forward
    assert ((1, 4), None) not in calls  # no forward for the joiner's prompt alone
