"""Continuous batching: many requests share the decoding steps of one generate.Batch.

An `Engine` owns a model, its tokenizer and one `Batch` of KV-cache rows, and runs the decode
loop in a thread of its own (`start`) or in the calling thread (`run`, until `close`):

    with Engine(model, tokenizer, rows=32, max_len=2048, max_waiting=64).start() as engine:
        seq = Sequence(prompt_ids, Sampling(max_new_tokens=200, temperature=0.8, seed=1), on_event)
        engine.submit([seq])   # QueueFull when rows + max_waiting sequences are already there
        seq.cancel()           # from any thread: the row is freed at the next step

`tinygemma serve` runs the loop in the main thread: torch's CPU threads (OpenMP) ran a decoding
step 2.3x slower for a thread other than the one that had used them first (the one that loaded
the model): 7.4 ms against 3.1 ms at the small preset (docs/SERVE.md).

Between two steps, waiting sequences join free rows (one prefill per prompt length) and finished ones leave,
so a new request never waits for the others to end, and every step computes one token for each
row still writing. Each sequence samples with its own settings and its own torch.Generator
(seeded with its seed, else at random), so a seeded sequence gets the same tokens alone or beside
others, as far as the batch's floating-point sums equal a single row's.

`on_event(piece, finish_reason)` is called from the engine's thread: with each new piece of
final text (finish_reason None), then once with the finish reason: "stop" (the end-of-text token
or a stop string; neither is in the text), "length" (max_new_tokens written), "cancelled" or
"error" (a bug: logged, and the engine goes on with the other sequences).
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Callable, Sequence as Seq

import torch

from tinygemma.errors import TinyGemmaError
from tinygemma.generate import Batch, TextDecoder, sample_next
from tinygemma.model import Gemma3Model

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every row is taken and the waiting line is full: the caller should retry later."""


@dataclass(frozen=True)
class Sampling:
    """How one sequence is written: generate.sample_next's settings, a length, a seed, stop strings."""

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


class Sequence:
    """One text being written: its prompt, its settings, its generator, its text so far."""

    def __init__(self, prompt_ids: Seq[int], sampling: Sampling, on_event: Callable[[str, str | None], None]):
        self.prompt_ids, self.sampling, self.on_event = list(prompt_ids), sampling, on_event
        self.seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        self.tokens = 0  # new tokens sampled, the end-of-text not counted
        self.finish_reason: str | None = None
        self.cancelled = False  # set by any thread; the engine reads it between steps
        self.generator: torch.Generator | None = None
        self.decoder: TextDecoder | None = None

    def cancel(self) -> None:
        """Stop writing this sequence: its row leaves the batch at the next step."""
        self.cancelled = True

    def begin(self, tokenizer, device: torch.device) -> None:
        """Called by the engine as the sequence takes its row."""
        self.generator = torch.Generator(device=device).manual_seed(self.seed)
        self.decoder = TextDecoder(tokenizer, self.sampling.stop)

    def draw(self) -> torch.Tensor:
        """This sequence's next uniform draw (1,), from its own generator."""
        return torch.rand(1, generator=self.generator, device=self.generator.device)

    def take(self, token: int, eot_id: int | None) -> bool:
        """Take the sampled token and pass its text on -> whether the sequence goes on."""
        if token == eot_id:
            self.finish("stop")
            return False
        self.tokens += 1
        piece = self.decoder.push(token)
        if piece:
            self.on_event(piece, None)
        if self.decoder.stopped:
            self.finish("stop")
            return False
        if self.tokens >= self.sampling.max_new_tokens:
            piece = self.decoder.flush()
            if piece:
                self.on_event(piece, None)
            self.finish("length")
            return False
        return True

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
            self.on_event("", reason)


