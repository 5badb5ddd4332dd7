"""Sampling from a Gemma3Model with its KV cache.

- `Batch`: the rows of one model.KVCache, which sequences join and leave while others decode
  (continuous batching). A sequence joins a free row with its prompt (one prefill call of the
  model's forward; prompts of one length that join together share it), takes one token per
  `step`, and leaves when it is done; the row is then free for the next one. Each row has its
  own positions, so rows of different lengths need no padding. While a Batch is open the model
  runs prepared for inference (`Gemma3Model.prepared_for_inference`: fused q/k/v and gate/up,
  transposed weights, precomputed norm gains).
- `LMHead`: next-token logits from the last hidden state, ranking the vocabulary with a cheaper
  copy of the tied head (`Ranking`: int8 or bf16, with an error bound) and recomputing exactly
  every token that could be the best.
- `generate_ids`: prompts (token ids) in, new ids out, through a Batch: rows leave as they end.
- `generate`: text in, text out, with optional streaming of the new text.

Greedy decoding is `temperature=0`. Each row stops at the tokenizer's end-of-text id or after
`max_new_tokens`; the end-of-text token itself is not returned.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F

from tinygemma.device import native_bf16
from tinygemma.errors import TinyGemmaError
from tinygemma.model import Gemma3Model, KVCache


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick the next token per row from logits (B, V) -> (B,). temperature 0 means argmax.

    Each row takes the token where its cumulative probability passes u * total, for a uniform u
    per row: `uniform` (B,) when given (a batch of rows with generators of their own draws one
    each), else drawn from `generator`. One draw per row, not torch.multinomial's pass over the
    vocabulary with the generator: ~10x less time at a 50k vocabulary on CPU.
    """
    if temperature <= 0:
        return logits.max(dim=-1).indices  # argmax (the first of equal maxima), 2x faster than argmax on CPU
    logits, scale = logits.float(), 1 / temperature
    if top_k is not None and top_k < logits.size(-1) or top_p is not None and top_p < 1.0:
        logits, scale = logits * scale, 1.0  # top-p weighs the tokens at the temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) smallest kept logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked before it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    if uniform is None:
        uniform = torch.rand(logits.size(0), generator=generator, device=logits.device)
    return _inverse_cdf(logits, scale, uniform)


RUN = 256  # tokens per run when a (B, V) row is searched in two levels (_inverse_cdf, LMHead)


def _per_run(x: torch.Tensor, reduce: Callable) -> torch.Tensor:
    """x (B, V) -> reduce (torch.amax or torch.sum) over each run of RUN tokens, the last run maybe short: (B, runs)."""
    k = x.size(1) // RUN
    out = reduce(x[:, : k * RUN].unflatten(1, (k, RUN)), dim=-1)
    if k * RUN < x.size(1):
        out = torch.cat((out, reduce(x[:, k * RUN :], dim=-1, keepdim=True)), dim=1)
    return out


