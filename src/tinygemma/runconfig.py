"""A TrainConfig from the command line: preset < config file < --set < flags; and --dry-run.

The model shape needs the tokenizer's vocab size, so it is resolved here from the data's
meta.json (or the --init-from folder) before `train.train` runs.
"""

from __future__ import annotations

from pathlib import Path

from tinygemma import checkpoint
from tinygemma.config import ModelConfig, TrainConfig, did_you_mean, model_preset
from tinygemma.errors import TinyGemmaError
from tinygemma.metrics import flops_per_token


def resolve_model_config(cfg: TrainConfig, meta: dict) -> ModelConfig:
    """cfg.model if given, else the --init-from folder's shape, else the preset at the tokenizer's vocab."""
    vocab = int(meta["tokenizer"]["vocab_size"])
    if cfg.model is not None:
        model_cfg = cfg.model
    elif cfg.init_from:
        folder = Path(cfg.init_from)
        if (folder / checkpoint.CONFIG_NAME).exists() and "model" in checkpoint.read_config(folder):
            model_cfg = ModelConfig.from_dict(checkpoint.read_config(folder)["model"])
        else:  # a HF folder or a GGUF: load_model knows how to read its shape
            model_cfg = checkpoint.load_model(cfg.init_from)[1]
    else:
        model_cfg = model_preset(cfg.preset, vocab)
    if model_cfg.vocab_size < vocab:
        raise TinyGemmaError(f"model vocab_size {model_cfg.vocab_size} is smaller than the tokenizer's {vocab}; "
                             f"drop --set model.vocab_size or set it to at least {vocab}")
    if cfg.block_size > model_cfg.max_position_embeddings:
        raise TinyGemmaError(f"block_size {cfg.block_size} exceeds max_position_embeddings "
                             f"{model_cfg.max_position_embeddings}; lower --set block_size")
    return model_cfg


def load_config_file(path: str) -> dict:
    """A TOML file (or YAML when pyyaml is installed) of TrainConfig fields and an optional [model] table."""
    p = Path(path)
    if not p.exists():
        raise TinyGemmaError(f"--config {path}: file not found")
    try:
        if p.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise TinyGemmaError(f"--config {path}: YAML needs pyyaml (pip install pyyaml); or use TOML") from None
            return yaml.safe_load(p.read_text()) or {}
        import tomllib

        return tomllib.loads(p.read_text())
    except (ValueError, TypeError) as e:  # tomllib.TOMLDecodeError and yaml errors are ValueErrors
        raise TinyGemmaError(f"--config {path}: cannot parse it ({e})") from None


def resolve_config(preset: str | None, config_file: str | None, sets: list[str], flags: dict) -> TrainConfig:
    """preset < config file < --set < explicit flags; the model shape is resolved when the data is readable."""
    from tinygemma.config import apply_override
    from tinygemma.data import read_meta

    raw = load_config_file(config_file) if config_file else {}
    model_table = raw.pop("model", None) or {}
    cfg = TrainConfig.from_dict({**raw, **({"preset": preset} if preset else {})})
    train_sets = [a for a in sets if not a.strip().startswith("model.")]
    for assignment in train_sets:
        apply_override(cfg, assignment, validate=False)  # checked once below, after the flags
    for k, v in flags.items():
        setattr(cfg, k, v)
    cfg.__post_init__()
    model_sets = [a for a in sets if a.strip().startswith("model.")]
    try:
        meta = read_meta(cfg.data_dir)
    except TinyGemmaError:
        if model_table or model_sets:
            raise
        return cfg  # train() reports the missing data; --dry-run uses the preset's vocab
    cfg.model = resolve_model_config(cfg, meta)
    unknown = sorted(set(model_table) - set(cfg.model.to_dict()))
    if unknown:
        raise TinyGemmaError(f"--config {config_file}: unknown [model] key {unknown[0]!r}"
                             f"{did_you_mean(unknown[0], cfg.model.to_dict())}")
    cfg.model = ModelConfig.from_dict({**cfg.model.to_dict(), **model_table})
    for assignment in model_sets:
        apply_override(cfg, assignment)
    return cfg


def dry_run(cfg: TrainConfig) -> str:
    """Parameter count, FLOPs per token and a memory estimate for the configured run."""
    model_cfg = cfg.model or model_preset(cfg.preset)
    n, fpt = model_cfg.n_params, flops_per_token(model_cfg, cfg.block_size)
    tokens = cfg.batch_size * cfg.block_size
    d, L, V = model_cfg.hidden_size, model_cfg.n_layers, model_cfg.vocab_size
    # fp32 weights + grads + AdamW's two moments = 16 B/param; activations kept for backward,
    # per token and layer roughly 16 hidden-sized + 3 MLP-sized + q/k/v/out tensors (fp32);
    # the loss holds one (chunk, V) fp32 block (loss.py).
    per_layer = 16 * d + 3 * model_cfg.intermediate_size + 4 * model_cfg.n_heads * model_cfg.head_dim
    act = 4 * tokens * L * per_layer
    state = 16 * n
    lines = [
        f"model: preset {cfg.preset}, {L} layers, d {d}, vocab {V:,}" + ("" if cfg.model else " (preset default vocab: "
                                                                          "no prepared data found)"),
        f"parameters: {n:,} ({V * d:,} in the tied embedding)",
        f"FLOPs per token (training, 6N + attention): {fpt / 1e6:,.1f} M; per step: "
        f"{fpt * tokens * cfg.grad_accum / 1e12:,.2f} TFLOP",
        f"tokens per step: {tokens * cfg.grad_accum:,} (batch {cfg.batch_size} x block {cfg.block_size} x accum {cfg.grad_accum})",
        f"memory estimate (fp32): weights+grads+AdamW {state / 2**30:.2f} GiB, activations ~{act / 2**30:.2f} GiB, "
        f"total ~{(state + act) / 2**30:.2f} GiB (bf16 autocast on CUDA roughly halves activations)",
    ]
    return "\n".join(lines)
