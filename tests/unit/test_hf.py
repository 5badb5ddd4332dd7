"""Hugging Face interop: config conversion, export that transformers loads offline, import, safe loading."""

import json

import pytest
import torch

from tinygemma.checkpoint import load_model, save_config, save_weights
from tinygemma.config import ModelConfig, tiny
from tinygemma.errors import TinyGemmaError
from tinygemma.hf import export_hf, from_hf_config, to_hf_config
from tinygemma.model import Gemma3Model
from tinygemma.tokenizer import load_tokenizer



def random_tiny(vocab_size=256) -> Gemma3Model:
    m = Gemma3Model(tiny(vocab_size=vocab_size)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.5)
    return m


def test_config_round_trip_and_transformers_4x_form():
    cfg = ModelConfig(vocab_size=1000, hidden_size=64, n_layers=7, n_heads=4, n_kv_heads=2, head_dim=16,
                      intermediate_size=128, sliding_window=16, query_pre_attn_scalar=16,
                      rope_local_base=5_000.0, rope_global_base=500_000.0)
    assert from_hf_config(to_hf_config(cfg)) == cfg
    old = {"model_type": "gemma3_text", "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 7,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
           "sliding_window": 16, "query_pre_attn_scalar": 16, "rope_theta": 500_000.0,
           "rope_local_base_freq": 5_000.0, "sliding_window_pattern": 6, "rms_norm_eps": 1e-6,
           "max_position_embeddings": 32768}
    assert from_hf_config(old) == cfg
    assert from_hf_config({"model_type": "gemma3", "text_config": old}) == cfg  # multimodal wrapper
    for preset in (tiny(), ModelConfig(n_layers=4, hidden_size=64, head_dim=16, intermediate_size=64)):
        exported = to_hf_config(preset)  # a 4.x reader ignores layer_types / rope_parameters
        as_4x = {k: v for k, v in exported.items() if k not in ("layer_types", "rope_parameters")}
        assert from_hf_config(as_4x) == preset
    with pytest.raises(TinyGemmaError, match="llama"):
        from_hf_config({**old, "model_type": "llama"})


def test_export_loads_in_transformers_offline_with_identical_logits(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer("gpt2")
    m = random_tiny(tok.vocab_size)
    export_hf(m, m.config, tok, tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in (tmp_path / "hf").iterdir()}
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    x = torch.randint(0, tok.vocab_size, (2, 30))  # longer than the window of 8
    with torch.no_grad():
        assert (hf(x).logits - m(x)[0]).abs().max().item() <= 1e-4
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok("Hello world")["input_ids"] == tok.encode("Hello world") == [15496, 995]
    ids = hf_tok("Once upon a time", return_tensors="pt")["input_ids"]
    out = hf.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 5)


def test_import_of_export_reproduces_the_model(tmp_path):
    m = random_tiny()
    save_weights(m.state_dict(), tmp_path / "ours" / "best_model_params.pt")
    save_config(tmp_path / "ours", m.config, None)
    model, cfg, tok = load_model(tmp_path / "ours")
    assert cfg == m.config and tok is None
    export_hf(model, cfg, None, tmp_path / "hf")
    back, cfg2, _ = load_model(tmp_path / "hf")
    assert cfg2 == m.config
    for name, t in m.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    export_hf(back, cfg2, None, tmp_path / "hf2")  # export(import(x)) == x, byte for byte
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == (tmp_path / "hf2" / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == json.loads((tmp_path / "hf2" / "config.json").read_text())


def test_safetensors_file_beside_a_config(tmp_path):
    from safetensors.torch import save_file

    m = random_tiny()
    save_file(m.state_dict(), str(tmp_path / "w.safetensors"))
    save_config(tmp_path, m.config, None)
    model, _, _ = load_model(tmp_path / "w.safetensors")
    assert torch.equal(model.norm.weight, m.norm.weight)


def test_mismatched_checkpoint_names_the_tensor_and_both_shapes(tmp_path):
    m = random_tiny()
    save_weights(m.state_dict(), tmp_path / "best_model_params.pt")
    save_config(tmp_path, ModelConfig(**{**m.config.to_dict(), "intermediate_size": 96}), None)
    with pytest.raises(TinyGemmaError) as e:
        load_model(tmp_path)
    msg = str(e.value)
    assert "layers.0.mlp.gate_proj.weight" in msg and "(128, 64)" in msg and "(96, 64)" in msg and "\n" not in msg


def test_missing_config_says_how_to_pass_it(tmp_path):
    save_weights(random_tiny().state_dict(), tmp_path / "best_model_params.pt")
    with pytest.raises(TinyGemmaError, match="config.json.*copy it next to the weights"):
        load_model(tmp_path)


def test_loading_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "best_model_params.pt")
    save_config(tmp_path, tiny(), None)
    with pytest.raises(TinyGemmaError, match="cannot read checkpoint"):
        load_model(tmp_path)
