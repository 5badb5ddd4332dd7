"""Gemma 3 text model in plain PyTorch: the maths only (no I/O, no distributed, no printing).

Architecture choices, all as in the reference (transformers' Gemma3ForCausalLM; the
parity tests in tests/unit/test_parity.py hold us to it):
- token embedding times sqrt(hidden_size), the scale cast to the weight dtype first;
- pre-norm blocks with four RMSNorms: input, post-attention, pre-feedforward, post-feedforward;
- RMSNorm computes in fp32 and multiplies by (1 + w), w initialised to 0;
- attention: grouped-query (n_kv_heads shared by n_heads), per-head RMSNorm on q and k
  before RoPE, scale query_pre_attn_scalar ** -0.5, no soft-capping;
- `layer_types`: sliding layers see the last `sliding_window` positions (self included)
  and use RoPE theta `rope_local_base`; full layers are causal and use `rope_global_base`;
- MLP: down(gelu_tanh(gate(x)) * up(x));
- final RMSNorm, LM head tied to the embedding (no separate weight in the state dict).

One addition, off by default: `ModelConfig.dropout` > 0 drops the scaled embeddings and each
residual branch in training mode only (for many epochs over small data). Not the attention
probabilities: SDPA with dropout leaves its fused CPU kernel, and the step was 35% slower.

Inference uses the same forward. `forward(ids, cache=KVCache(...))` writes each layer's keys
and values into a preallocated cache and attends over it: a whole prompt into empty rows
(prefill), or one token per row (decoding). Each cache row is a sequence with its own
position, so rows can join and leave a running batch (`KVCache.reset`, `rows=`). Inside
`with model.prepared_for_inference():` the same modules run with q/k/v and gate/up as one
matmul each, transposed weight copies and (1 + w) precomputed: fewer ops and faster matmuls per
decoding step, the same maths (docs/MODEL.md, Generation).

Parameter names follow transformers' Gemma 3 (without the `model.` prefix), so
import/export is a renaming of one prefix.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinygemma.config import SLIDING, ModelConfig
from tinygemma.loss import linear_cross_entropy


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * gain over the last dim, computed in fp32 (gain: (1 + w) in fp32, broadcast), in x's dtype."""
    xf = x if x.dtype == torch.float32 else x.float()
    if xf.is_cuda:  # one fused kernel on GPUs
        y = F.rms_norm(xf, (x.size(-1),), eps=eps) * gain
    else:  # on CPU torch's rms_norm is these ops and a few more: this is ~10% of a batch-1 decoding step
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps) * gain
    return y if y.dtype == x.dtype else y.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))
        self.prepared_gain: torch.Tensor | None = None  # (1 + w) in fp32, set by prepared_for_inference

    def gain(self) -> torch.Tensor:
        """The factor after normalising: (1 + w) in fp32."""
        return self.prepared_gain if self.prepared_gain is not None else 1.0 + self.weight.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.gain(), self.eps)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype):
    """RoPE tables for `positions` (T,) or (B, T) -> cos, sin (..., T, 1, head_dim), computed in fp32.

    The 1 broadcasts over heads. sin's first half is negated, so that apply_rope's roll of x by
    half a head is the rotation cat(-x2, x1) (the same products, so the same values).
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (base**exponents)  # (head_dim/2,)
    freqs = positions.float()[..., None, None] * inv_freq  # (..., T, 1, head_dim/2)
    sin = freqs.sin()
    return torch.cat((freqs, freqs), dim=-1).cos().to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, heads, D) by the half-split convention, with rope_cos_sin's tables."""
    return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Which keys each query sees: positions q_pos (..., Tq), k_pos (..., Tk) -> bool (..., Tq, Tk).

    A key is seen if it is not after the query and, with a `window` (sliding layers), among the
    query's last `window` positions, itself included. Negative key positions (empty cache slots)
    are never seen.
    """
    q, k = q_pos[..., :, None], k_pos[..., None, :]
    seen = (k <= q) & (k >= 0)
    return seen if window is None else seen & (k > q - window)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx  # its slot in a KVCache
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.scale = cfg.query_pre_attn_scalar**-0.5
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        # set by prepared_for_inference: the q/k/v weights as one (d, (H + 2Hkv) D) matrix and o_proj's as
        # (H D, d), both transposed (x @ w), and the q and k norms' gains as one (H + Hkv, D) table
        self.qkv_t: torch.Tensor | None = None
        self.o_t: torch.Tensor | None = None
        self.qk_gain: torch.Tensor | None = None

    def prepare(self, on: bool) -> None:
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        self.qkv_t = _t(torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))) if on else None
        self.o_t = _t(self.o_proj.weight) if on else None
        self.qk_gain = torch.cat((self.q_norm.gain().expand(H, D), self.k_norm.gain().expand(Hkv, D))) if on else None

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x (B, T, d) -> q (B, T, H, D), k and v (B, T, Hkv, D); q and k normed and rotated."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        if self.qkv_t is None:
            q = apply_rope(self.q_norm(self.q_proj(x).view(B, T, H, D)), cos, sin)
            k = apply_rope(self.k_norm(self.k_proj(x).view(B, T, Hkv, D)), cos, sin)
            return q, k, self.v_proj(x).view(B, T, Hkv, D)
        # prepared: one matmul; q and k (adjacent in its output) normed and rotated as one tensor
        qkv = (x @ self.qkv_t).view(B, T, H + 2 * Hkv, D)
        qk = apply_rope(rms_norm(qkv[:, :, : H + Hkv], self.qk_gain, self.q_norm.eps), cos, sin)
        return qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + Hkv :]

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None):
        B, T, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)  # (B, T, heads, D)
        if cache is None:  # a fresh sequence: causal (T > 1) unless `mask` says more
            y = self._attend(q, k, v, mask, is_causal=mask is None and T > 1)
        elif not cache.ragged:  # the common call: one prompt length, or one token per row
            y = self._attend(q, *cache.update(self.layer_idx, 0, k, v))
        else:  # a ragged forward (B = 1): each part's tokens are a (rows, T) block of its own
            ys = []
            for i, part in enumerate(cache.parts):
                qp, kp, vp = (t[0, part.tokens].unflatten(0, (part.rows, part.length)) for t in (q, k, v))
                ys.append(self._attend(qp, *cache.update(self.layer_idx, i, kp, vp)).flatten(0, 1))
            y = torch.cat(ys)[None]
        return self.o_proj(y) if self.o_t is None else y @ self.o_t

    def _attend(self, q, k, v, mask, is_causal: bool) -> torch.Tensor:
        """q (B, T, H, D) over keys and values (B, S, Hkv, D) -> (B, T, H * D)."""
        B, T = q.shape[:2]
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T or S, D)
        if T == 1:  # one query a head: the G = H / Hkv heads sharing a KV head are G query rows of it
            q = q.reshape(B, Hkv, H // Hkv, D)  # SDPA without enable_gqa: 3x faster at 200 keys on CPU
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale, enable_gqa=q.size(1) != Hkv,
        )  # (B, H, T, D), or (B, Hkv, G, D) for T = 1: the same order of heads
        return y.reshape(B, 1, H * D) if T == 1 else y.transpose(1, 2).reshape(B, T, H * D)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        # set by prepared_for_inference: gate and up as one (d, 2 I) matrix and down as (I, d), transposed
        self.gate_up_t: torch.Tensor | None = None
        self.down_t: torch.Tensor | None = None

    def prepare(self, on: bool) -> None:
        self.gate_up_t = _t(torch.cat((self.gate_proj.weight, self.up_proj.weight))) if on else None
        self.down_t = _t(self.down_proj.weight) if on else None

    def forward(self, x):
        if self.gate_up_t is None:
            return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))
        gate, up = (x @ self.gate_up_t).chunk(2, dim=-1)  # prepared: one matmul
        return (F.gelu(gate, approximate="tanh") * up) @ self.down_t


def _t(weight: torch.Tensor) -> torch.Tensor:
    """A Linear's (out, in) weight as a contiguous (in, out) matrix for `x @ w`. On CPU MKL multiplied
    1 to 16 rows by it 1.1-1.9x faster than F.linear by the (out, in) one (docs/MODEL.md)."""
    return weight.t().contiguous()


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.is_sliding = cfg.layer_types[layer_idx] == SLIDING
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        eps = cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.dropout = cfg.dropout  # on each residual branch, training only

    def forward(self, x, cos, sin, mask, cache=None):
        attn = self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache))
        x = x + _dropout(attn, self.dropout, self.training)
        mlp = self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return x + _dropout(mlp, self.dropout, self.training)


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, skipped entirely at p=0 so the default model is exactly Gemma 3 (and no slower)."""
    return F.dropout(x, p, training) if p > 0 and training else x


