"""Typed configs, named presets and `--set a.b=value` overrides.

Configs are frozen dataclasses, checked where they are made: every field against its type (an int
is not 2.5 and not true, a float is finite) and its range (declared beside the field), then the
checks that involve several fields. A bad value is one TinyGemmaError line that names the field.
`apply_overrides` and `updated` return new configs; nothing changes a config in place.

Presets are small functions returning a `ModelConfig`; the vocabulary size always comes from the
tokenizer (meta.json), so every preset takes `vocab_size`. `runconfig.resolve_config` layers a
preset, a config file, `--set` and the CLI flags into one TrainConfig.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Callable

from tinygemma.errors import TinyGemmaError

SLIDING = "sliding_attention"
FULL = "full_attention"
# The seed's layout: prepared data and model folders, relative to where the commands run.
DATA_DIR = "data/processed_datasets"
MODEL_DIR = "data/models"


def default_layer_types(n_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Gemma 3's 5 sliding : 1 full pattern; a model shorter than one pattern ends on a full layer."""
    kinds = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers)]
    if FULL not in kinds:
        kinds[-1] = FULL
    return tuple(kinds)


# ---------------------------------------------------------------- checking a config's fields


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None, lt: float | None = None,
       le: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose value must lie in the given bounds (ge: >=, gt: >, lt: <, le: <=) or choices."""
    return dataclasses.field(default=default, metadata={"ge": ge, "gt": gt, "lt": lt, "le": le, "choices": choices})


class _BadValue(Exception):
    pass


def _as_type(name: str, typ: Any, value: Any) -> Any:
    """`value` as the annotated type: an int-valued number for an int, any number for a float (finite),
    a list for a tuple, a dict for a nested config. Raises _BadValue naming the field otherwise."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        if value is None:
            return None
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise _BadValue(f"{name} must be a table of {typ.__name__} fields, got {value!r}")
        return typ.from_dict(value)
    if typing.get_origin(typ) is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise _BadValue(f"{name} must be a list of strings, got {value!r}")
        return tuple(value)
    if typ is bool:
        if not isinstance(value, bool):
            raise _BadValue(f"{name} must be true or false, got {value!r}")
        return value
    if typ is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise _BadValue(f"{name} must be a string, got {value!r}")
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        if not number or not math.isfinite(value) or value != int(value):
            raise _BadValue(f"{name} must be a whole number, got {value!r}")
        return int(value)
    if not number or not math.isfinite(value):  # float
        raise _BadValue(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _out_of_range(name: str, value: Any, meta: Any) -> str | None:
    if value is None:
        return None
    if meta.get("choices") and value not in meta["choices"]:
        return f"{name} {value!r} is not one of {', '.join(meta['choices'])}{did_you_mean(str(value), meta['choices'])}"
    for key, ok, words in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                           ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            return f"{name} must be {words} {bound:g}, got {value!r}"
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(cfg: Any, what: str) -> None:
    """Coerce every field of a (frozen) config to its type and check its range (`ranged`); one error for all
    problems, "invalid <what> config: ...". Every config dataclass calls it first in __post_init__."""
    problems = []
    for f in fields(cfg):
        try:
            value = _as_type(f.name, _hints(type(cfg))[f.name], getattr(cfg, f.name))
        except _BadValue as e:  # (a nested config raises its own one-line error)
            problems.append(str(e))
            continue
        object.__setattr__(cfg, f.name, value)
        if problem := _out_of_range(f.name, value, f.metadata):
            problems.append(problem)
    _refuse(problems, what)


def _refuse(problems: list[str], what: str) -> None:
    if problems:
        raise TinyGemmaError(f"invalid {what} config: " + "; ".join(problems))


def known_keys(cls: type, keys, where: str) -> None:
    """Refuse a key that is no field of `cls`, naming the closest field (`where` says whose key it was)."""
    names = [f.name for f in fields(cls)]
    unknown = [str(k) for k in keys if k not in names]
    if unknown:
        raise TinyGemmaError(f"{where}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], names)}")


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelConfig:
    """The Gemma 3 text-model shape. Defaults are Gemma 3 270M (see docs/MODEL.md)."""

    vocab_size: int = ranged(262_144, ge=1)
    hidden_size: int = ranged(640, ge=1)
    n_layers: int = ranged(18, ge=1, le=1024)  # bounded: layer_types is built with one entry a layer
    n_heads: int = ranged(4, ge=1)
    n_kv_heads: int = ranged(1, ge=1)
    head_dim: int = ranged(256, ge=2)  # even: RoPE rotates pairs of dimensions
    intermediate_size: int = ranged(2048, ge=1)
    sliding_window: int = ranged(512, ge=1)
    layer_types: tuple[str, ...] = ()  # empty -> default_layer_types(n_layers)
    rope_local_base: float = ranged(10_000.0, gt=1)  # RoPE theta on sliding layers
    rope_global_base: float = ranged(1_000_000.0, gt=1)  # RoPE theta on full layers
    query_pre_attn_scalar: int = ranged(256, ge=1)  # attention scale = query_pre_attn_scalar ** -0.5
    rms_norm_eps: float = ranged(1e-6, gt=0)
    max_position_embeddings: int = ranged(32_768, ge=1)
    init_std: float = ranged(0.02, gt=0)
    pad_token_id: int = ranged(0, ge=0)
    eos_token_id: int = ranged(1, ge=0)
    bos_token_id: int = ranged(2, ge=0)
    # Not in Gemma 3: training-only dropout on the embeddings and residual branches, for many epochs
    # over small data (docs/RECIPES.md). 0 is exactly Gemma 3; eval mode ignores it.
    dropout: float = ranged(0.0, ge=0, lt=1)

    # The fields a model folder's config.json must give (the rest have defaults that older files relied on).
    SHAPE = ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads", "head_dim", "intermediate_size",
             "sliding_window", "layer_types", "rope_local_base", "rope_global_base", "query_pre_attn_scalar",
             "rms_norm_eps")

    def __post_init__(self) -> None:
        check_fields(self, "model")
        if not self.layer_types:
            object.__setattr__(self, "layer_types", default_layer_types(self.n_layers))
        problems = []
        if len(self.layer_types) != self.n_layers:
            problems.append(f"layer_types has {len(self.layer_types)} entries but n_layers={self.n_layers}")
        bad = sorted(set(self.layer_types) - {SLIDING, FULL})
        if bad:
            problems.append(f"layer_types holds unknown type(s) {bad}; use {SLIDING!r} or {FULL!r}")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            problems.append(f"head_dim must be even (RoPE rotates pairs), got {self.head_dim}")
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            if getattr(self, name) >= self.vocab_size:
                problems.append(f"{name}={getattr(self, name)} must be below vocab_size={self.vocab_size}")
        _refuse(problems, "model")

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
    def from_dict(cls, d: dict[str, Any], require: tuple[str, ...] = ()) -> "ModelConfig":
        """From a dict (config.json, last.pt, a [model] table); `require` names fields that must be present."""
        if not isinstance(d, dict):
            raise TinyGemmaError(f"invalid model config: expected a table of ModelConfig fields, got {type(d).__name__}")
        known_keys(cls, d, "model config")
        missing = [k for k in require if k not in d]
        if missing:
            raise TinyGemmaError(f"invalid model config: {missing[0]} is missing")
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
    """The text of `--set key=raw` as the field's type; _as_type then checks it like any other value."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null"):
            return None
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ is int:
            return int(raw.replace("_", "")) if raw.lstrip("-").replace("_", "").isdigit() else float(raw)
        if typ is float:
            return float(raw)
        if typing.get_origin(typ) is tuple:
            return tuple(json.loads(raw) if raw.startswith("[") else [x for x in raw.split(",") if x])
    except (ValueError, RecursionError):  # RecursionError: a list nested thousands deep
        raise TinyGemmaError(f"--set {_printable(key)}={_printable(raw)}: expected {getattr(typ, '__name__', typ)}") \
            from None
    return raw


def _printable(text: str) -> str:
    """User text inside a one-line error: as it is, or its repr when it holds a newline or another control."""
    return text if text.isprintable() else repr(text)


def parse_assignment(cls: type, assignment: str) -> dict[str, Any]:
    """`a.b=value` -> {"a": {"b": value}}, the value parsed to the type of field b of section a of `cls`."""
    if "=" not in assignment:
        raise TinyGemmaError(f"--set {assignment!r}: expected key=value, e.g. --set lr=3e-4")
    key, raw = (s.strip() for s in assignment.split("=", 1))
    *sections, name = key.split(".")
    where = f"--set {_printable(key)}"
    for section in sections:
        known_keys(cls, [section], where)
        cls = _hints(cls)[section]
        cls = next((a for a in typing.get_args(cls) if dataclasses.is_dataclass(a)), cls)
        if not dataclasses.is_dataclass(cls):
            raise TinyGemmaError(f"{where}: {section!r} is not a section")
    known_keys(cls, [name], where)
    change: dict[str, Any] = {name: _parse_value(raw, _hints(cls)[name], key)}
    for section in reversed(sections):
        change = {section: change}
    return change


def merge_changes(*changes: dict[str, Any]) -> dict[str, Any]:
    """Nested change dicts merged in order, later wins (sections merge field by field)."""
    out: dict[str, Any] = {}
    for change in changes:
        for k, v in change.items():
            out[k] = merge_changes(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def updated(cfg: Any, changes: dict[str, Any]) -> Any:
    """A new config: `cfg` with `changes` ({field: value}; a nested dict changes a section), checked once.

    Changing a model's n_layers without giving layer_types re-derives them for the new depth."""
    known_keys(type(cfg), changes, type(cfg).__name__)
    own = dict(changes)
    for k, v in changes.items():
        section = getattr(cfg, k)
        if isinstance(v, dict) and dataclasses.is_dataclass(section):
            own[k] = updated(section, v)
    if isinstance(cfg, ModelConfig) and "n_layers" in own and "layer_types" not in own:
        own["layer_types"] = ()
    return dataclasses.replace(cfg, **own)


