"""Hugging Face interop: config conversion both ways, HF folder / safetensors import, HF export.

Our parameter names are transformers' Gemma 3 names without the `model.` prefix, and the LM
head is tied (no `lm_head.weight`), so weights convert by renaming one prefix.

- `to_hf_config` / `from_hf_config`: ModelConfig <-> Gemma3TextConfig dict. Reads both the
  transformers 5.x form (`layer_types`, `rope_parameters` per layer type) and the 4.x form
  (`rope_theta`, `rope_local_base_freq`, `sliding_window_pattern`), and multimodal Gemma 3
  configs (the text part under `text_config`).
- `export_hf`: config.json, model.safetensors, tokenizer files, generation_config.json, so
  `AutoModelForCausalLM.from_pretrained(folder)` loads offline.
- `read_hf_folder`: -> (state dict in our names, ModelConfig).
GGUF (llama.cpp) files are read and written by gguf.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tinygemma.config import FULL, SLIDING, ModelConfig, default_layer_types
from tinygemma.errors import TinyGemmaError
from tinygemma.fsutil import atomic_path, atomic_write_json

HF_PREFIXES = ("model.language_model.", "language_model.model.", "model.")


# ---------------------------------------------------------------- config


def _sliding_pattern(cfg: ModelConfig) -> int | None:
    """The `sliding_window_pattern` of transformers 4.x if layer_types follow one, else None."""
    if FULL not in cfg.layer_types:
        return None
    p = cfg.layer_types.index(FULL) + 1
    return p if default_layer_types(cfg.n_layers, p) == cfg.layer_types else None


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """ModelConfig -> the dict of a transformers 5.x `Gemma3TextConfig` (config.json).
    The 4.x keys (rope_theta, rope_local_base_freq, sliding_window_pattern) are written too."""
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "query_pre_attn_scalar": int(cfg.query_pre_attn_scalar),
        "sliding_window": cfg.sliding_window,
        "layer_types": list(cfg.layer_types),
        "rope_parameters": {
            SLIDING: {"rope_type": "default", "rope_theta": cfg.rope_local_base},
            FULL: {"rope_type": "default", "rope_theta": cfg.rope_global_base},
        },
        # 4.x readers look for these instead of rope_parameters
        "rope_theta": cfg.rope_global_base,
        "rope_local_base_freq": cfg.rope_local_base,
        "sliding_window_pattern": _sliding_pattern(cfg),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": True,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
        "bos_token_id": cfg.bos_token_id,
        "torch_dtype": "float32",
    }


def _rope_theta(hf: dict, layer_type: str, fallback_key: str, default: float) -> float:
    params = hf.get("rope_parameters") or {}
    if isinstance(params.get(layer_type), dict) and "rope_theta" in params[layer_type]:
        return float(params[layer_type]["rope_theta"])
    scaling = (params.get(layer_type) or {}).get("rope_type", "default")
    if scaling != "default":
        raise TinyGemmaError(f"RoPE scaling {scaling!r} is not supported; only the default RoPE of Gemma 3 is")
    return float(hf.get(fallback_key, default))


def from_hf_config(hf: dict[str, Any]) -> ModelConfig:
    """A Gemma 3 config.json dict (text or multimodal, transformers 4.x or 5.x) -> ModelConfig."""
    hf = hf.get("text_config", hf)
    model_type = hf.get("model_type", "gemma3_text")
    if model_type not in ("gemma3_text", "gemma3"):
        raise TinyGemmaError(f"config model_type is {model_type!r}; only Gemma 3 text models (gemma3_text) can be imported")
    for cap in ("attn_logit_softcapping", "final_logit_softcapping"):
        if hf.get(cap) is not None:
            raise TinyGemmaError(f"config sets {cap}={hf[cap]}; Gemma 3 has no soft-capping and neither does tinygemma")
    n_layers = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or default_layer_types(n_layers, hf.get("sliding_window_pattern") or 6)
    ids = {k: hf.get(k) for k in ("pad_token_id", "eos_token_id", "bos_token_id")}
    if isinstance(ids["eos_token_id"], list):
        ids["eos_token_id"] = ids["eos_token_id"][0]
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        n_layers=n_layers,
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        head_dim=hf.get("head_dim", 256),
        intermediate_size=hf["intermediate_size"],
        sliding_window=hf.get("sliding_window", 4096),
        layer_types=tuple(layer_types),
        rope_local_base=_rope_theta(hf, SLIDING, "rope_local_base_freq", 10_000.0),
        rope_global_base=_rope_theta(hf, FULL, "rope_theta", 1_000_000.0),
        query_pre_attn_scalar=int(hf.get("query_pre_attn_scalar", 256)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=hf.get("max_position_embeddings", 32_768),
        init_std=float(hf.get("initializer_range", 0.02)),
        **{k: v for k, v in ids.items() if v is not None},
    )


# ---------------------------------------------------------------- weights


def to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> transformers' Gemma3ForCausalLM names (the tied head is not stored)."""
    return {f"model.{k}": v for k, v in state_dict.items()}


