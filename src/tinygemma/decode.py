"""One-token decoding steps for generation: model.py's Gemma 3 maths, rearranged for T = 1.

At batch 1 a decoding step of a CPU-sized model spends about as long dispatching small ops
as computing. `Decoder` runs the same maths with 40% fewer ops (401 against the model's 682
at the `small` preset), inference only (the model, its parameters and its state dict are
untouched):
- q/k/v are one matmul, from weights concatenated once when decoding starts (they do not
  change while sampling). gate/up stay two matmuls: concatenating them saves one op per
  layer but copies 190 MB at 270M, and building the decoder then took 1.4 s instead of
  0.2 s on the 2-core benchmark machine (fresh memory is slow to page in);
- RMSNorm is `F.rms_norm` with (1 + w) precomputed in fp32; q and k are normed and rotated
  together, as one (B, H + Hkv, D) tensor;
- RoPE rows come from cos/sin tables built once per generation, looked up once per step
  and shared by every layer; rotate_half(x) * sin is roll(x, D/2) * sin with the first
  half's sign folded into the table (the same products, so the same values);
- each layer keeps keys/values in a buffer written in place. Sliding layers' buffers are
  rings of `sliding_window` columns: after writing column c at slot c % W the ring holds
  exactly the window c-W+1..c. Full layers' buffers hold the whole length;
- GQA: the G query heads that share a KV head are G query rows against that head's keys,
  so SDPA needs no broadcast. A mask exists only while some row has left padding.
tests/unit/test_decode.py holds it equal to the model's own cached path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinygemma.model import Gemma3Model, KVCache, rope_cos_sin


class _Layer:
    """One block's decoding weights: fused q/k/v and (1 + w) norm scales in fp32."""

    def __init__(self, block, H: int, Hkv: int, D: int):
        attn, mlp = block.self_attn, block.mlp
        self.sliding = block.is_sliding
        self.qkv = torch.cat((attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight)).detach()  # ((H+2Hkv)D, d)
        self.o = attn.o_proj.weight.detach()
        self.gate, self.up, self.down = (lin.weight.detach() for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        self.input, self.post_attn, self.pre_ff, self.post_ff = (
            1.0 + n.weight.detach().float()
            for n in (block.input_layernorm, block.post_attention_layernorm,
                      block.pre_feedforward_layernorm, block.post_feedforward_layernorm)
        )
        q_w, k_w = (1.0 + n.weight.detach().float() for n in (attn.q_norm, attn.k_norm))
        self.qk_norm = torch.cat((q_w.expand(H, D), k_w.expand(Hkv, D)))  # (H + Hkv, D)


class Decoder:
    """Continues a prefilled KVCache one token per row per `step`.

    `cache` holds the prompt (prefilled by `model.hidden_states(ids, cache=cache, positions=...)`);
    `next_pos` (B,) is each row's next position. The cache's keys are copied into the
    decoder's own buffers, so `cache` is not used afterwards.
    """

    @torch.no_grad()
    def __init__(self, model: Gemma3Model, cache: KVCache, next_pos: torch.Tensor):
        cfg = model.config
        self.H, self.Hkv, self.D, self.eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rms_norm_eps
        self.scale = cfg.query_pre_attn_scalar**-0.5
        self.embed = model.embed_tokens.weight.detach()
        self.dtype = self.embed.dtype
        self.upcast = self.dtype != torch.float32  # norms compute in fp32, as RMSNorm does
        self.embed_scale = torch.tensor(cfg.hidden_size**0.5, dtype=self.dtype)  # in the weight dtype
        self.layers = [_Layer(b, self.H, self.Hkv, self.D) for b in model.layers]
        self.final_norm = 1.0 + model.norm.weight.detach().float()
        self.pos = next_pos.clone()  # (B,)
        self.column = cache.seen  # cache column of the next token, the same for every row
        self.max_len = cache.max_len
        self.rope = self._rope_tables(cfg, next_pos.device)
        self.capacity = {True: min(cfg.sliding_window, cache.max_len), False: cache.max_len}
        self.k, self.v = zip(*(self._buffers(cache, i) for i in range(len(self.layers))))
        self.mask = {s: self._mask(cache, s) for s in (True, False)}

    def _rope_tables(self, cfg, device) -> torch.Tensor:
        """(max_len, 4, D): cos and sign-folded sin for the local, then the global base."""
        pos = torch.arange(self.max_len, device=device)
        sign = torch.ones(self.D, device=device, dtype=self.dtype)
        sign[: self.D // 2] = -1  # rotate_half(x) = cat(-x2, x1) = roll(x, D/2) * sign
        tables = []
        for base in (cfg.rope_local_base, cfg.rope_global_base):
            cos, sin = rope_cos_sin(pos, self.D, base, self.dtype)
            tables += [cos, sin * sign]
        return torch.stack(tables, dim=1)

    def _buffers(self, cache: KVCache, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's key/value buffers (B, Hkv, capacity, D), with the prefilled columns at column % capacity."""
        lc, sliding = cache.layers[i], self.layers[i].sliding
        k, v = (lc.k, lc.v) if sliding else (lc.k[:, :, : lc.n], lc.v[:, :, : lc.n])  # (B, Hkv, S, D)
        S, C = k.size(2), self.capacity[sliding]
        slots = torch.arange(self.column - S, self.column, device=k.device) % C
        bk = k.new_zeros(k.size(0), self.Hkv, C, self.D)
        bv = torch.zeros_like(bk)
        bk[:, :, slots], bv[:, :, slots] = k, v
        return bk, bv

    def _mask(self, cache: KVCache, sliding: bool) -> torch.Tensor | None:
        """Additive (B, 1, 1, capacity) mask hiding left padding; None when no row has any."""
        key_pos = cache.key_pos[sliding]  # (B, S) positions of the kept keys, -1 on pads
        if bool((key_pos >= 0).all()):
            return None
        C, S = self.capacity[sliding], key_pos.size(1)
        slots = torch.arange(self.column - S, self.column, device=key_pos.device) % C
        mask = torch.zeros(key_pos.size(0), C, dtype=self.dtype, device=key_pos.device)
        mask[:, slots] = torch.where(key_pos >= 0, 0.0, torch.finfo(self.dtype).min).to(self.dtype)
        return mask[:, None, None]

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.upcast:
            return F.rms_norm(x.float(), (x.size(-1),), w, self.eps).type_as(x)
        return F.rms_norm(x, (x.size(-1),), w, self.eps)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) at each row's next position -> final-norm hidden states (B, d)."""
        if self.column >= self.max_len:
            raise ValueError(f"Decoder holds {self.max_len} positions; {self.column + 1} requested")
        x = F.embedding(tokens, self.embed) * self.embed_scale  # (B, d)
        rope = self.rope[self.pos][:, :, None]  # (B, 4, 1, D): broadcasts over heads
        self.pos += 1
        slot, n = {}, {}
        for s in (True, False):
            C = self.capacity[s]
            slot[s], n[s] = self.column % C, min(self.column + 1, C)
            if self.mask[s] is not None:
                self.mask[s][..., slot[s]] = 0.0  # the new column is a real token
        masks = {s: None if self.mask[s] is None else self.mask[s][..., : n[s]] for s in (True, False)}
        for layer, bk, bv in zip(self.layers, self.k, self.v):
            s = layer.sliding
            cos, sin = (rope[:, 0], rope[:, 1]) if s else (rope[:, 2], rope[:, 3])
            x = x + self._norm(self._attend(self._norm(x, layer.input), layer, bk, bv, cos, sin,
                                            slot[s], n[s], masks[s]), layer.post_attn)
            h = self._norm(x, layer.pre_ff)
            mlp = F.gelu(F.linear(h, layer.gate), approximate="tanh") * F.linear(h, layer.up)  # (B, I)
            x = x + self._norm(F.linear(mlp, layer.down), layer.post_ff)
        self.column += 1
        return self._norm(x, self.final_norm)

    def _attend(self, h, layer: _Layer, bk, bv, cos, sin, slot: int, n: int, mask) -> torch.Tensor:
        """Attention output (B, d) for normed inputs h (B, d); writes this token's key/value at `slot`."""
        B, H, Hkv, D = h.size(0), self.H, self.Hkv, self.D
        qkv = F.linear(h, layer.qkv)  # (B, (H + 2Hkv) D)
        qk = qkv[:, : (H + Hkv) * D].view(B, H + Hkv, D)
        if self.upcast:
            qk = (F.rms_norm(qk.float(), (D,), eps=self.eps) * layer.qk_norm).type_as(qk)
        else:
            qk = F.rms_norm(qk, (D,), eps=self.eps) * layer.qk_norm
        qk = qk * cos + qk.roll(D // 2, dims=-1) * sin  # RoPE, (B, H + Hkv, D)
        bk[:, :, slot] = qk[:, H:]
        bv[:, :, slot] = qkv[:, (H + Hkv) * D :].view(B, Hkv, D)
        q = qk[:, :H].view(B, Hkv, H // Hkv, D)  # the G = H / Hkv heads sharing each KV head
        y = F.scaled_dot_product_attention(q, bk[:, :, :n], bv[:, :, :n], attn_mask=mask, scale=self.scale)
        return F.linear(y.reshape(B, H * D), layer.o)  # y (B, Hkv, G, D): heads in the model's order
