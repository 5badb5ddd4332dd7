"""Cross-entropy of a tied LM head without materialising the (N, V) logits.

At tinygemma's sizes the vocabulary head dominates a training step: with GPT-2's
50,257 tokens and 4,096 positions the fp32 logits are 0.8 GB, and the textbook
`F.cross_entropy(logits.float(), ...)` keeps the logits, an fp32 copy, the
log-softmax and their gradients alive at once. `linear_cross_entropy` walks the rows
in chunks instead: for each chunk it computes the logits, the loss and, in the same
pass, the gradient w.r.t. the hidden states and the head weight
(d loss / d logits = softmax - one_hot, divided by the number of counted targets).
Backward then only scales the stored gradients by the incoming gradient, so peak
memory holds one (chunk, V) block instead of several (N, V) ones. Under autocast (or with bf16
inputs) the three vocab-wide matmuls run in bf16; the softmax, the loss and the head gradient's
accumulation stay in fp32.

The result equals `F.cross_entropy(F.linear(x, w).float(), targets, ignore_index=-1)`
(mean over targets != -1); tests/unit/test_loss.py checks the loss and both gradients.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -1
VOCAB_ALIGN = 64  # the head's matmuls run on a weight padded to a multiple of this many rows


def _padded(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (V, C) with zero rows appended up to a multiple of VOCAB_ALIGN (itself if aligned).

    BLAS kernels are much slower on an odd vocabulary: with GPT-2's V = 50,257 the
    (rows, 256) x (256, V) logits matmul ran at about half the speed of V = 50,304 on a
    2-core AVX2 CPU (benchmarks/train.py, docs/BENCHMARKS.md). The copy costs one pass
    over the weight; the padded logits are set to -inf, so they change nothing.
    """
    V = weight.size(0)
    extra = -V % VOCAB_ALIGN
    return torch.cat((weight, weight.new_zeros(extra, weight.size(1)))) if extra else weight


def _chunk_rows(n_rows: int, vocab: int, budget_bytes: int = 128 * 2**20, min_rows: int = 512) -> int:
    """Rows per chunk: one fp32 (rows, V) block within `budget_bytes`, but at least `min_rows`.

    Each chunk adds its (V, C) share into the head's gradient, which rereads and rewrites all
    of it; below ~512 rows that traffic outweighs the matmul (measured on CPU: 128-row chunks
    took 3x as long as 512-row chunks at V = 50,257, C = 256).
    """
    return max(1, min(n_rows, max(min_rows, budget_bytes // (4 * vocab))))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, want_grad: bool):
        # x (N, C), weight (V, C), targets (N,) int64
        N, V = x.size(0), weight.size(0)
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum()
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 in tests
        scale = 1.0 / n_valid.clamp(min=1).to(acc)
        needs_grad = want_grad and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        # The matmuls run in autocast's dtype (or the inputs' own, e.g. bf16 weights); the softmax,
        # the loss and the head gradient's accumulation stay in `acc`. The inputs are cast once
        # here, not once per chunk; every matmul below then gets operands of that dtype already,
        # so autocast has nothing left to cast.
        dev = x.device.type
        mm_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.promote_types(x.dtype, weight.dtype)
        xc, wc = x.to(mm_dtype), _padded(weight.to(mm_dtype))  # wc (Vp, C), Vp >= V
        full = mm_dtype == acc  # fp32 (or fp64) matmuls: write straight into the buffers below
        total = torch.zeros((), dtype=acc, device=x.device)
        grad_x = torch.empty_like(x) if needs_grad else None
        grad_w = torch.empty(wc.shape, dtype=acc, device=x.device) if needs_grad else None  # first chunk writes it
        # (chunk, V) buffers reused by every chunk: a fresh 100+ MB tensor per chunk costs page
        # faults on CPU (~15% of the head's time).
        buf = torch.empty(min(chunk, N), wc.size(0), dtype=acc, device=x.device)
        low = None if full else torch.empty(buf.shape, dtype=mm_dtype, device=x.device)  # the bf16 logits, then d logits
        for start in range(0, N, chunk):
            xs, ts, vs = xc[start : start + chunk], targets[start : start + chunk], valid[start : start + chunk]
            logits = buf[: xs.size(0)]  # (n, V): the only vocab-wide block
            if full:
                torch.mm(xs, wc.t(), out=logits)
            else:
                logits.copy_(torch.mm(xs, wc.t(), out=low[: xs.size(0)]))
            logits[:, V:] = float("-inf")  # the padding rows: exp() = 0, so no probability and no gradient
            safe_t = ts.clamp(min=0)
            target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)  # (n,)
            # logsumexp by hand so the exp pass is reused for the softmax: 3 passes over (n, V), not 6
            row_max = logits.amax(dim=-1, keepdim=True)  # (n, 1)
            exps = logits.sub_(row_max).exp_()  # in place: logits are not needed again
            sum_exp = exps.sum(dim=-1, keepdim=True)  # (n, 1)
            lse = row_max.squeeze(1) + sum_exp.squeeze(1).log()
            total += torch.where(vs, lse - target_logit, 0.0).sum()
            if not needs_grad:
                continue
            # d loss / d logits, in place: softmax - one_hot, zeroed on ignored rows, times 1/n_valid
            probs = exps.mul_((vs.to(acc) * scale)[:, None] / sum_exp)
            probs.scatter_add_(1, safe_t[:, None], -(vs.to(acc) * scale)[:, None])
            g = probs if full else low[: xs.size(0)].copy_(probs)  # one cast, used by both matmuls
            grad_x[start : start + chunk] = g @ wc
            if full and start == 0:
                torch.mm(g.t(), xs, out=grad_w)
            elif full:
                grad_w.addmm_(g.t(), xs)  # no (V, C) temporary
            elif start == 0:
                grad_w.copy_(g.t() @ xs)  # low-precision matmul, accumulated in `acc`
            else:
                grad_w += g.t() @ xs
        # Kept on ctx rather than saved: backward scales them in place (no second (V, C) tensor)
        # and drops them, like a freed graph.
        ctx.grads = (grad_x, grad_w[:V].to(weight.dtype)) if needs_grad else (None, None)
        # all targets ignored -> nan, as F.cross_entropy
        return total / n_valid.to(acc)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy: backward through the same loss twice is not supported")
        grad_x, grad_w = ctx.grads
        ctx.grads = None
        gx = grad_x.mul_(grad_out) if ctx.needs_input_grad[0] else None
        gw = grad_w.mul_(grad_out) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int | None = None):
    """Mean cross-entropy of `x @ weight.T` against `targets` (-1 = ignored), chunked over rows.

    x (..., C) hidden states, weight (V, C) the (tied) head, targets (...) int64. Returns a scalar.
    """
    x2 = x.reshape(-1, x.size(-1))
    t2 = targets.reshape(-1)
    if chunk is None:  # GPUs prefer fewer, larger launches and have the memory for them
        chunk = _chunk_rows(x2.size(0), weight.size(0), budget_bytes=(512 if x.is_cuda else 128) * 2**20)
    # Under torch.no_grad (evaluation) no gradient is computed: a third of the work and two (V, C)-sized buffers.
    return _LinearCrossEntropy.apply(x2, weight, t2, chunk, torch.is_grad_enabled())
