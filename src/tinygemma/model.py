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

Parameter names follow transformers' Gemma 3 (without the `model.` prefix), so
import/export is a renaming of one prefix.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinygemma.config import SLIDING, ModelConfig
from tinygemma.loss import linear_cross_entropy


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).type_as(x)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype):
    """cos/sin tables for `positions` (T,) or (B, T) -> (..., T, head_dim), computed in fp32."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (base**exponents)  # (head_dim/2,)
    freqs = positions.float()[..., None] * inv_freq  # (..., T, head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (..., T, head_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) by the half-split convention; cos/sin are (T, D) or (B, T, D)."""
    if cos.dim() == 3:  # per-row positions: (B, T, D) -> (B, 1, T, D)
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.scale = cfg.query_pre_attn_scalar**-0.5
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, layer_cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        if layer_cache is not None:
            k, v = layer_cache.update(k, v)  # (B, Hkv, S, D): cached keys followed by the new ones
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.is_sliding = cfg.layer_types[layer_idx] == SLIDING
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        eps = cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.dropout = cfg.dropout  # on each residual branch, training only

    def forward(self, x, cos, sin, mask, layer_cache=None):
        attn = self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask, layer_cache))
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

    def _sliding_mask(self, T: int, device: torch.device) -> torch.Tensor | None:
        """Boolean (T, T) mask for a sliding layer over a fresh sequence, built once per (T, device)."""
        W = self.config.sliding_window
        if T <= W:
            return None  # the window covers the whole sequence: plain causal
        key = (T, W, str(device))
        if key not in self._mask_cache:
            i = torch.arange(T, device=device)
            diff = i[:, None] - i[None, :]  # query - key
            self._mask_cache[key] = (diff >= 0) & (diff < W)
        return self._mask_cache[key]

    def hidden_states(self, input_ids, *, cache=None, positions=None) -> torch.Tensor:
        """input_ids (B, T) -> final-norm hidden states (B, T, hidden_size), the LM head's input.

        With `cache` (a KVCache), `positions` (B, T) gives each token's position in its own
        row; -1 marks left padding.
        """
        B, T = input_ids.shape
        x = self.embed_tokens(input_ids)
        x = x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)  # scale in the weight dtype
        x = _dropout(x, self.config.dropout, self.training)
        if cache is None:
            pos = torch.arange(T, device=x.device) if positions is None else positions
            masks = {True: self._sliding_mask(T, x.device), False: None}
        else:
            pos = positions if positions is not None else cache.next_positions(B, T, x.device)
            masks = cache.begin(pos, x.dtype)
            pos = pos.clamp(min=0)
        cfg = self.config
        rope = {
            True: rope_cos_sin(pos, cfg.head_dim, cfg.rope_local_base, x.dtype),
            False: rope_cos_sin(pos, cfg.head_dim, cfg.rope_global_base, x.dtype),
        }
        for i, layer in enumerate(self.layers):
            cos, sin = rope[layer.is_sliding]
            x = layer(x, cos, sin, masks[layer.is_sliding], None if cache is None else cache.layers[i])
        return self.norm(x)

    def forward(self, input_ids, targets=None, *, cache=None, positions=None, return_logits=False):
        """input_ids (B, T) -> (logits (B, T, V), None); with `targets` -> (None, mean cross-entropy).

        With targets the loss is computed chunk-wise without the full logits (loss.py), so the
        logits slot is None; pass return_logits=True to get both (the plain, memory-hungry way).

        With `cache` (a KVCache), `positions` (B, T) gives each token's position in its own
        row; -1 marks left padding. Targets equal to -1 are ignored by the loss.
        """
        x = self.hidden_states(input_ids, cache=cache, positions=positions)
        if targets is not None and not return_logits:
            # chunked head + loss: never materialises the (B*T, V) logits (see loss.py)
            return None, linear_cross_entropy(x, self.embed_tokens.weight, targets)
        logits = F.linear(x, self.embed_tokens.weight)  # tied LM head
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss


class LayerCache:
    """Keys/values of one layer. Full layers grow into a buffer of `capacity`;
    sliding layers keep only the last `window` columns, so their memory is bounded."""

    def __init__(self, window: int | None):
        self.window = window
        self.k = self.v = None  # (B, Hkv, S, D)
        self.n = 0  # filled columns (full layers)

    def update(self, k: torch.Tensor, v: torch.Tensor):
        T = k.size(2)
        if self.window is not None:  # attend over [kept window | new], then keep the last `window`
            if self.k is not None:
                k, v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
            self.k, self.v = k[:, :, -self.window :], v[:, :, -self.window :]
            return k, v
        if self.k is None:
            raise RuntimeError("full-attention LayerCache used before allocate()")
        self.k[:, :, self.n : self.n + T] = k
        self.v[:, :, self.n : self.n + T] = v
        self.n += T
        return self.k[:, :, : self.n], self.v[:, :, : self.n]


class KVCache:
    """Incremental-decoding state for a Gemma3Model: one LayerCache per layer plus the
    key positions of each layer type (shared by all layers of that type)."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device, dtype=torch.float32):
        self.config, self.max_len = config, max_len
        W = config.sliding_window
        self.layers = [LayerCache(W if t == SLIDING else None) for t in config.layer_types]
        shape = (batch_size, config.n_kv_heads, max_len, config.head_dim)
        for lc in self.layers:
            if lc.window is None:
                lc.k = torch.zeros(shape, device=device, dtype=dtype)
                lc.v = torch.zeros(shape, device=device, dtype=dtype)
        self.key_pos = {True: None, False: None}  # (B, S) positions of cached keys, by is_sliding
        self.seen = 0  # columns consumed so far

    def next_positions(self, B: int, T: int, device) -> torch.Tensor:
        return torch.arange(self.seen, self.seen + T, device=device).expand(B, T)

    def begin(self, positions: torch.Tensor, dtype: torch.dtype) -> dict[bool, torch.Tensor]:
        """Record the new tokens' positions; return the additive float mask per layer type."""
        T = positions.size(1)
        if self.seen + T > self.max_len:
            raise ValueError(f"KVCache holds {self.max_len} positions; {self.seen + T} requested")
        self.seen += T
        masks = {}
        for sliding in (True, False):
            old = self.key_pos[sliding]
            keys = positions if old is None else torch.cat((old, positions), dim=1)  # (B, S)
            q, k = positions[:, :, None], keys[:, None, :]  # (B, T, 1), (B, 1, S)
            allowed = (k >= 0) & (k <= q)
            if sliding:
                allowed &= k > q - self.config.sliding_window
                keys = keys[:, -self.config.sliding_window :]
            self.key_pos[sliding] = keys
            # Large negative instead of -inf: a padding query that sees nothing stays finite.
            mask = torch.zeros(allowed.shape, dtype=dtype, device=positions.device)
            masks[sliding] = mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]  # (B, 1, T, S)
        return masks
