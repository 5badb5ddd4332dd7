"""Gemma3Model structure: shapes, meta-device init, tied head, embedding scale, sliding masks."""

import inspect
import math

import torch

import tinygemma.model as model_module
from tinygemma.config import SLIDING, ModelConfig
from tinygemma.model import Gemma3Model, KVCache


def test_logits_shape_and_loss(tiny_cfg):
    m = Gemma3Model(tiny_cfg)
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 12))
    logits, loss = m(x)
    assert logits.shape == (2, 12, tiny_cfg.vocab_size) and loss is None
    _, loss = m(x, x)
    assert abs(loss.item() - math.log(tiny_cfg.vocab_size)) < 0.5  # near-uniform at init


def test_meta_device_build_then_init(tiny_cfg):
    with torch.device("meta"):
        m = Gemma3Model(tiny_cfg)
    assert all(p.is_meta for p in m.parameters())
    m.to_empty(device="cpu")
    m.init_weights()
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert torch.all(m.norm.weight == 0)  # (1 + w) norms start as the identity
    std = m.embed_tokens.weight.std().item()
    assert abs(std - tiny_cfg.init_std) < 0.2 * tiny_cfg.init_std
    n = sum(p.numel() for p in m.parameters())
    assert n == tiny_cfg.n_params


def test_head_is_tied_to_the_embedding(tiny_cfg):
    m = Gemma3Model(tiny_cfg)
    assert not any("lm_head" in k for k in m.state_dict())
    x = torch.randint(0, tiny_cfg.vocab_size, (1, 5))
    with torch.no_grad():
        m.embed_tokens.weight[7] += 1.0  # changing the embedding changes the head's logit for id 7
        h = m.hidden_states(x)
        logits, _ = m(x)
    torch.testing.assert_close(logits[..., 7], h @ m.embed_tokens.weight[7])


def test_embedding_scale_is_cast_to_weight_dtype(tiny_cfg):
    m = Gemma3Model(tiny_cfg).to(torch.bfloat16)
    seen = {}

    def grab(module, args):
        seen["x"] = args[0]  # returns None: the block still gets its arguments

    m.layers[0].register_forward_pre_hook(grab)
    x = torch.randint(0, tiny_cfg.vocab_size, (1, 4))
    m(x)
    scale = torch.tensor(tiny_cfg.hidden_size**0.5, dtype=torch.bfloat16)  # 8.0 for d 64; 25.25 for d 640
    assert seen["x"].dtype == torch.bfloat16
    assert torch.equal(seen["x"], m.embed_tokens.weight[x] * scale)
    assert torch.tensor(640**0.5, dtype=torch.bfloat16).item() == 25.25  # not 25.298 as in fp32


def test_sliding_mask_values_and_cache(tiny_cfg):
    m = Gemma3Model(tiny_cfg)
    W = tiny_cfg.sliding_window
    assert m._sliding_mask(W, torch.device("cpu")) is None  # window covers it: plain causal
    mask = m._sliding_mask(20, torch.device("cpu"))
    for q in range(20):
        for k in range(20):
            assert bool(mask[q, k]) == (q - W < k <= q)
    x = torch.randint(0, tiny_cfg.vocab_size, (1, 20))
    m(x)
    m(x)
    assert m._sliding_mask(20, torch.device("cpu")) is mask  # built once per length and device
    assert len(m._mask_cache) == 1


def test_sliding_layer_sees_only_its_window():
    """One sliding layer: the logits at position t must not depend on tokens before t - W + 1."""
    cfg = ModelConfig(vocab_size=64, hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16,
                      intermediate_size=64, sliding_window=4, layer_types=(SLIDING,), query_pre_attn_scalar=16)
    m = Gemma3Model(cfg).eval()
    x = torch.randint(0, 64, (1, 12))
    y = x.clone()
    y[0, 0] = (x[0, 0] + 1) % 64
    with torch.no_grad():
        a, b = m(x)[0], m(y)[0]
    assert not torch.allclose(a[0, 3], b[0, 3])  # position 3 still sees position 0
    torch.testing.assert_close(a[0, 4:], b[0, 4:], rtol=0, atol=0)  # positions >= W do not


def test_attention_uses_sdpa_without_repeat_interleave():
    src = inspect.getsource(model_module)
    assert "scaled_dot_product_attention" in src and "enable_gqa" in src
    assert "repeat_interleave" not in src and ".repeat(" not in src


def test_kv_cache_sliding_layers_are_bounded(tiny_cfg):
    m = Gemma3Model(tiny_cfg).eval()
    cache = KVCache(tiny_cfg, 1, 100, "cpu")
    with torch.no_grad():
        m.hidden_states(torch.randint(0, 256, (1, 5)), cache=cache)
        for _ in range(60):
            m.hidden_states(torch.randint(0, 256, (1, 1)), cache=cache)
    W, shape_full = tiny_cfg.sliding_window, (1, tiny_cfg.n_kv_heads, 100, tiny_cfg.head_dim)
    for k, v, kind in zip(cache.k, cache.v, tiny_cfg.layer_types):
        if kind == SLIDING:
            assert k.shape == v.shape == (1, tiny_cfg.n_kv_heads, W, tiny_cfg.head_dim)
        else:
            assert k.shape == v.shape == shape_full
    assert cache.lengths == [65]
