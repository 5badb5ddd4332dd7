"""Model checkpoints on disk: the seed's plain state dict plus a JSON config beside it.

A model folder (default data/models) holds
  best_model_params.pt  plain state dict: Gemma3Model(cfg).load_state_dict(torch.load(p))
  config.json           {"model": ModelConfig, "tokenizer": tokenizer ref, ...}
  tokenizer.json        for file-based tokenizers (bpe:N), so the folder is self-contained
All writes are atomic (see fsutil.py). Loading uses weights_only=True or safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tinygemma.config import ModelConfig
from tinygemma.errors import TinyGemmaError
from tinygemma.fsutil import atomic_torch_save, atomic_write_json

BEST_NAME = "best_model_params.pt"
CONFIG_NAME = "config.json"


def save_config(out_dir: str | Path, model_cfg: ModelConfig, tokenizer_ref: dict | None, **extra: Any) -> Path:
    """Write config.json: the model shape, how to find the tokenizer, and anything in `extra`."""
    path = Path(out_dir) / CONFIG_NAME
    atomic_write_json(path, {"model": model_cfg.to_dict(), "tokenizer": tokenizer_ref, **extra})
    return path


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    atomic_torch_save({k: v.detach().cpu() for k, v in state_dict.items()}, path)


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_NAME
    if not path.exists():
        raise TinyGemmaError(
            f"{path} not found: a checkpoint needs the config.json that `tinygemma train` writes beside it; "
            "copy it next to the weights, or pass the shape with --preset NAME"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TinyGemmaError(f"{path} is not valid JSON ({e}); re-export or retrain the checkpoint") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights safely: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.exists():
        raise TinyGemmaError(f"checkpoint {path} not found; train one with `tinygemma train` or check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files
        raise TinyGemmaError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # a resume file (last.pt) holds the state dict under "model"
    return obj


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """load_state_dict with a one-line error naming the first mismatching tensor."""
    state_dict = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state_dict.items()}
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state_dict:
            raise TinyGemmaError(f"{source} has no tensor {name!r}: it was saved from a different model config")
        if tuple(state_dict[name].shape) != tuple(tensor.shape):
            raise TinyGemmaError(
                f"{source} does not match the config: {name} has shape {tuple(state_dict[name].shape)} "
                f"in the checkpoint but {tuple(tensor.shape)} in the model; pass the config it was trained with"
            )
    extra = sorted(set(state_dict) - set(own))
    if extra:
        raise TinyGemmaError(f"{source} has unexpected tensor {extra[0]!r}: it was saved from a different model")
    model.load_state_dict(state_dict)