def apply_overrides(cfg: Any, assignments: list[str] | tuple[str, ...] | None) -> Any:
    """`cfg` with every `a.b=value` applied (parsed to the fields' types), checked once at the end."""
    return updated(cfg, merge_changes(*(parse_assignment(type(cfg), a) for a in assignments or ())))


# ---------------------------------------------------------------- training (train.py)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `tinygemma train` needs; `--set key=value` and `--config FILE` set these fields.

    `model` is None until runconfig.resolve_config resolves it (from `preset` and the tokenizer's
    vocab size in meta.json, or the --init-from folder); `--set model.hidden_size=128` changes one
    field of it. Intervals count optimizer steps.
    """

    data_dir: str = DATA_DIR
    out_dir: str = MODEL_DIR
    preset: str = ranged("small", choices=tuple(PRESETS))
    model: ModelConfig | None = None
    # batch: tokens per optimizer step = batch_size * block_size * grad_accum (summed over ranks)
    batch_size: int = ranged(16, ge=1)  # sequences per micro-batch, global (divided by the number of ranks)
    block_size: int = ranged(256, ge=1)
    grad_accum: int = ranged(1, ge=1)
    # stop conditions: the first one reached ends the run
    max_iters: int = ranged(2000, ge=1)
    max_tokens: int | None = ranged(None, ge=1)
    max_time: float | None = ranged(None, gt=0)  # seconds of training, summed over resumes
    patience: int | None = ranged(None, ge=1)  # stop after this many evals without a better val loss
    # optimizer and schedule (optim.py): linear warmup, then lr_decay from lr to min_lr
    optimizer: str = ranged("adamw", choices=("adamw", "muon"))  # muon: Muon for the blocks' 2-D matrices, AdamW for the rest
    lr: float = ranged(1e-3, gt=0)
    min_lr: float = ranged(1e-4, ge=0)
    muon_lr: float | None = ranged(None, gt=0)  # Muon's lr at the peak (AdamW-matched RMS); None -> lr
    muon_momentum: float = ranged(0.95, ge=0, lt=1)
    warmup_iters: int = ranged(100, ge=0)
    lr_decay_iters: int | None = ranged(None, ge=1)  # None -> max_iters
    lr_schedule: str = ranged("steps", choices=("steps", "time"))  # time: decay over max_time seconds of training
    lr_decay: str = ranged("cosine", choices=("cosine", "wsd"))  # wsd: flat, then linear to min_lr over decay_fraction
    decay_fraction: float = ranged(0.2, gt=0, le=1)  # wsd only
    weight_decay: float = ranged(0.1, ge=0)  # matrices only (not norms)
    beta1: float = ranged(0.9, ge=0, lt=1)
    beta2: float = ranged(0.95, ge=0, lt=1)
    grad_clip: float = ranged(1.0, ge=0)  # 0 disables clipping (the norm is still logged)
    # evaluation, checkpoints, logging
    eval_interval: int = ranged(100, ge=1)
    eval_windows: int = ranged(64, ge=1)  # fixed validation windows of block_size, chosen once, spread over the split
    checkpoint_interval: int = ranged(100, ge=1)  # last.pt every N steps (and at exit)
    log_interval: int = ranged(10, ge=1)
    sample_every_eval: bool = False  # print one generated line at each eval
    sample_prompt: str = "Once upon a time"
    sample_tokens: int = ranged(40, ge=1)
    tensorboard: bool = False
    wandb_project: str | None = None
    # runtime
    seed: int = ranged(1337, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (auto: cuda, then mps, then cpu)
    dtype: str = ranged("auto", choices=("auto", "float32", "bfloat16"))  # auto: bf16 autocast on cuda and AMX CPUs (device.native_bf16), fp32 elsewhere
    compile: bool | None = None  # None -> the measured default for the device (docs/TRAINING.md)
    fsdp: bool = False
    resume: bool = False
    init_from: str | None = None  # a model folder whose weights start this run
    force: bool = False  # resume even if the model config or the data changed
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "train")
        problems = []
        if self.device not in ("auto", "cpu", "cuda", "mps") and not (
                self.device.startswith("cuda:") and self.device[5:].isdigit()):
            problems.append(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        if self.lr_schedule == "time" and self.max_time is None:
            problems.append("lr_schedule=time needs max_time (the decay runs over those seconds)")
        _refuse(problems, "train")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = self.model.to_dict() if self.model is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (a TOML/YAML file or config.json["train"]); unknown keys get close matches."""
        if not isinstance(d, dict):
            raise TinyGemmaError(f"invalid train config: expected a table of TrainConfig fields, got {type(d).__name__}")
        known_keys(cls, d, "train config")
        return cls(**d)
