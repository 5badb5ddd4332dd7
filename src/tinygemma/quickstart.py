"""`tinygemma quickstart`: the whole product in one command, offline by default.

data (TinyStories from the hub when reachable, else the built-in story corpus) ->
the CPU recipe trained for a wall-clock budget, printing a sample at each eval ->
three stories, validation loss and bits per byte, the loss plot, the next commands.

The recipe is the winner of the experiments in docs/RECIPES.md: the best validation
bits per byte on real TinyStories text after 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tinygemma.config import TrainConfig, apply_overrides, model_preset
from tinygemma.errors import TinyGemmaError
from tinygemma.fsutil import atomic_write_json

HUB_DATASET = "roneneldan/TinyStories"
EVAL_TOKENS = 250_000  # the report scores the whole validation split up to this size (about 1 MB of text)
STATE_NAME = "quickstart.json"  # beside the model: {"status": "running" | "interrupted" | "done", ...}
# Without dropout the recipe overfits once it has seen its training data about 8 times (validation loss
# turns up at ~2M tokens of a 233k-token file, docs/RECIPES.md); past that, dropout 0.2 scored best.
OVERFIT_EPOCHS = 8.0
AUTO_DROPOUT = 0.2


@dataclass
class Recipe:
    """A data + model + optimiser recipe; `train_config` turns it into a TrainConfig."""

    tokenizer: str = "bpe:4096"
    preset: str = "mini"
    model_overrides: list[str] = field(default_factory=list)  # `--set model.*` style, applied to the preset
    block_size: int = 256
    batch_size: int = 16
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_iters: int = 50
    weight_decay: float = 0.1
    eval_interval: int = 100
    eval_windows: int = 32
    compile: bool = False
    dtype: str = "float32"  # "bfloat16": autocast on CPUs with AVX512-BF16/AMX
    dropout: float | None = None  # None: AUTO_DROPOUT when the budget repeats the data > OVERFIT_EPOCHS times, else 0
    tokens_per_s: float = 9_000  # this recipe's speed on a 2-core CPU (docs/RECIPES.md), to predict the epochs

    def epochs(self, train_tokens: int, max_time: float) -> float:
        """How many times `max_time` seconds at tokens_per_s go through `train_tokens` tokens."""
        return self.tokens_per_s * max_time / max(train_tokens, 1)

    def dropout_for(self, train_tokens: int | None, max_time: float) -> float:
        if self.dropout is not None:
            return self.dropout
        if train_tokens is None:
            return 0.0
        return AUTO_DROPOUT if self.epochs(train_tokens, max_time) > OVERFIT_EPOCHS else 0.0

    def train_config(self, data_dir: str, out_dir: str, vocab_size: int, max_time: float,
                     train_tokens: int | None = None, **extra) -> TrainConfig:
        """`train_tokens` (the prepared train split's size) lets dropout follow the expected epochs."""
        model = model_preset(self.preset, vocab_size=vocab_size)
        model.dropout = self.dropout_for(train_tokens, max_time)
        apply_overrides(model, self.model_overrides)
        return TrainConfig(
            data_dir=data_dir, out_dir=out_dir, preset=self.preset, model=model, block_size=self.block_size,
            batch_size=self.batch_size, lr=self.lr, min_lr=self.min_lr, warmup_iters=self.warmup_iters,
            weight_decay=self.weight_decay, eval_interval=self.eval_interval, eval_windows=self.eval_windows,
            checkpoint_interval=self.eval_interval, max_iters=10**9, max_time=max_time, lr_schedule="time",
            compile=self.compile, dtype=self.dtype, **extra,
        )


RECIPE = Recipe()


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub answers, and why not (offline env var, DNS, connection)."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0"):
        return False, "HF_HUB_OFFLINE is set"
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True, "the Hugging Face hub is reachable"
    except OSError as e:
        return False, f"the Hugging Face hub is not reachable ({e.strerror or type(e).__name__})"


def choose_source(source: str | None, hub_mb: float) -> tuple[str, str]:
    """-> (source spec for prepare, one line saying which data and why)."""
    if source:
        return source, f"data: {source} (--source)"
    ok, why = hub_reachable()
    if ok:
        return f"hf:{HUB_DATASET}", f"data: TinyStories from the hub, first {hub_mb:g} MB streamed ({why})"
    return "builtin", f"data: the built-in story corpus, a stand-in for TinyStories ({why})"


