"""One TrainConfig from everything that sets it: preset < config file < --set < flags; and --dry-run.

`resolve_config` is the one place a training config is put together. It layers the sources as
nested change dicts, builds the TrainConfig once, then resolves the model shape: the --init-from
folder's, else the preset's at the tokenizer's vocab size (the data's meta.json), with the file's
[model] table and `--set model.*` on top. The result is frozen and checked; `train.train` takes it
as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from tinygemma import checkpoint
from tinygemma.config import ModelConfig, TrainConfig, known_keys, merge_changes, model_preset, parse_assignment, updated
from tinygemma.errors import TinyGemmaError
from tinygemma.metrics import flops_per_token


def resolve_config(preset: str | None = None, config_file: str | None = None, sets: Sequence[str] = (),
                   flags: Mapping[str, Any] | None = None, *, vocab_size: int | None = None,
                   need_data: bool = True) -> TrainConfig:
    """preset < config file < --set < flags (TrainConfig fields; `model` may be a whole ModelConfig), then
    the model: a frozen, checked TrainConfig. The model's vocabulary comes from `vocab_size`, else the
    data's meta.json; with need_data=False missing data leaves the preset's default vocabulary (--dry-run)."""
    file = load_config_file(config_file) if config_file else {}
    file_model = file.pop("model", None) or {}
    if not isinstance(file_model, dict):
        raise TinyGemmaError(f"--config {config_file}: [model] must be a table of ModelConfig fields")
    known_keys(TrainConfig, file, f"--config {config_file}")
    known_keys(ModelConfig, file_model, f"--config {config_file} [model]")
    set_changes = merge_changes(*(parse_assignment(TrainConfig, a) for a in sets))
    model_changes = merge_changes(file_model, set_changes.pop("model", {}))
    flags = dict(flags or {})
    model = flags.pop("model", None)
    cfg = updated(TrainConfig(), merge_changes(file, {"preset": preset} if preset else {}, set_changes, flags))
    vocab = vocab_size if vocab_size is not None else _data_vocab(cfg, need_data)
    if model is None:
        model = init_from_shape(cfg.init_from) if cfg.init_from else model_preset(cfg.preset, vocab)
    return _with_model(cfg, updated(model, model_changes), vocab)


def _data_vocab(cfg: TrainConfig, need_data: bool) -> int | None:
    """The tokenizer's vocab size from the data's meta.json (None if there is none and it is not needed)."""
    from tinygemma.data import read_meta

    if not need_data and not (Path(cfg.data_dir) / "meta.json").exists():
        return None
    return int(read_meta(cfg.data_dir)["tokenizer"]["vocab_size"])


def init_from_shape(source: str) -> ModelConfig:
    """The model shape of an --init-from source: our folder's config.json, else whatever load_model reads."""
    from tinygemma import hf

    folder = Path(source)
    if (folder / checkpoint.CONFIG_NAME).exists() and not hf.is_hf_folder(folder):
        return checkpoint.read_config(folder)["model"]
    return checkpoint.load_model(source)[1]  # a HF folder or a GGUF: load_model knows how to read its shape


def _with_model(cfg: TrainConfig, model: ModelConfig, vocab: int | None) -> TrainConfig:
    if vocab is not None and model.vocab_size < vocab:
        raise TinyGemmaError(f"model vocab_size {model.vocab_size} is smaller than the tokenizer's {vocab}; "
                             f"drop --set model.vocab_size or set it to at least {vocab}")
    if cfg.block_size > model.max_position_embeddings:
        raise TinyGemmaError(f"block_size {cfg.block_size} exceeds max_position_embeddings "
                             f"{model.max_position_embeddings}; lower --set block_size")
    return updated(cfg, {"model": model})


def load_config_file(path: str) -> dict:
    """A TOML file (or YAML when pyyaml is installed) of TrainConfig fields and an optional [model] table."""
    p = Path(path)
    if not p.is_file():
        raise TinyGemmaError(f"--config {path}: file not found")
    try:
        if p.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise TinyGemmaError(f"--config {path}: YAML needs pyyaml (pip install pyyaml); or use TOML") from None
            data = yaml.safe_load(p.read_text()) or {}
        else:
            import tomllib

            data = tomllib.loads(p.read_text())
    except (ValueError, TypeError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError and yaml errors are ValueErrors
        raise TinyGemmaError(f"--config {path}: cannot parse it ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise TinyGemmaError(f"--config {path}: expected a table of TrainConfig fields, got {type(data).__name__}")
    return data


def dry_run(cfg: TrainConfig) -> str:
    """Parameter count, FLOPs per token and a memory estimate for the configured run."""
    model_cfg = cfg.model
    n, fpt = model_cfg.n_params, flops_per_token(model_cfg, cfg.block_size)
    tokens = cfg.batch_size * cfg.block_size
    d, L, V = model_cfg.hidden_size, model_cfg.n_layers, model_cfg.vocab_size
    # fp32 weights + grads + AdamW's two moments = 16 B/param; activations kept for backward,
    # per token and layer roughly 16 hidden-sized + 3 MLP-sized + q/k/v/out tensors (fp32);
    # the loss holds one (chunk, V) fp32 block (loss.py).
    per_layer = 16 * d + 3 * model_cfg.intermediate_size + 4 * model_cfg.n_heads * model_cfg.head_dim
    act = 4 * tokens * L * per_layer
    state = 16 * n
    no_data = not (Path(cfg.data_dir) / "meta.json").exists()
    lines = [
        f"model: preset {cfg.preset}, {L} layers, d {d}, vocab {V:,}"
        + (" (preset default vocab: no prepared data found)" if no_data else ""),
        f"parameters: {n:,} ({V * d:,} in the tied embedding)",
        f"FLOPs per token (training, 6N + attention): {fpt / 1e6:,.1f} M; per step: "
        f"{fpt * tokens * cfg.grad_accum / 1e12:,.2f} TFLOP",
        f"tokens per step: {tokens * cfg.grad_accum:,} (batch {cfg.batch_size} x block {cfg.block_size} x accum {cfg.grad_accum})",
        f"memory estimate (fp32): weights+grads+AdamW {state / 2**30:.2f} GiB, activations ~{act / 2**30:.2f} GiB, "
        f"total ~{(state + act) / 2**30:.2f} GiB (bf16 autocast on CUDA roughly halves activations)",
    ]
    return "\n".join(lines)
