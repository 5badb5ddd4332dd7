"""Logits equal transformers' Gemma3ForCausalLM given the same weights (fp32, max abs diff <= 1e-4).

Sequences are longer than the sliding window so both layer types (and both RoPE bases)
matter; norms get random weights so a wrong (1 + w) or a missing norm shows.
"""

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from tinygemma.config import FULL, SLIDING, ModelConfig
from tinygemma.hf import to_hf_config, to_hf_state_dict
from tinygemma.model import Gemma3Model

S, F = SLIDING, FULL
CONFIGS = {
    "tiny-mqa": dict(n_layers=2, n_heads=4, n_kv_heads=1, layer_types=(S, F)),
    "gqa-2kv-6-layers": dict(n_layers=6, n_heads=4, n_kv_heads=2, layer_types=(S, F, S, S, S, F)),
    "mha-3-layers": dict(n_layers=3, n_heads=2, n_kv_heads=2, layer_types=(F, S, S)),
}


def hf_twin(model: Gemma3Model) -> Gemma3ForCausalLM:
    """A transformers Gemma3ForCausalLM (eager attention) holding `model`'s weights."""
    kw = {k: v for k, v in to_hf_config(model.config).items() if k not in ("architectures", "model_type", "torch_dtype")}
    hf_cfg = Gemma3TextConfig(**kw)
    hf_cfg._attn_implementation = "eager"
    hf = Gemma3ForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model.state_dict()), strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    hf.tie_weights()
    return hf


def random_model(seed: int, **shape) -> Gemma3Model:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=512, hidden_size=64, head_dim=16, intermediate_size=128, sliding_window=8,
                      query_pre_attn_scalar=24, rope_local_base=10_000.0, rope_global_base=1_000_000.0,
                      max_position_embeddings=256, **shape)
    m = Gemma3Model(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.5)
            else:
                p.normal_(0.0, 0.08)
    return m


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(name):
    m = random_model(1, **CONFIGS[name])
    hf = hf_twin(m)
    x = torch.randint(0, 512, (2, 40))  # 40 > window 8
    with torch.no_grad():
        ours, ref = m(x)[0], hf(x).logits
    assert (ours - ref).abs().max().item() <= 1e-4


def test_parity_test_would_catch_a_wrong_rope_base():
    """Guard against a parity test that cannot fail: swap the RoPE bases and the logits differ."""
    m = random_model(2, **CONFIGS["gqa-2kv-6-layers"])
    hf = hf_twin(m)
    swapped = Gemma3Model(ModelConfig(**{**m.config.to_dict(), "rope_local_base": 1_000_000.0,
                                         "rope_global_base": 10_000.0})).eval()
    swapped.load_state_dict(m.state_dict())
    x = torch.randint(0, 512, (1, 40))
    with torch.no_grad():
        assert (swapped(x)[0] - hf(x).logits).abs().max().item() > 1e-2
