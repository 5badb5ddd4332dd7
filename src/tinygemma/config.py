"""Typed configs, named presets and `--set a.b=value` overrides.

Presets are small functions returning a `ModelConfig`; the vocabulary size always
comes from the tokenizer (meta.json), so every preset takes `vocab_size`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Callable

from tinygemma.errors import TinyGemmaError

SLIDING = "sliding_attention"
FULL = "full_attention"


def default_layer_types(n_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Gemma 3's 5 sliding : 1 full pattern; a model shorter than one pattern ends on a full layer."""
    types = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers)]
    if FULL not in types:
        types[-1] = FULL
    return tuple(types)


@dataclass
class ModelConfig:
    """The Gemma 3 text-model shape. Defaults are Gemma 3 270M (see docs/MODEL.md)."""

    vocab_size: int = 262_144
    hidden_size: int = 640
    n_layers: int = 18
    n_heads: int = 4
    n_kv_heads: int = 1
    head_dim: int = 256
    intermediate_size: int = 2048
    sliding_window: int = 512
    layer_types: tuple[str, ...] = ()  # empty -> default_layer_types(n_layers)
    rope_local_base: float = 10_000.0  # RoPE theta on sliding layers
    rope_global_base: float = 1_000_000.0  # RoPE theta on full layers
    query_pre_attn_scalar: int = 256  # attention scale = query_pre_attn_scalar ** -0.5
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32_768
    init_std: float = 0.02
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2
    # Not in Gemma 3: training-only dropout on the embeddings and residual branches, for many epochs
    # over small data (docs/RECIPES.md). 0 is exactly Gemma 3; eval mode ignores it.
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.layer_types:
            self.layer_types = default_layer_types(self.n_layers)
        self.layer_types = tuple(self.layer_types)
        problems = []
        if len(self.layer_types) != self.n_layers:
            problems.append(f"layer_types has {len(self.layer_types)} entries but n_layers={self.n_layers}")
        bad = sorted(set(self.layer_types) - {SLIDING, FULL})
        if bad:
            problems.append(f"unknown layer type(s) {bad}; use {SLIDING!r} or {FULL!r}")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "head_dim", "intermediate_size", "sliding_window"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise TinyGemmaError("invalid model config: " + "; ".join(problems))

    @property
    def n_params(self) -> int:
        """Parameter count (the LM head is tied to the embedding, so it adds nothing)."""
        d, h, kv, hd, f = self.hidden_size, self.n_heads, self.n_kv_heads, self.head_dim, self.intermediate_size
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d + 2 * hd  # q, k, v, o + q/k norms
        mlp = 3 * d * f
        block = attn + mlp + 4 * d
        return self.vocab_size * d + self.n_layers * block + d

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TinyGemmaError(f"unknown model config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------- presets


def gemma3_270m(vocab_size: int = 262_144) -> ModelConfig:
    """The official Gemma 3 270M shape (268M params at vocab 262,144; ~132.5M at GPT-2's 50,257)."""
    return ModelConfig(vocab_size=vocab_size)


def tiny(vocab_size: int = 256) -> ModelConfig:
    """For unit tests: 2 layers (one sliding, one full), d 64, window 8."""
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=1, head_dim=16,
        intermediate_size=128, sliding_window=8, layer_types=(SLIDING, FULL),
        query_pre_attn_scalar=16, max_position_embeddings=2048,
    )


def mini(vocab_size: int = 50_257) -> ModelConfig:
    """CPU-sized: d 128, 4 layers (3 sliding + 1 full), 4 heads x 32, MLP 512."""
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=128, n_layers=4, n_heads=4, n_kv_heads=1, head_dim=32,
        intermediate_size=512, sliding_window=128, query_pre_attn_scalar=32, max_position_embeddings=4096,
    )