class Gemma3Model(nn.Module):
    """Gemma 3 decoder. `model(idx)` -> (logits, None); `model(idx, targets)` -> (logits, loss)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self._mask_cache: dict[tuple, torch.Tensor] = {}
        self._prepared = False
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The one place weights are initialised.

        - RMSNorm weights: 0 (the norm multiplies by 1 + w, so this is the identity scale);
        - embedding (and so the tied LM head) and q/k/v, gate/up: N(0, init_std);
        - o_proj and down_proj, which write into the residual stream: N(0, init_std / sqrt(2 * n_layers)),
          so the residual's variance does not grow with depth (as GPT-2).
        For a model built on the meta device: `model.to_empty(device=d); model.init_weights()`.
        """
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.zero_()
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                p.normal_(0.0, std)

    @contextlib.contextmanager
    def prepared_for_inference(self) -> Iterator[Gemma3Model]:
        """Within the block the modules run the same maths with fewer ops and faster matmuls: each
        attention's q/k/v and each MLP's gate/up as one matmul (weights concatenated on entry), every
        matmul by a transposed contiguous copy of its weight, every RMSNorm with (1 + w) precomputed.

        The copies are made on entry and dropped on exit, so the weights must not change inside
        (train.py samples between training steps: each sample prepares afresh). Nesting is allowed;
        the outermost block owns the preparation.
        """
        if self._prepared:
            yield self
            return
        norms = [m for m in self.modules() if isinstance(m, RMSNorm)]
        fused = [m for m in self.modules() if isinstance(m, (Attention, MLP))]
        with torch.no_grad():
            for n in norms:
                n.prepared_gain = n.gain()
            for m in fused:
                m.prepare(True)
        self._prepared = True
        try:
            yield self
        finally:
            self._prepared = False
            for m in fused:
                m.prepare(False)
            for n in norms:
                n.prepared_gain = None

    def _sliding_mask(self, T: int, device: torch.device) -> torch.Tensor | None:
        """Boolean (T, T) mask for a sliding layer over a fresh sequence, built once per (T, device)."""
        W = self.config.sliding_window
        if T <= W:
            return None  # the window covers the whole sequence: plain causal
        key = (T, W, str(device))
        if key not in self._mask_cache:
            if len(self._mask_cache) >= 4:  # prompts of many lengths must not pile masks up
                self._mask_cache.clear()
            i = torch.arange(T, device=device)
            self._mask_cache[key] = attention_mask(i, i, W)
        return self._mask_cache[key]

    def hidden_states(self, input_ids, *, cache: KVCache | None = None, rows: Sequence[int] | None = None,
                      lengths: Sequence[int] | None = None):
        """input_ids (B, T) -> final-norm hidden states (B, T, hidden_size), the LM head's input.

        With `cache`, the tokens continue the cache's rows `rows` (all rows if None; B = len(rows)),
        each at its own next position. With `lengths` too, the forward is ragged: input_ids (1, N)
        holds lengths[i] tokens for rows[i], one row after another, so prompts for empty rows and
        single tokens for the others go through one forward (KVCache.begin says what a call may feed).
        """
        B, T = input_ids.shape
        x = self.embed_tokens(input_ids)
        x = x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)  # scale in the weight dtype
        x = _dropout(x, self.config.dropout, self.training)
        masks = {True: None, False: None}  # with a cache, each part of the forward has its masks in the cache's plan
        if cache is None:  # a fresh sequence: positions 0..T-1, causal (and windowed), as in training
            masks[True] = self._sliding_mask(T, x.device)
            rope = self._rope(torch.arange(T, device=x.device), x.dtype)
        else:  # each token at its own position: rows of tables made once per cache
            pos = cache.begin(B, T, rows, lengths, x.device)
            if cache.rope is None:
                cache.rope = self._rope(torch.arange(cache.max_len, device=x.device), x.dtype)
            rope = {s: (cos[pos], sin[pos]) for s, (cos, sin) in cache.rope.items()}
        for layer in self.layers:
            x = layer(x, *rope[layer.is_sliding], masks[layer.is_sliding], cache)
        return self.norm(x)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
        """RoPE cos/sin tables for `positions` (T,), keyed by is_sliding: each layer type has its own base."""
        cfg = self.config
        return {
            True: rope_cos_sin(positions, cfg.head_dim, cfg.rope_local_base, dtype),
            False: rope_cos_sin(positions, cfg.head_dim, cfg.rope_global_base, dtype),
        }

    def forward(self, input_ids, targets=None, *, cache=None, rows=None, return_logits=False):
        """input_ids (B, T) -> (logits (B, T, V), None); with `targets` -> (None, mean cross-entropy).

        With targets the loss is computed chunk-wise without the full logits (loss.py), so the
        logits slot is None; pass return_logits=True to get both (the plain, memory-hungry way).
        Targets equal to -1 are ignored by the loss. `cache` and `rows` as in hidden_states.
        """
        x = self.hidden_states(input_ids, cache=cache, rows=rows)
        if targets is not None and not return_logits:
            # chunked head + loss: never materialises the (B*T, V) logits (see loss.py)
            return None, linear_cross_entropy(x, self.embed_tokens.weight, targets)
        logits = F.linear(x, self.embed_tokens.weight)  # tied LM head
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss


@dataclass
class _Plan:
    """How one part of a forward call uses the cache, the same for every layer of one type."""

    write: tuple  # index of the new keys' columns in a (B, Hkv, C, D) buffer
    arrange: Callable[[torch.Tensor], torch.Tensor]  # new keys (b, Hkv, T, D) -> the value stored there
    read: tuple | None  # index of the columns the queries attend to; None: the new keys alone (a prompt)
    mask: torch.Tensor | None  # which of them each query sees; None: all of them, or causal (is_causal)
    is_causal: bool


@dataclass
class _Part:
    """Rows of a forward call that take the same number of tokens, all prompts or all one token each."""

    tokens: slice  # their tokens in a ragged call's flat order
    rows: int
    length: int  # tokens per row
    plans: dict[bool, _Plan]  # keyed by is_sliding


def _as_is(t: torch.Tensor) -> torch.Tensor:
    return t


def _only_column(t: torch.Tensor) -> torch.Tensor:
    return t[:, :, 0]  # (b, Hkv, 1, D) -> (b, Hkv, D), for a write at a different slot per row


class KVCache:
    """Keys and values of the tokens seen so far, preallocated, written by Gemma3Model's own forward.

    Each of the `batch_size` rows is one sequence with its own length (the position of its next
    token). A forward call feeds a prompt to rows that are empty, or one token to each of some
    rows, wherever each row is, or both at once (a ragged call). So a sequence can join a running
    batch in a free row while the other rows decode, in the same forward, and `reset` frees a
    finished row for reuse.

    Sliding layers keep a ring of min(sliding_window, max_len) columns: position p sits in slot
    p % window, so after writing p the ring holds exactly the window p - window + 1 .. p. Full
    layers keep max_len columns (slot = position). Memory: n_layers * 2 * batch_size * n_kv_heads
    * head_dim values times the columns of each layer.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        self.config, self.batch_size, self.max_len = config, batch_size, max_len
        self.lengths = [0] * batch_size  # tokens held per row = the position of its next token
        self.sliding = [t == SLIDING for t in config.layer_types]
        self.columns = {True: min(config.sliding_window, max_len), False: max_len}
        shapes = [(batch_size, config.n_kv_heads, self.columns[s], config.head_dim) for s in self.sliding]
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.parts: list[_Part] = []  # set by begin() for the forward under way
        self.ragged = False  # whether that forward is a ragged one (parts of their own shape)
        self.rope = None  # the model's RoPE tables for positions 0..max_len-1, made on the first step

    def reset(self, row: int) -> None:
        """Empty a row: its keys are never seen again, and it can take a new prompt."""
        self.lengths[row] = 0

    def begin(self, B: int, T: int, rows: Sequence[int] | None, lengths: Sequence[int] | None, device) -> torch.Tensor:
        """Plan a forward of input_ids (B, T) -> the position of each token, shaped to broadcast as (B, T).

        Without `lengths`, each of `rows` (all rows if None) takes T tokens: a prompt into empty
        rows (as in training: positions 0..T-1, causal and windowed), or T = 1 and each row one
        token at its own next position. With `lengths` (a ragged call, B = 1, T = sum(lengths)),
        rows[i] takes the next lengths[i] tokens: a prompt if it is empty, else one token.
        Consecutive rows that take the same number of tokens form one part (its tokens a (rows,
        length) block); each part attends on its own, and the position-wise layers see one batch.
        """
        rows = list(range(self.batch_size)) if rows is None else list(rows)
        self.ragged = lengths is not None
        if not self.ragged:
            if len(rows) != B:
                raise ValueError(f"rows {rows} must be {B} rows, one per row of input_ids")
            lengths = [T] * B
        elif B != 1 or len(lengths) != len(rows) or sum(lengths) != T or min(lengths, default=0) < 1:
            raise ValueError(f"a ragged call feeds (1, sum(lengths)) tokens; got {B} x {T} for lengths {list(lengths)}")
        if len(set(rows)) != len(rows) or not all(0 <= r < self.batch_size for r in rows):
            raise ValueError(f"rows {rows} must be different rows of the cache's {self.batch_size}")
        starts = [self.lengths[r] for r in rows]
        if any(n > 1 and s for n, s in zip(lengths, starts)):
            raise ValueError("a prompt of several tokens goes into empty rows (KVCache.reset); "
                             "rows that hold tokens take one token per forward")
        end = max(s + n for s, n in zip(starts, lengths))
        if end > self.max_len:
            raise ValueError(f"KVCache holds {self.max_len} positions; {end} requested")
        self.parts, positions, i = [], [], 0
        while i < len(rows):  # each run of rows taking the same number of tokens is a part
            j = i + 1
            while j < len(rows) and lengths[j] == lengths[i]:
                j += 1
            n, part_rows, part_starts = lengths[i], rows[i:j], starts[i:j]
            # rows in a run (all of them, or a server's compact block of live rows): a view, not a gather
            run = part_rows == list(range(part_rows[0], part_rows[0] + len(part_rows)))
            index = slice(part_rows[0], part_rows[-1] + 1) if run else torch.tensor(part_rows, device=device)
            if any(part_starts):
                plans, pos = self._plan_step(part_starts, index, device)  # pos (b, 1)
            else:
                plans, pos = self._plan_prompt(n, index, device), torch.arange(n, device=device)[None]  # (1, n)
            first = sum(lengths[:i])
            self.parts.append(_Part(slice(first, first + n * len(part_rows)), len(part_rows), n, plans))
            positions.append(pos.expand(len(part_rows), n).reshape(-1) if self.ragged else pos)
            i = j
        for r, n in zip(rows, lengths):
            self.lengths[r] += n
        return torch.cat(positions)[None] if self.ragged else positions[0]

    def _plan_prompt(self, T: int, index, device) -> dict[bool, _Plan]:
        plans = {}
        for sliding, C in self.columns.items():
            window = self.config.sliding_window if sliding else None
            mask = None
            if window is not None and T > window:  # a fresh sequence past the window, as Gemma3Model._sliding_mask
                i = torch.arange(T, device=device)
                mask = attention_mask(i, i, window)
            if T <= C:
                write, arrange = (index, slice(None), slice(0, T)), _as_is
            else:  # the last C positions T-C..T-1 go to slots (T-C..T-1) % C: a rotation by T % C
                write, arrange = (index, slice(None), slice(0, C)), lambda t, C=C: t[:, :, -C:].roll(T % C, dims=2)
            plans[sliding] = _Plan(write, arrange, None, mask, mask is None and T > 1)
        return plans

    def _plan_step(self, starts: list[int], index, device) -> tuple[dict[bool, _Plan], torch.Tensor]:
        q = torch.tensor(starts, device=device)[:, None]  # (B, 1): each row's position
        plans = {}
        for sliding, C in self.columns.items():
            seen = [min(s + 1, C) for s in starts]  # columns holding each row's keys, after the write
            n = max(seen)
            slots = {s % C for s in starts}
            if len(slots) == 1:
                slot = slots.pop()
                write, arrange = (index, slice(None), slice(slot, slot + 1)), _as_is
            else:
                rows = index if isinstance(index, torch.Tensor) else torch.arange(index.start, index.stop,
                                                                                  device=device)
                write, arrange = (rows, slice(None), q[:, 0] % C), _only_column
            mask = None  # every row sees all n columns
            if min(seen) != n:  # slot j holds the row's latest position p <= q with p = j (mod C); p < 0: empty
                k_pos = q - (q - torch.arange(n, device=device)) % C  # (b, n)
                window = self.config.sliding_window if sliding else None
                mask = attention_mask(q, k_pos, window)[:, None]  # (b, 1, 1, n)
            plans[sliding] = _Plan(write, arrange, (index, slice(None), slice(0, n)), mask, False)
        return plans, q

    def update(self, layer: int, part: int, k: torch.Tensor, v: torch.Tensor):
        """Store a layer's new keys and values (b, T, Hkv, D) of the call's part `part` -> the keys and
        values (b, S, Hkv, D) its queries attend to, the mask and is_causal (Attention._attend's arguments)."""
        plan = self.parts[part].plans[self.sliding[layer]]
        self.k[layer][plan.write] = plan.arrange(k.transpose(1, 2))
        self.v[layer][plan.write] = plan.arrange(v.transpose(1, 2))
        if plan.read is None:
            return k, v, plan.mask, plan.is_causal  # a prompt attends to itself, as in training
        return self.k[layer][plan.read].transpose(1, 2), self.v[layer][plan.read].transpose(1, 2), plan.mask, False
