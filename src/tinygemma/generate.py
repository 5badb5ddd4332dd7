"""Sampling from a Gemma3Model with a KV cache.

- `generate_ids`: batches of prompts of different lengths (left padding; positions -1 on
  the pads), one prefill pass through the model's KVCache, then one token per step through
  decode.Decoder (the same maths with fewer ops). Sliding layers keep only `sliding_window`
  keys, full layers keep everything, so memory is bounded by the full layers:
  (n_full_layers * 2 * B * n_kv_heads * max_len * head_dim) values.
- `generate`: text in, text out, with optional streaming of the new text.

Greedy decoding is `temperature=0`. Each row stops at the tokenizer's end-of-text id or after
`max_new_tokens`; the end-of-text token itself is not returned.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from tinygemma.decode import Decoder
from tinygemma.errors import TinyGemmaError
from tinygemma.model import Gemma3Model, KVCache


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token per row from logits (B, V) -> (B,). temperature 0 means argmax."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
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
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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


def _left_pad(prompt_ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, L) padded on the left with pad_id, positions (B, L) with -1 on the pads."""
    L = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), L), pad_id, dtype=torch.long)
    pos = torch.full((len(prompt_ids), L), -1, dtype=torch.long)
    for b, p in enumerate(prompt_ids):
        ids[b, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        pos[b, L - len(p) :] = torch.arange(len(p))
    return ids.to(device), pos.to(device)


@torch.no_grad()
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

    `on_tokens` receives each step's tokens (one per row; finished rows repeat eot_id).
    `use_cache=False` recomputes every prefix from scratch (for tests and benchmarks).
    `fast_head` ranks the vocabulary with an fp16 copy of the head (see LMHead).
    """
    _check_args(model, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    try:
        out: list[list[int]] = [[] for _ in prompt_ids]
        if max_new_tokens == 0:
            return out
        head = LMHead(model.embed_tokens.weight, fast=fast_head)
        steps = (_cached_steps if use_cache else _uncached_steps)(model, head, prompt_ids, max_new_tokens)
        logits = next(steps)  # (B, V) logits for the first new token
        done = [False] * len(prompt_ids)
        for i in range(max_new_tokens):
            picked = sample_next(logits, temperature, top_k, top_p, generator).tolist()
            tokens = [eot_id if d else t for d, t in zip(done, picked)]  # finished rows repeat eot
            if on_tokens is not None:
                on_tokens(tokens)
            for b, t in enumerate(tokens):
                done[b] = done[b] or t == eot_id
                if not done[b]:
                    out[b].append(t)
            if all(done) or i == max_new_tokens - 1:
                break
            logits = steps.send(torch.tensor(tokens, device=logits.device))
        return out
    finally:
        model.train(was_training)


class LMHead:
    """Next-token logits (B, V) in fp32 from final hidden states (B, d), for decoding.

    Batch-1 decoding is bound by the bytes of weights read per token, and the tied head is
    most of them (262,144 x 640 at Gemma 3 270M: 671 MB in fp32). With `fast=True` an fp32
    model reads an fp16 copy of the head instead (half the bytes) to rank the vocabulary,
    then recomputes the logits of the `exact_top` best candidates in fp32 from the real
    weights. Greedy picks and top-k (k <= exact_top) sampling therefore see exact logits;
    only tokens outside the top candidates keep fp16-weight logits (relative error ~1e-3).
    """

    def __init__(self, weight: torch.Tensor, fast: bool = True, exact_top: int = 32):
        self.weight, self.exact_top = weight, min(exact_top, weight.size(0))
        self.half = weight.to(torch.float16) if fast and weight.dtype == torch.float32 else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # fp16 tops out at 65504: hidden states that large (unusual) take the exact path
        if self.half is None or float(x.abs().amax()) > 3e4:
            return F.linear(x, self.weight).float()
        approx = F.linear(x.half(), self.half).float()  # (B, V)
        cand = approx.topk(self.exact_top, dim=-1).indices  # (B, C)
        exact = torch.einsum("bd,bcd->bc", x.float(), self.weight[cand].float())  # (B, C)
        return approx.scatter_(-1, cand, exact)


def _cached_steps(model: Gemma3Model, head: LMHead, prompt_ids, max_new_tokens):
    """Generator: yields next-token logits (B, V) and is sent the tokens (B,) picked from them.
    One prefill pass over the padded prompts, then one cached step per token."""
    device = model.embed_tokens.weight.device
    ids, pos = _left_pad(prompt_ids, model.config.pad_token_id, device)
    B, L = ids.shape
    cache = KVCache(model.config, B, L + max_new_tokens, device, dtype=model.embed_tokens.weight.dtype)
    x = model.hidden_states(ids, cache=cache, positions=pos)  # (B, L, d)
    decoder = Decoder(model, cache, next_pos=pos[:, -1] + 1)  # fused one-token steps (decode.py)
    new = yield head(x[:, -1])
    while True:
        new = yield head(decoder.step(new))  # (B, d) -> (B, V)


def _uncached_steps(model: Gemma3Model, head: LMHead, prompt_ids, max_new_tokens):
    """Like _cached_steps, but runs each row's whole sequence again at every step (no cache)."""
    device = model.embed_tokens.weight.device
    seqs = [torch.tensor(p, dtype=torch.long, device=device) for p in prompt_ids]
    while True:
        new = yield head(torch.cat([model.hidden_states(s[None])[:, -1] for s in seqs]))
        seqs = [torch.cat((s, new[b : b + 1])) for b, s in enumerate(seqs)]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt ids as the model saw a document begin in training: after data.start_token (<bos> when the
    tokenizer has one, else the end-of-text that ends the document before)."""
    from tinygemma.data import start_token

    return [start_token(tokenizer.bos_id, tokenizer.eot_id)] + tokenizer.encode(prompt)


class _TextStream:
    """Turns a growing list of ids into text pieces, holding back incomplete UTF-8 characters."""

    def __init__(self, tokenizer, callback: Callable[[str], None]):
        self.tokenizer, self.callback = tokenizer, callback
        self.ids: list[int] = []
        self.sent = 0  # characters already passed on

    def __call__(self, tokens: list[int]) -> None:
        if tokens[0] == self.tokenizer.eot_id:
            return
        self.ids.append(tokens[0])
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd") and len(text) > self.sent:
            self.callback(text[self.sent :])
            self.sent = len(text)


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
    on_tokens = _TextStream(tokenizer, stream) if stream is not None else None
    ids = generate_ids(
        model, [encode_prompt(tokenizer, p) for p in prompts], max_new_tokens, temperature, top_k, top_p,
        eot_id=tokenizer.eot_id, generator=generator, on_tokens=on_tokens,
    )
    return [p + tokenizer.decode(new) for p, new in zip(prompts, ids)]