def _read_state(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / STATE_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _train(cfg: TrainConfig, out_dir: Path, resume: bool) -> dict:
    from tinygemma.train import train

    cfg.resume = resume
    atomic_write_json(out_dir / STATE_NAME, {"status": "running", "data_dir": cfg.data_dir, "max_time": cfg.max_time,
                                            "dropout": cfg.model.dropout})
    summary = train(cfg)
    interrupted = summary["stop_reason"] in ("SIGINT", "SIGTERM")
    atomic_write_json(out_dir / STATE_NAME, {"status": "interrupted" if interrupted else "done",
                                            "data_dir": cfg.data_dir, "max_time": cfg.max_time, "dropout": cfg.model.dropout,
                                            "step": summary["step"], "tokens_seen": summary["tokens_seen"]})
    if interrupted:
        raise KeyboardInterrupt
    return summary


def _report(out_dir: Path, data_dir: str, block_size: int, stories: int, seed: int) -> None:
    from tinygemma.checkpoint import load_model
    from tinygemma.data import read_meta
    from tinygemma.evaluate import evaluate_split
    from tinygemma.generate import generate

    model, _, tok = load_model(out_dir)
    print("\n== three stories from the best checkpoint ==")
    for i, text in enumerate(generate(model, tok, ["Once upon a time"] * stories, max_new_tokens=200,
                                      temperature=0.8, top_k=200, seed=seed)):
        print(f"\n[{i + 1}] {text.strip()}")
    ev = evaluate_split(model, data_dir, "validation", block_size=block_size, max_tokens=EVAL_TOKENS)
    print(f"\nvalidation: loss {ev['loss']:.4f} nats/token, perplexity {ev['ppl']:.2f}, "
          f"{ev['bpb']:.4f} bits per byte")
    print(f"  {_scored(ev, read_meta(data_dir))}")
    print(f"loss plot: {out_dir / 'loss.png'}")
    print(f"model:     {out_dir / 'best_model_params.pt'} (+ config.json)")
    print("\nnext:")
    print(f"  tinygemma generate --checkpoint {out_dir} --prompt 'Once upon a time'")
    print(f"  tinygemma eval --checkpoint {out_dir} --data-dir {data_dir}")
    print(f"  tinygemma export --format hf --checkpoint {out_dir} --out {out_dir}/hf")


def _scored(ev: dict, meta: dict) -> str:
    """Which text a validation figure covers, in words."""
    src = meta["source"]["validation"]
    how = meta["source"].get("holdout", {}).get("method")
    text = {"hash": f"the documents held out of {src}", "tail": f"the end of {src}"}.get(how, src)
    whole = ev["documents"] == ev["split_documents"]
    part = "the whole split" if whole else f"the first {ev['documents']:,} of its {ev['split_documents']:,} documents"
    return f"scored on {ev['documents']:,} documents, {ev['bytes']:,} bytes of {text}, {part} ({ev['tokens']:,} tokens)"


def quickstart(source: str | None = None, val_source: str | None = None, minutes: float = 10.0,
               data_dir: str = "data/processed_datasets", out_dir: str = "data/models", hub_mb: float = 50.0,
               builtin_mb: float = 20.0, fresh: bool = False, seed: int = 1337, recipe: Recipe = RECIPE,
               num_proc: int | None = None, progress: bool = True, doc_split: str = "auto") -> dict:
    """Prepare (or reuse) data, train the recipe for `minutes`, print stories and scores; return the summary."""
    from tinygemma.prepare import prepare

    if minutes <= 0:
        raise TinyGemmaError(f"--time must be positive (minutes), got {minutes}")
    src, why = choose_source(source, hub_mb)
    print(why, flush=True)
    meta = prepare(src, val_source=val_source, tokenizer=recipe.tokenizer, out=data_dir, num_proc=num_proc,
                   doc_split=doc_split, builtin_mb=builtin_mb, builtin_val_mb=min(1.0, builtin_mb / 10),
                   hf_mb=hub_mb if src.startswith("hf:") else None, progress=progress)
    out = Path(out_dir)
    state = _read_state(out)
    resume = (not fresh and state.get("status") in ("running", "interrupted") and state.get("data_dir") == data_dir
              and (out / "last.pt").exists())
    if resume:
        print(f"resuming the interrupted quickstart in {out} from step {state.get('step', '?')} "
              "(pass --fresh to start over)", flush=True)
        if state.get("dropout") is not None:  # the run's own, even if --time (and so the epochs) changed
            recipe = replace(recipe, dropout=state["dropout"])
    cfg = recipe.train_config(data_dir, out_dir, meta["tokenizer"]["vocab_size"], max_time=minutes * 60,
                              train_tokens=meta["train"]["tokens"], seed=seed, sample_every_eval=True,
                              progress=progress, force=not resume)
    epochs = recipe.epochs(meta["train"]["tokens"], minutes * 60)
    print(f"recipe: {recipe.preset}, {recipe.tokenizer}, dropout {cfg.model.dropout:g} "
          f"(about {epochs:.1f} passes over {meta['train']['tokens']:,} training tokens in {minutes:g} min "
          f"on a 2-core CPU)", flush=True)
    t0 = time.time()
    summary = _train(cfg, out, resume)
    print(f"trained {summary['step']:,} steps, {summary['tokens_seen']:,} tokens in {time.time() - t0:.0f} s "
          f"({summary['stop_reason']})", flush=True)
    _report(out, data_dir, recipe.block_size, stories=3, seed=seed)
    return summary