class Engine:
    """The decode loop over one Batch of `rows` rows, fed by a bounded line of waiting sequences."""

    def __init__(self, model: Gemma3Model, tokenizer, rows: int, max_len: int, max_waiting: int):
        if rows < 1 or max_waiting < 0:
            raise TinyGemmaError(f"the engine needs at least one row and a non-negative queue, got {rows}, {max_waiting}")
        self.model, self.tokenizer, self.rows, self.max_len = model, tokenizer, rows, max_len
        self.capacity = rows + max_waiting  # sequences held at once, writing or waiting
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._live: dict[int, Sequence] = {}  # row -> its sequence (touched by the engine's thread only)
        self._logits: dict[int, torch.Tensor] = {}  # row -> logits (V,) of its next token
        self._stepped: tuple[list[int], torch.Tensor] | None = None  # the last step's rows and logits (n, V)
        self._held = 0  # sequences submitted and not finished
        self._finished = collections.Counter()  # finish reason -> sequences so far
        self._cond = threading.Condition()
        self._closed = False
        self._after_step: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name="tinygemma-engine", daemon=True)

    def after_each_step(self, fn: Callable[[], None]) -> None:
        """Call `fn()` from the engine's thread once per decoding step, when that step's tokens are taken
        (before its forward, so a server sends them while the next ones are computed), after each pass
        of the loop, and once at the end: a server hands the step's events over in one go instead of
        waking its event loop once per event."""
        self._after_step.append(fn)

    def start(self) -> Engine:
        """Run the decode loop in a thread of its own."""
        self._thread.start()
        return self

    def run(self) -> None:
        """Run the decode loop in the calling thread until `close` (from another thread or a signal handler)."""
        self._run()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Cancel what is left and stop the loop (waiting for it when it runs in its own thread)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"rows": self.rows, "capacity": self.capacity, "active": len(self._live),
                    "waiting": len(self._waiting), "finished": dict(self._finished)}

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences to be written, all or none; QueueFull if they do not fit now."""
        V = self.model.config.vocab_size
        for s in seqs:
            if not 0 < len(s.prompt_ids) or len(s.prompt_ids) + s.sampling.max_new_tokens > self.max_len:
                raise TinyGemmaError(f"a prompt of {len(s.prompt_ids)} tokens plus {s.sampling.max_new_tokens} new ones "
                                     f"does not fit the engine's {self.max_len} positions")
            if not all(0 <= t < V for t in s.prompt_ids):
                raise TinyGemmaError(f"a prompt token id is outside the model's vocabulary (0..{V - 1})")
        with self._cond:
            if self._closed:
                raise QueueFull("the engine is shutting down")
            if self._held + len(seqs) > self.capacity:
                raise QueueFull(f"{self._held} of {self.capacity} sequences are already writing or waiting")
            self._held += len(seqs)
            self._waiting.extend(seqs)
            self._cond.notify()

    def _run(self) -> None:
        # batch_invariant: a seeded sequence writes the same text alone or beside others
        with Batch(self.model, self.rows, self.max_len, batch_invariant=True) as batch:
            while self._wait_for_work():
                try:
                    self._step(batch)
                except Exception:  # a bug: end the sequences under way, keep serving the others
                    log.exception("the decode step failed; its sequences end with finish_reason 'error'")
                    for row in list(self._live):
                        self._leave(batch, row, "error")
                self._stepped_all()
            for row in list(self._live):
                self._leave(batch, row, "cancelled")
            for seq in self._waiting:
                seq.finish("cancelled")
            self._stepped_all()

    def _stepped_all(self) -> None:
        for fn in self._after_step:
            try:
                fn()
            except Exception:
                log.exception("an after-step callback failed")

    def _wait_for_work(self) -> bool:
        with self._cond:
            while not self._live and not self._waiting and not self._closed:
                self._cond.wait()
            return not self._closed

    def _step(self, batch: Batch) -> None:
        """Each live row samples its next token; finished and cancelled rows leave; waiting sequences take
        the free rows; then one forward for all: a token for each writing row and each joiner's whole
        prompt (Batch.step_and_join), so a join costs its tokens, not a forward of its own."""
        for row in [r for r, seq in self._live.items() if seq.cancelled]:
            self._leave(batch, row, "cancelled")
        rows, tokens = [], []
        for row, token in sorted(self._sample().items()):  # in row order: a run of rows is read as a view
            if self._live[row].take(token, self.tokenizer.eot_id):
                rows.append(row)
                tokens.append(token)
            else:
                self._leave(batch, row, None)
        joining = self._joining(len(batch.free))
        self._stepped_all()  # the pieces just taken go out (to a server's event loop) while the forward runs
        if not rows and not joining:
            return
        try:
            logits, joined = batch.step_and_join(rows, tokens, [s.prompt_ids for s in joining])
        except Exception:
            for seq in joining:
                self._done(seq, "error")
            raise
        self._stepped = (rows + joined, logits)
        with self._cond:
            for seq, row in zip(joining, joined):
                self._live[row] = seq
            self._logits.update(zip(rows + joined, logits))

    def _joining(self, free: int) -> list[Sequence]:
        """Up to `free` waiting sequences, ready to join (the cancelled ones among them are done)."""
        with self._cond:
            taken = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
        out = []
        for seq in taken:
            if seq.cancelled:
                self._done(seq, "cancelled")
            else:
                seq.begin(self.tokenizer, self.model.embed_tokens.weight.device)
                out.append(seq)
        return out

    def _sample(self) -> dict[int, int]:
        """The next token of every live row: one sample_next call per group of rows with the same settings,
        each row with a uniform draw from its own generator -> {row: token}."""
        groups: dict[tuple, list[int]] = collections.defaultdict(list)
        for row, seq in sorted(self._live.items()):
            s = seq.sampling
            groups[(s.temperature, s.top_k, s.top_p)].append(row)
        out = {}
        for (temperature, top_k, top_p), rows in groups.items():
            logits = self._rows_logits(rows)
            uniform = torch.cat([self._live[r].draw() for r in rows]) if temperature > 0 else None
            out.update(zip(rows, sample_next(logits, temperature, top_k, top_p, uniform=uniform).tolist()))
        return out

    def _rows_logits(self, rows: list[int]) -> torch.Tensor:
        """The logits (n, V) of these rows: the last step's own tensor when it holds just these rows (every
        row writing with the same settings), else a copy (stacking 16 rows of a 50k vocabulary: 0.2 ms)."""
        if self._stepped is not None and self._stepped[0] == rows:
            return self._stepped[1]
        return torch.stack([self._logits[r] for r in rows])

    def _leave(self, batch: Batch, row: int, reason: str | None) -> None:
        """Free a row; `reason` finishes its sequence when it has not finished itself."""
        self._stepped = None
        with self._cond:
            seq = self._live.pop(row)
            del self._logits[row]
        batch.leave(row)
        self._done(seq, reason)

    def _done(self, seq: Sequence, reason: str | None) -> None:
        """Count a sequence out (before its last event, so stats() agree once the caller has it)."""
        with self._cond:
            self._held -= 1
            self._finished[seq.finish_reason or reason] += 1
        if reason is not None:
            seq.finish(reason)