def small(vocab_size: int = 50_257) -> ModelConfig:
    """CPU-sized: d 256, 6 layers (5 sliding + 1 full), 4 heads x 64 (1 KV head), MLP 1024."""
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=256, n_layers=6, n_heads=4, n_kv_heads=1, head_dim=64,
        intermediate_size=1024, sliding_window=256, query_pre_attn_scalar=64, max_position_embeddings=8192,
    )


def medium(vocab_size: int = 50_257) -> ModelConfig:
    """Small-GPU-sized: d 384, 12 layers (10 sliding + 2 full), 6 heads x 64 (2 KV heads), MLP 1536."""
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=384, n_layers=12, n_heads=6, n_kv_heads=2, head_dim=64,
        intermediate_size=1536, sliding_window=512, query_pre_attn_scalar=64, max_position_embeddings=8192,
    )


PRESETS: dict[str, Callable[..., ModelConfig]] = {
    "tiny": tiny,
    "mini": mini,
    "small": small,
    "medium": medium,
    "gemma3-270m": gemma3_270m,
}


def model_preset(name: str, vocab_size: int | None = None) -> ModelConfig:
    """Build a preset by name; `vocab_size` (from the tokenizer) overrides the preset's default."""
    if name not in PRESETS:
        raise TinyGemmaError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]() if vocab_size is None else PRESETS[name](vocab_size=vocab_size)


# The seed's name: `Gemma3Model(model_config)` is Gemma 3 270M with the default GPT-2 vocabulary.
model_config = gemma3_270m(vocab_size=50_257)