def _run_columns(runs: torch.Tensor, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run indices (n, 1) -> their tokens (n, RUN), clamped into the vocabulary, and which are real."""
    cols = runs * RUN + torch.arange(RUN, device=runs.device)
    return cols.clamp_max(V - 1), cols < V


def _inverse_cdf(logits: torch.Tensor, scale: float, uniform: torch.Tensor) -> torch.Tensor:
    """The first token whose cumulative weight exp(scale * (logit - max)) passes u * total, per row.

    In two levels: the sums of runs of RUN tokens find the run, and only that run is summed token by
    token (in float64). One pass fewer over the logits than softmax + cumsum, and no (B, V) float64
    tensor: 0.75 against 1.23 ms at 16 rows x 50k vocabulary (Xeon). right=True never stops on a
    zero-weight token."""
    w = (logits - logits.amax(dim=-1, keepdim=True)).mul_(scale).exp_()  # (B, V) unnormalised weights
    ends = _per_run(w, torch.sum).cumsum(dim=-1, dtype=torch.float64)  # (B, runs) cumulative weight at run ends
    target = uniform.to(w.device, torch.float64)[:, None] * ends[:, -1:]  # (B, 1)
    run = torch.searchsorted(ends, target, right=True).clamp_max_(ends.size(1) - 1)  # (B, 1)
    before = torch.where(run > 0, ends.gather(1, (run - 1).clamp_min(0)), 0.0)
    cols, inside = _run_columns(run, w.size(1))  # (B, RUN) the run's tokens
    cum = (w.gather(1, cols) * inside).cumsum(dim=-1, dtype=torch.float64) + before
    return cols.gather(1, torch.searchsorted(cum, target, right=True).clamp_max_(RUN - 1))[:, 0]


def _check_args(model: Gemma3Model, prompt_ids: list[list[int]], max_new_tokens: int,
                temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise TinyGemmaError("every prompt needs at least one token (start empty prompts with bos or end-of-text)")
    if max_new_tokens < 0 or temperature < 0:
        raise TinyGemmaError("--max-new-tokens and --temperature must not be negative")
    if not math.isfinite(temperature):
        raise TinyGemmaError(f"--temperature must be a finite number, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise TinyGemmaError(f"--top-k must be positive, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise TinyGemmaError(f"--top-p must be in (0, 1], got {top_p}")
    V = model.config.vocab_size
    if any(not 0 <= t < V for p in prompt_ids for t in p):
        raise TinyGemmaError(f"a prompt token id is outside the model's vocabulary (0..{V - 1}): "
                             "the tokenizer does not match the checkpoint")
    limit = model.config.max_position_embeddings
    longest = max(len(p) for p in prompt_ids) + max_new_tokens
    if longest > limit:
        raise TinyGemmaError(f"prompt + max_new_tokens = {longest} tokens exceeds the model's context of {limit}; "
                             "use a shorter prompt or fewer new tokens")


class LMHead:
    """Next-token logits (B, V) in fp32 from final hidden states (B, d), for decoding.

    Batch-1 decoding is bound by the bytes of weights read per token, and the tied head is
    most of them (262,144 x 640 at Gemma 3 270M: 671 MB in fp32). With `fast=True` an fp32
    model ranks the vocabulary with a cheaper copy of the head (`Ranking`: int8 for one row on
    CPU, a quarter of the bytes; else bf16, half), which comes with a bound on its error. Every
    token whose approximate logit is within twice that bound of the best one could be the
    greedy pick, so those logits are recomputed exactly in fp32 from the real weights (a row with
    more than V/8 of them, a flat distribution, is recomputed whole: each row decides for itself).
    Greedy decoding therefore picks exactly what the fp32 head picks; tokens further down keep their
    approximate logits (relative error ~1e-2), which top-k and top-p sampling see as they are.

    With `batch_invariant=True` every row count ranks with the bf16 copy, so a row's logits do
    not depend on the rows computed beside it (the server's promise that a seeded request writes
    the same text alone or in a batch); otherwise one row on CPU takes the faster int8 copy.
    """

    def __init__(self, weight: torch.Tensor, fast: bool = True, batch_invariant: bool = False):
        self.weight, self.use_int8 = weight, not batch_invariant
        self.ranking = Ranking.of(weight) if fast and weight.dtype == torch.float32 else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.ranking is None:
            return F.linear(x, self.weight).float()
        approx, err = self.ranking.logits(x, self.use_int8)  # (B, V), (B, 1)
        rows, cols, flat = self._candidates(approx, err)
        if rows.numel():
            picked = self.weight.index_select(0, cols)  # (n, d): the candidates' rows of the head
            # every candidate against every row's x (n x B dot products, B is small), then each its own row's
            approx[rows, cols] = (picked @ x.to(picked.dtype).T).gather(1, rows[:, None])[:, 0].float()
        if flat.numel():  # a flat distribution: cheaper to compute the row's every logit exactly
            approx[flat] = F.linear(x[flat], self.weight).float()
        return approx

    def _candidates(self, approx: torch.Tensor, err: torch.Tensor):
        """The tokens that could be a row's best -> (rows, cols) of them, and the rows with so many that
        the whole row is recomputed instead. Each row's choice depends on that row alone.

        One pass over the logits takes the maximum of each run of RUN tokens; only the runs whose
        maximum is near the top are searched (a pass of `>=` and `nonzero` over every logit took
        0.6 ms for 16 rows at a 50k vocabulary, a third of the head)."""
        B, V = approx.shape
        maxes = _per_run(approx, torch.amax)  # (B, runs)
        top = maxes.amax(dim=-1, keepdim=True)
        low = top - 2 * (err + top.abs() * 2**-8)  # |approx - exact| <= err + 2^-8 |top| near the top
        rows, runs = (maxes >= low).nonzero(as_tuple=True)  # the runs that hold a candidate
        cols, inside = _run_columns(runs[:, None], V)  # (n, RUN) their tokens
        keep = inside & (approx[rows[:, None], cols] >= low[rows])
        count = torch.zeros(B, dtype=torch.long, device=approx.device).index_add_(0, rows, keep.sum(dim=1))
        flat = count > V // 8
        keep &= ~flat[rows][:, None]
        return rows[:, None].expand_as(cols)[keep], cols[keep], flat.nonzero()[:, 0]


@dataclass(frozen=True)
class Ranking:
    """Cheap copies of an fp32 head (V, d) that rank the vocabulary, each with an error bound.

    - bf16: |w - bf16(w)| <= 2^-9 |w| per weight, and the same for the activations. On CPUs with
      native bf16 it is kept in oneDNN's packed layout (`packed`): 0.7 ms for 1 to 16 rows at
      50k x 256 on the Xeon, against 1.3 ms for F.linear, which repacks the weight on every call;
      at that shape the same results, bit for bit, for 1 and 16 rows (not at every shape: a
      2,048 x 32 head differed in the last bits between 1 and 4 rows).
    - int8 (CPU only): a bf16 scale s_v per vocabulary row, q = round(w / s_v) in [-127, 127];
      |w - q s_v| <= 0.75 s_v with the scale's own bf16 rounding, and bf16 activations.
    So for a row x the logit error is at most c * ||x||_1 (c below, with 10% to spare for the
    sums' fp32 rounding) plus the rounding of the output to bf16, 2^-9 of the logit.
    """

    bf16: torch.Tensor  # (V, d), or oneDNN's packed layout of it
    packed: bool
    bf16_c: float
    int8: tuple[torch.Tensor, torch.Tensor] | None  # (q (V, d) int8, scales (V,) bf16)
    int8_c: float

    _made: ClassVar[dict[int, tuple]] = {}  # id(weight) -> (weakref to it, its version, its Ranking)

    @classmethod
    def of(cls, weight: torch.Tensor) -> Ranking:
        """The copies of `weight`, made once per version of it (~70 ms at a 50k vocabulary): an in-place
        change (an optimizer step, load_state_dict) bumps the version and makes new ones."""
        entry = cls._made.get(id(weight))
        if entry is not None and entry[0]() is weight and entry[1] == weight._version:
            return entry[2]
        with torch.no_grad():
            big = weight.abs().amax(dim=1)  # (V,) the largest weight of each row
            int8 = None
            if weight.device.type == "cpu":
                scale = big.clamp_min(1e-30) / 127
                int8 = (torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale.to(torch.bfloat16))
            bf16 = weight.to(torch.bfloat16)
            packed = weight.device.type == "cpu" and native_bf16(weight.device) and torch.backends.mkldnn.is_available()
            if packed:
                bf16 = torch.ops.mkldnn._reorder_linear_weight(bf16, 32)  # laid out for up to ~32 rows
            made = cls(bf16, packed, 1.1 * 2**-8 * float(big.max()), int8, 1.1 * float(big.max()) / 127)
        if len(cls._made) >= 2:  # a model or two in use at once; older entries only hold memory
            cls._made.clear()
        cls._made[id(weight)] = (weakref.ref(weight), weight._version, made)
        return made

    def logits(self, x: torch.Tensor, int8: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, d) -> approximate logits (B, V) in fp32 and a bound (B, 1) on their error, less the
        output's own rounding (2^-9 of the logit: the caller adds it for the logits it looks at).
        One row reads the int8 copy when there is one and `int8` allows; else the bf16 copy."""
        xl = x.to(torch.bfloat16)
        if int8 and self.int8 is not None and x.size(0) == 1:  # int8 reads fastest (docs/BENCHMARKS.md)
            approx, c = torch._weight_int8pack_mm(xl, *self.int8).float(), self.int8_c
        elif self.packed:
            approx, c = torch.ops.mkldnn._linear_pointwise(xl, self.bf16, None, "none", [], "").float(), self.bf16_c
        elif x.size(0) == 1:  # torch.mv read the bf16 head ~1.5x faster than F.linear on the Xeon
            approx, c = torch.mv(self.bf16, xl[0])[None].float(), self.bf16_c
        else:
            approx, c = F.linear(xl, self.bf16).float(), self.bf16_c
        return approx, c * x.float().abs().sum(dim=-1, keepdim=True)


class Batch:
    """Sequences that join and leave the rows of one KVCache while the others decode.

        with Batch(model, rows=4, max_len=2048) as batch:
            row, logits = batch.join(prompt_ids)         # prefill a free row -> logits (V,) of its next token
            logits = batch.step([row, ...], [token, ...])  # one token for each given row -> logits (n, V)
            batch.leave(row)                             # done: the row is free, its keys are never seen again

    The rows given to a step may be any of the joined ones, in any order; each continues at its
    own position. `join` (`join_all` for several prompts) raises TinyGemmaError when too few rows
    are free (a server answers "busy"). While open, the model is in eval mode and prepared for
    inference (Gemma3Model.prepared_for_inference), so its weights must not change. With `use_cache=False` every step recomputes
    each row's whole sequence with the plain forward instead (a reference for tests and benchmarks).
    `fast_head` and `batch_invariant` choose the LMHead.
    """

    def __init__(self, model: Gemma3Model, rows: int, max_len: int, fast_head: bool = True, use_cache: bool = True,
                 batch_invariant: bool = False):
        weight = model.embed_tokens.weight
        if max_len > model.config.max_position_embeddings:
            raise TinyGemmaError(f"max_len {max_len} exceeds the model's context of {model.config.max_position_embeddings}")
        self.model, self.rows, self.max_len, self.device = model, rows, max_len, weight.device
        self.cache = KVCache(model.config, rows, max_len, weight.device, weight.dtype) if use_cache else None
        self.head = LMHead(weight, fast=fast_head, batch_invariant=batch_invariant)
        self.free = list(range(rows))
        self.seqs: dict[int, list[int]] = {}  # the tokens of each joined row so far
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Batch:
        self._stack.callback(self.model.train, self.model.training)
        self.model.eval()
        if self.cache is not None:
            self._stack.enter_context(self.model.prepared_for_inference())
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def join(self, prompt_ids: Sequence[int]) -> tuple[int, torch.Tensor]:
        """Prefill a free row with a prompt -> (the row, logits (V,) of the prompt's next token)."""
        return self.join_all([prompt_ids])[0]

    def join_all(self, prompts: Sequence[Sequence[int]]) -> list[tuple[int, torch.Tensor]]:
        """Prefill free rows with prompts, all in one forward -> (row, logits (V,)) for each, in order."""
        logits, rows = self.step_and_join([], [], prompts)
        return list(zip(rows, logits))

    def step(self, rows: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        """One token for each of `rows` (at each row's next position) -> logits (len(rows), V)."""
        return self.step_and_join(rows, tokens, [])[0]

    @torch.inference_mode()
    def step_and_join(self, rows: Sequence[int], tokens: Sequence[int],
                      prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, list[int]]:
        """One token for each of `rows` and, in the same forward, each prompt into a free row (a ragged
        forward: a sequence joins a running batch for the price of its tokens, not of a forward of its
        own) -> (logits (len(rows) + len(prompts), V): the rows' next tokens, then each prompt's; the
        prompts' rows). Prompts take the lowest free rows, so live rows stay a run the cache reads as a view."""
        if len(rows) != len(tokens) or any(r not in self.seqs for r in rows) or len(set(rows)) != len(rows):
            raise ValueError(f"step needs one token for each of some joined rows {sorted(self.seqs)}; got rows {list(rows)}")
        if len(prompts) > len(self.free):
            raise TinyGemmaError(f"{len(prompts)} prompt(s) for {len(self.free)} free rows: the other rows of "
                                 f"{self.rows} are busy")
        if not all(0 < len(p) <= self.max_len for p in prompts):
            raise TinyGemmaError(f"a prompt needs 1 to {self.max_len} tokens, got {sorted({len(p) for p in prompts})}")
        first = {}  # each length's first prompt: prompts of one length go together, as one part of the forward
        order = sorted(range(len(prompts)), key=lambda i: first.setdefault(len(prompts[i]), i))
        joined = [0] * len(prompts)
        for i, row in zip(order, sorted(self.free)[: len(prompts)]):
            joined[i] = row
            self.free.remove(row)
            self.seqs[row] = list(prompts[i])
        for r, t in zip(rows, tokens):
            self.seqs[r].append(int(t))
        feed = [(r, [int(t)]) for r, t in zip(rows, tokens)] + [(joined[i], list(prompts[i])) for i in order]
        try:
            x = self._last_hidden(feed)
        except BaseException:  # the joiners' rows are free again; the caller decides what becomes of the others
            for row in joined:
                self.leave(row)
            raise
        logits = self.head(x)
        if prompts:  # back into the caller's order: the rows' logits, then each prompt's
            where = {i: len(rows) + k for k, i in enumerate(order)}
            logits = logits[list(range(len(rows))) + [where[i] for i in range(len(prompts))]]
        return logits, joined

    def _last_hidden(self, feed: list[tuple[int, list[int]]]) -> torch.Tensor:
        """The tokens `feed` gives each row, in one forward -> the hidden state (n, d) after each row's last."""
        if self.cache is None:  # the reference: each row's whole sequence through the plain forward
            return torch.cat([self.model.hidden_states(torch.tensor([self.seqs[r]], device=self.device))[:, -1]
                              for r, _ in feed])
        if len({len(ids) for _, ids in feed}) == 1:  # one shape: a plain (B, T) forward
            ids = torch.tensor([ids for _, ids in feed], device=self.device)
            return self.model.hidden_states(ids, cache=self.cache, rows=[r for r, _ in feed])[:, -1]
        lengths = [len(ids) for _, ids in feed]  # else a ragged forward: all the tokens in a row of one
        flat = torch.tensor([t for _, ids in feed for t in ids], device=self.device)[None]
        h = self.model.hidden_states(flat, cache=self.cache, rows=[r for r, _ in feed], lengths=lengths)
        return h[0, torch.tensor(lengths, device=self.device).cumsum(0) - 1]  # each row's last token

    def leave(self, row: int) -> None:
        """The row's sequence is done: free the row for the next join."""
        del self.seqs[row]
        if self.cache is not None:
            self.cache.reset(row)
        self.free.append(row)


def generate_ids(
    model: Gemma3Model,
    prompt_ids: list[list[int]],
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    eot_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    fast_head: bool = True,
    on_tokens: Callable[[list[int]], None] | None = None,
) -> list[list[int]]:
    """Continue each prompt; returns the new token ids per prompt (without the end-of-text id).

    Each prompt takes a row of one Batch; a row leaves the batch when it ends, so the steps
    after that compute only the rows still going. `on_tokens` receives each step's tokens (one
    per prompt; finished prompts repeat eot_id). `use_cache=False` recomputes every prefix from
    scratch (for tests and benchmarks). `fast_head` ranks the vocabulary with a cheaper copy of
    the head (see LMHead); greedy picks are the same as the fp32 head's.
    """
    _check_args(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    out: list[list[int]] = [[] for _ in prompt_ids]
    if max_new_tokens == 0:
        return out
    max_len = max(len(p) for p in prompt_ids) + max_new_tokens
    with Batch(model, len(prompt_ids), max_len, fast_head, use_cache) as batch:
        rows, first = zip(*batch.join_all(prompt_ids))
        logits, live = torch.stack(first), list(range(len(prompt_ids)))  # live: the prompts still going
        for i in range(max_new_tokens):
            tokens = [eot_id] * len(prompt_ids)  # finished prompts repeat eot_id
            for b, t in zip(live, sample_next(logits, temperature, top_k, top_p, generator).tolist()):
                tokens[b] = t
            if on_tokens is not None:
                on_tokens(tokens)
            for b in live:
                if tokens[b] == eot_id:
                    batch.leave(rows[b])
                else:
                    out[b].append(tokens[b])
            live = [b for b in live if tokens[b] != eot_id]
            if not live or i == max_new_tokens - 1:
                break
            logits = batch.step([rows[b] for b in live], [tokens[b] for b in live])
    return out


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt ids as the model saw a document begin in training: after data.start_token (<bos> when the
    tokenizer has one, else the end-of-text that ends the document before)."""
    from tinygemma.data import start_token

    return [start_token(tokenizer.bos_id, tokenizer.eot_id)] + tokenizer.encode(prompt)


class TextDecoder:
    """The text of a growing list of new ids, passed on in pieces as it becomes final.

    Holds back an incomplete UTF-8 character, and text that may be the start of a stop string.
    When a stop string appears, the text ends just before it and `stopped` is set. Each push
    decodes all ids so far, so tokenizers whose pieces depend on their neighbours decode right.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0  # characters already passed on
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one id -> the text that became final (maybe empty)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete character: wait for its other bytes
            return ""
        for s in self.stop:
            at = text.find(s, max(0, self.sent - len(s) + 1))
            if at >= 0:
                self.stopped, text = True, text[:at]
        end = len(text) if self.stopped else len(text) - self._held_back(text)
        piece = text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece

    def flush(self) -> str:
        """At the end (length reached): the text held back for a stop string that never came."""
        text = self.tokenizer.decode(self.ids).rstrip("\ufffd") if not self.stopped else ""
        piece = text[self.sent :]
        self.sent += len(piece)
        return piece

    def _held_back(self, text: str) -> int:
        """Length of the longest end of `text` that begins a stop string."""
        return max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def _streamer(tokenizer, stream: Callable[[str], None]) -> Callable[[list[int]], None]:
    """generate_ids' on_tokens for one sequence: its text pieces to `stream` as they become final."""
    decoder = TextDecoder(tokenizer)

    def on_tokens(tokens: list[int]) -> None:
        if tokens[0] != tokenizer.eot_id and (piece := decoder.push(tokens[0])):
            stream(piece)

    return on_tokens


def generate(
    model: Gemma3Model,
    tokenizer,
    prompt: str | list[str],
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stream: Callable[[str], None] | None = None,
    num_samples: int = 1,
) -> list[str]:
    """Prompt(s) -> prompt + continuation, `num_samples` per prompt (prompt-major order).

    `stream` receives text pieces as they are made; it needs a single sequence (one prompt,
    num_samples=1). The same `seed` gives the same text on the same device.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    prompts = [p for p in prompts for _ in range(num_samples)]
    if stream is not None and len(prompts) != 1:
        raise TinyGemmaError("streaming needs a single prompt and --num-samples 1")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.embed_tokens.weight.device).manual_seed(seed)
    on_tokens = _streamer(tokenizer, stream) if stream is not None else None
    ids = generate_ids(
        model, [encode_prompt(tokenizer, p) for p in prompts], max_new_tokens, temperature, top_k, top_p,
        eot_id=tokenizer.eot_id, generator=generator, on_tokens=on_tokens,
    )
    return [p + tokenizer.decode(new) for p, new in zip(prompts, ids)]
