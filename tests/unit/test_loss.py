"""The chunked linear cross-entropy equals F.cross_entropy on full logits: loss and both gradients."""

import pytest
import torch
import torch.nn.functional as F

from tinygemma.loss import linear_cross_entropy
from tinygemma.model import Gemma3Model


def _reference(x, w, t):
    return F.cross_entropy(F.linear(x, w).to(torch.promote_types(x.dtype, torch.float32)), t, ignore_index=-1)


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_matches_cross_entropy_forward_and_backward(chunk):
    x = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(101, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(101, (37,))
    t[3] = t[20] = -1  # ignored positions do not count in the mean
    ref = _reference(x, w, t)
    gx, gw = torch.autograd.grad(ref * 2.5, (x, w))  # a non-unit upstream gradient
    ours = linear_cross_entropy(x, w, t, chunk=chunk)
    ox, ow = torch.autograd.grad(ours * 2.5, (x, w))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ox, gx, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ow, gw, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("chunk", [5, None])
def test_bf16_autocast_runs_every_head_matmul_in_bf16_and_stays_close(chunk):
    """Under autocast the head's three matmuls all run in bf16; loss and gradients match autocast F.linear."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
                self.seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    x = torch.randn(23, 32, requires_grad=True)
    w = (0.3 * torch.randn(130, 32)).requires_grad_()
    t = torch.randint(130, (23,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _reference(x, w, t)
        gx, gw = torch.autograd.grad(ref, (x, w))
        with MatmulDtypes() as mode:
            ours = linear_cross_entropy(x, w, t, chunk=chunk)
            ox, ow = torch.autograd.grad(ours, (x, w))
    assert len(mode.seen) >= 3 and all(set(d) == {torch.bfloat16} for d in mode.seen), mode.seen
    assert ours.dtype == ox.dtype == ow.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(ox, gx, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(ow, gw, rtol=2e-2, atol=2e-3)


def test_under_no_grad_it_computes_the_loss_only():
    """Evaluation runs under torch.no_grad: the same loss, and only one matmul per chunk (no gradient ones)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountMatmuls(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_)
            return func(*args, **(kwargs or {}))

    x, w = torch.randn(40, 16, requires_grad=True), torch.randn(101, 16, requires_grad=True)
    t = torch.randint(101, (40,))
    with torch.no_grad(), CountMatmuls() as mode:
        loss = linear_cross_entropy(x, w, t, chunk=10)
    assert mode.n == 4 and loss.grad_fn is None
    torch.testing.assert_close(loss, linear_cross_entropy(x, w, t, chunk=10).detach(), rtol=0, atol=0)


def test_all_ignored_is_nan_like_cross_entropy():
    x, w = torch.randn(4, 8), torch.randn(10, 8)
    t = torch.full((4,), -1)
    assert torch.isnan(linear_cross_entropy(x, w, t)) and torch.isnan(_reference(x, w, t))


def test_model_loss_and_grads_equal_full_logit_path(tiny_cfg):
    model = Gemma3Model(tiny_cfg)
    x = torch.randint(tiny_cfg.vocab_size, (2, 12))
    y = torch.randint(tiny_cfg.vocab_size, (2, 12))
    logits, fast = model(x, y)
    assert logits is None
    fast_grads = torch.autograd.grad(fast, list(model.parameters()))
    full_logits, slow = model(x, y, return_logits=True)
    assert full_logits.shape == (2, 12, tiny_cfg.vocab_size)
    slow_grads = torch.autograd.grad(slow, list(model.parameters()))
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-6)
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_inference_logits_unchanged(tiny_cfg):
    model = Gemma3Model(tiny_cfg).eval()
    x = torch.randint(tiny_cfg.vocab_size, (1, 5))
    logits, loss = model(x)
    assert loss is None
    torch.testing.assert_close(logits, model(x, x, return_logits=True)[0])


@pytest.mark.parametrize("vocab", [128, 129, 50])
def test_padded_vocab_changes_nothing(vocab):
    """The head runs on a weight padded to a multiple of 64 rows; the padding gets no probability."""
    x = torch.randn(9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(vocab, (9,))
    ours = linear_cross_entropy(x, w, t)
    ours.backward()
    assert w.grad.shape == w.shape
    ref_gx, ref_gw = torch.autograd.grad(_reference(x, w, t), (x, w))
    torch.testing.assert_close(ours, _reference(x, w, t), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x.grad, ref_gx, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(w.grad, ref_gw, rtol=1e-9, atol=1e-12)


def test_second_backward_is_a_clear_error():
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(10, 8, requires_grad=True)
    loss = linear_cross_entropy(x, w, torch.randint(10, (4,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()