# ---------------------------------------------------------------- overrides


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _parse_value(raw: str, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        return _parse_value(raw, args[0], key)
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ is int:
            return int(float(raw)) if "e" in raw.lower() else int(raw.replace("_", ""))
        if typ is float:
            return float(raw)
        if typ is str:
            return raw
        if origin in (tuple, list):
            items = json.loads(raw) if raw.startswith("[") else [x for x in raw.split(",") if x]
            return tuple(items) if origin is tuple else list(items)
    except ValueError:
        raise TinyGemmaError(f"--set {key}={raw}: expected {getattr(typ, '__name__', typ)}") from None
    return raw


def apply_override(cfg: Any, assignment: str, validate: bool = True) -> None:
    """Apply one `a.b=value` to a (nested) dataclass, parsing `value` to the field's type.

    validate=False skips the root's cross-field checks, for a caller that sets several fields
    (e.g. lr_schedule=time, then --max-time) and validates once at the end.
    """
    if "=" not in assignment:
        raise TinyGemmaError(f"--set {assignment!r}: expected key=value, e.g. --set lr=3e-4")
    key, raw = assignment.split("=", 1)
    target, parts = cfg, key.strip().split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(type(target))
        names = [f.name for f in fields(target)]
        if part not in names:
            where = ".".join(parts[:i]) or type(target).__name__
            raise TinyGemmaError(f"--set {key}: unknown key {part!r} in {where}{did_you_mean(part, names)}")
        if i == len(parts) - 1:
            setattr(target, part, _parse_value(raw.strip(), hints[part], key))
            if part == "n_layers" and isinstance(target, ModelConfig):
                target.layer_types = ()  # re-derived for the new depth; set layer_types after n_layers to choose
            if target is not cfg:
                target.__post_init__()  # validate the section that changed (the root is validated below)
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise TinyGemmaError(f"--set {key}: {part!r} is not a section")
    if validate and hasattr(cfg, "__post_init__"):
        cfg.__post_init__()


def apply_overrides(cfg: Any, assignments: list[str] | None) -> Any:
    for a in assignments or []:
        apply_override(cfg, a)
    return cfg


# ---------------------------------------------------------------- training (train.py)


@dataclass
class TrainConfig:
    """Everything `tinygemma train` needs; `--set key=value` and `--config FILE` set these fields.

    `model` is resolved at start from `preset` and the tokenizer's vocab size (meta.json) unless
    given; `--set model.hidden_size=128` changes one field of it. Intervals count optimizer steps.
    """

    data_dir: str = "data/processed_datasets"
    out_dir: str = "data/models"
    preset: str = "small"
    model: ModelConfig | None = None
    # batch: tokens per optimizer step = batch_size * block_size * grad_accum (summed over ranks)
    batch_size: int = 16  # sequences per micro-batch, global (divided by the number of ranks)
    block_size: int = 256
    grad_accum: int = 1
    # stop conditions: the first one reached ends the run
    max_iters: int = 2000
    max_tokens: int | None = None
    max_time: float | None = None  # seconds of training, summed over resumes
    patience: int | None = None  # stop after this many evals without a better val loss
    # optimizer and schedule (optim.py): linear warmup, then lr_decay from lr to min_lr
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' 2-D matrices, AdamW for embedding and norms)
    lr: float = 1e-3
    min_lr: float = 1e-4
    muon_lr: float | None = None  # Muon's lr at the peak (AdamW-matched RMS); None -> lr
    muon_momentum: float = 0.95
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None -> max_iters
    lr_schedule: str = "steps"  # steps: decay over lr_decay_iters; time: decay over max_time seconds of training
    lr_decay: str = "cosine"  # cosine | wsd (flat, then linear to min_lr over the last decay_fraction)
    decay_fraction: float = 0.2  # wsd only
    weight_decay: float = 0.1  # matrices only (not norms)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    # evaluation, checkpoints, logging
    eval_interval: int = 100
    eval_windows: int = 64  # fixed validation windows of block_size, chosen once, spread over the split
    checkpoint_interval: int = 100  # last.pt every N steps (and at exit)
    log_interval: int = 10
    sample_every_eval: bool = False  # print one generated line at each eval
    sample_prompt: str = "Once upon a time"
    sample_tokens: int = 40
    tensorboard: bool = False
    wandb_project: str | None = None
    # runtime
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | mps (auto: cuda, then mps, then cpu)
    dtype: str = "auto"  # auto (bf16 autocast on cuda, fp32 elsewhere) | float32 | bfloat16
    compile: bool | None = None  # None -> the measured default for the device (docs/TRAINING.md)
    fsdp: bool = False
    resume: bool = False
    init_from: str | None = None  # a model folder whose weights start this run
    force: bool = False  # resume even if the model config or the data changed
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "block_size", "grad_accum", "max_iters", "eval_interval", "eval_windows",
                     "checkpoint_interval", "log_interval"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.lr <= 0 or self.min_lr < 0:
            problems.append("lr must be positive and min_lr not negative")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            problems.append(f"device {self.device!r} is not one of auto, cpu, cuda, mps")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            problems.append(f"dtype {self.dtype!r} is not one of auto, float32, bfloat16")
        if self.optimizer not in ("adamw", "muon"):
            problems.append(f"optimizer {self.optimizer!r} is not one of adamw, muon")
        if self.muon_lr is not None and self.muon_lr <= 0:
            problems.append("muon_lr must be positive (or unset)")
        if self.lr_decay not in ("cosine", "wsd"):
            problems.append(f"lr_decay {self.lr_decay!r} is not one of cosine, wsd")
        if not 0.0 < self.decay_fraction <= 1.0:
            problems.append(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.lr_schedule not in ("steps", "time"):
            problems.append(f"lr_schedule {self.lr_schedule!r} is not one of steps, time")
        elif self.lr_schedule == "time" and not self.max_time:
            problems.append("lr_schedule=time needs max_time (the cosine runs over those seconds)")
        if self.patience is not None and self.patience <= 0:
            problems.append("patience must be positive (or unset)")
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if problems:
            raise TinyGemmaError("invalid train config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = self.model.to_dict() if self.model is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (a TOML/YAML file or config.json["train"]); unknown keys get close matches."""
        names = [f.name for f in fields(cls)]
        for key in d:
            if key not in names:
                raise TinyGemmaError(f"unknown train config key {key!r}{did_you_mean(key, names)}")
        return cls(**d)