def from_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' names (text or multimodal) -> ours; drops a tied lm_head, refuses an untied one."""
    out = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight":
            continue
        for prefix in HF_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if name.startswith(("vision_tower.", "multi_modal_projector.")):
            continue  # the image half of a multimodal Gemma 3
        out[name] = tensor
    head = state_dict.get("lm_head.weight")
    if head is not None and "embed_tokens.weight" in out and not torch.equal(head, out["embed_tokens.weight"]):
        raise TinyGemmaError("the checkpoint's lm_head.weight differs from embed_tokens.weight; "
                             "Gemma 3 ties them and tinygemma only supports a tied head")
    return out


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return from_hf_state_dict(load_file(str(path)))


def read_hf_folder(folder: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """An HF Gemma 3 folder (config.json + model*.safetensors, maybe sharded) -> (state dict, config)."""
    folder = Path(folder)
    cfg = from_hf_config(json.loads((folder / "config.json").read_text()))
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        bins = sorted(folder.glob("pytorch_model*.bin"))
        if not bins:
            raise TinyGemmaError(f"{folder} has config.json but no model*.safetensors or pytorch_model*.bin weights")
        state = {}
        for b in bins:
            state.update(torch.load(b, map_location="cpu", weights_only=True))
        return from_hf_state_dict(state), cfg
    state = {}
    for f in files:
        state.update(read_safetensors(f))
    return state, cfg


def is_hf_folder(folder: str | Path) -> bool:
    """True for a folder whose config.json is a transformers config (not ours)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return isinstance(d, dict) and ("model_type" in d or "text_config" in d)


# ---------------------------------------------------------------- export


def generation_config(cfg: ModelConfig, tokenizer) -> dict[str, Any]:
    eos = tokenizer.eot_id if tokenizer is not None else cfg.eos_token_id
    bos = (tokenizer.bos_id if tokenizer is not None else cfg.bos_token_id)
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": cfg.pad_token_id,
            "do_sample": True, "temperature": 0.8, "top_k": 200, "max_new_tokens": 200}


def export_hf(model: torch.nn.Module, cfg: ModelConfig, tokenizer, out_dir: str | Path) -> Path:
    """Write an HF Gemma 3 folder that `AutoModelForCausalLM.from_pretrained(out_dir)` loads offline."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_cfg = to_hf_config(cfg)
    if tokenizer is not None:
        hf_cfg.update(eos_token_id=tokenizer.eot_id, bos_token_id=tokenizer.bos_id)
    state = {k: v.detach().to("cpu").contiguous() for k, v in to_hf_state_dict(model.state_dict()).items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_json(out / "config.json", hf_cfg)
    atomic_write_json(out / "generation_config.json", generation_config(cfg, tokenizer))
    if tokenizer is not None:
        write_hf_tokenizer(tokenizer, out)
    return out


def write_hf_tokenizer(tokenizer, out: Path) -> None:
    """tokenizer.json + tokenizer_config.json that transformers' AutoTokenizer loads."""
    with atomic_path(out / "tokenizer.json") as tmp:
        tmp.write_text(tokenizer.to_json(), encoding="utf-8")  # gpt2 too: the same BPE, built from the same files
    eot = tokenizer.decode([tokenizer.eot_id])
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eot, "pad_token": eot,
               "model_max_length": 1_000_000, "clean_up_tokenization_spaces": False}
    if tokenizer.bos_id is not None:
        tok_cfg["bos_token"] = tokenizer.decode([tokenizer.bos_id])
    atomic_write_json(out / "tokenizer_config.json", tok_cfg)

