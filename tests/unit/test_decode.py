"""Decoder (fused one-token steps) equals the model's own cached path, padding and window included."""

import pytest
import torch

from tinygemma.config import FULL, SLIDING, ModelConfig
from tinygemma.decode import Decoder
from tinygemma.generate import _left_pad
from tinygemma.model import Gemma3Model, KVCache


def random_model(dtype=torch.float32, **shape) -> Gemma3Model:
    cfg = ModelConfig(vocab_size=300, hidden_size=64, head_dim=16, intermediate_size=96, sliding_window=8,
                      query_pre_attn_scalar=24, max_position_embeddings=256, **shape)
    m = Gemma3Model(cfg).eval()
    with torch.no_grad():  # random norms, so a misplaced (1 + w) shows
        for name, p in m.named_parameters():
            p.normal_(0.0, 0.5 if name.endswith("norm.weight") else 0.1)
    return m.to(dtype)


def both_paths(model: Gemma3Model, prompts: list[list[int]], steps: int):
    """Hidden states (steps, B, d) of the model's cached path and of the Decoder, fed the same tokens."""
    ids, pos = _left_pad(prompts, model.config.pad_token_id, "cpu")
    B, L = ids.shape
    caches = [KVCache(model.config, B, L + steps, "cpu", dtype=model.embed_tokens.weight.dtype) for _ in range(2)]
    with torch.no_grad():
        for c in caches:
            model.hidden_states(ids, cache=c, positions=pos)
        decoder = Decoder(model, caches[1], next_pos=pos[:, -1] + 1)
        tokens = torch.randint(0, model.config.vocab_size, (steps, B))
        ref = [model.hidden_states(t[:, None], cache=caches[0], positions=pos[:, -1:] + 1 + i)[:, 0]
               for i, t in enumerate(tokens)]
        ours = [decoder.step(t) for t in tokens]
    return torch.stack(ref), torch.stack(ours)


@pytest.mark.parametrize("shape", [
    dict(n_layers=2, n_heads=4, n_kv_heads=1, layer_types=(SLIDING, FULL)),
    dict(n_layers=3, n_heads=4, n_kv_heads=2, layer_types=(FULL, SLIDING, SLIDING)),
])
def test_decoder_equals_the_cached_model_past_the_window_with_padding(shape):
    model = random_model(**shape)
    prompts = [[1, 2, 3], list(range(10, 23)), [7]]  # 13 > window 8; rows padded by 10 and 12
    ref, ours = both_paths(model, prompts, steps=20)  # the ring wraps twice more
    assert ref.abs().mean() > 0.1  # not trivially zero
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_decoder_in_bf16_keeps_fp32_norms():
    model = random_model(torch.bfloat16, n_layers=2, n_heads=4, n_kv_heads=1, layer_types=(SLIDING, FULL))
    ref, ours = both_paths(model, [[1, 2, 3, 4, 5]], steps=12)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), atol=0.05, rtol=0.02)


def test_decoder_refuses_to_run_past_its_length():
    model = random_model(n_layers=2, n_heads=4, n_kv_heads=1, layer_types=(SLIDING, FULL))
    cache = KVCache(model.config, 1, 4, "cpu")
    with torch.no_grad():
        model.hidden_states(torch.tensor([[1, 2, 3]]), cache=cache, positions=torch.arange(3)[None])
    decoder = Decoder(model, cache, next_pos=torch.tensor([3]))
    decoder.step(torch.tensor([4]))
    with pytest.raises(ValueError, match="4 positions"):
        decoder.step(torch.tensor([5]))
