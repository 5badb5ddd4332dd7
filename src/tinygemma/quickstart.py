"""`tinygemma quickstart`: the whole product in one command, offline by default.

data (TinyStories from the hub when reachable, else the built-in story corpus) ->
the CPU recipe trained for a wall-clock budget, printing a sample at each eval ->
three stories, validation loss and bits per byte, the loss plot, the next commands.

The recipe is the winner of the experiments in docs/RECIPES.md: the best validation
bits per byte on real TinyStories text after 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tinygemma.config import DATA_DIR, MODEL_DIR, TrainConfig, check_fields, ranged
from tinygemma.errors import TinyGemmaError
from tinygemma.fsutil import atomic_write_json, exclusive_dir, read_json
from tinygemma.prepare import PrepareOptions, prepare

HUB_DATASET = "roneneldan/TinyStories"
EVAL_TOKENS = 250_000  # the report scores the whole validation split up to this size (about 1 MB of text)
STATE_NAME = "quickstart.json"  # beside the model: {"status": "running" | "interrupted" | "done", ...}
# Many passes over a small file overfit: without dropout the old recipe's validation loss turned up after
# about 8 passes (docs/RECIPES.md). Past that, the recipe regularises: dropout 0.2 and weight decay 2.0. On the
# TinyStories story files at ~50 passes, decay 2.0 and 4.0 scored best of 0.5-8 (4.0 by 0.5%, two seeds each);
# in benchmarks/quality.py the quickstart scored 1.1366 at 2.0 and 1.1415 at 4.0, so 2.0. Past DECAY_PASSES
# the decay grows in proportion to the passes (AdamW's averaging horizon, 1 / (lr x decay) steps, then stays
# the same share of a pass): on every fourth story of that file (140-190 passes), decay 2.0 overfit from
# ~20 passes on and 8.0 improved to the end (docs/RECIPES.md, the data-size axis). Fewer passes keep Gemma 3's plain dropout 0, decay 0.1.
OVERFIT_EPOCHS = 8.0
DECAY_PASSES = 45.0
AUTO_DROPOUT = 0.2
AUTO_WEIGHT_DECAY = 2.0
BASE_WEIGHT_DECAY = 0.1


@dataclass(frozen=True)
class Recipe:
    """A tokenizer, a model preset and `--set` overrides of TrainConfig: the quickstart's training recipe.

    `train_config` resolves it, with the time budget and the regularisation the data size asks for,
    through runconfig.resolve_config, the same path `tinygemma train --preset P --set ...` takes."""

    tokenizer: str = "bpe:auto"  # bpe:4096, or fewer ids for less than ~650 KB of training text (tokenizer.py)
    preset: str = "mini"
    sets: tuple[str, ...] = (
        # 8 x 512, not 16 x 256: the same tokens per step, in windows that hold whole stories (docs/RECIPES.md)
        "block_size=512", "batch_size=8", "warmup_iters=50",
        "optimizer=muon", "lr=3e-3",  # Muon for the hidden matrices, AdamW for embeddings and norms, one lr
        "lr_decay=wsd", "decay_fraction=0.3", "min_lr=0",  # flat, then linear to zero over the last 30%
        "eval_interval=100", "eval_windows=32", "checkpoint_interval=100",
        "compile=false",  # compiled blocks were ~9% faster but need a C++ compiler and ~10 s to build
        "dtype=auto",  # bf16 autocast on CPUs with AVX512-BF16 or AMX (device.native_bf16), fp32 elsewhere
        "lr_schedule=time", "max_iters=1000000000",  # the time budget (max_time) ends the run
    )
    dropout: float | None = None  # None: AUTO_DROPOUT when the budget repeats the data > OVERFIT_EPOCHS times, else 0
    weight_decay: float | None = None  # None: BASE_WEIGHT_DECAY, past OVERFIT_EPOCHS passes AUTO_WEIGHT_DECAY (more past DECAY_PASSES)
    tokens_per_s: float = 12_000  # this recipe's speed on a 2-core CPU (docs/RECIPES.md), to predict the epochs

    def epochs(self, train_tokens: int, max_time: float) -> float:
        """How many times `max_time` seconds at tokens_per_s go through `train_tokens` tokens."""
        return self.tokens_per_s * max_time / max(train_tokens, 1)

    def many_passes(self, train_tokens: int | None, max_time: float) -> bool:
        return train_tokens is not None and self.epochs(train_tokens, max_time) > OVERFIT_EPOCHS

    def dropout_for(self, train_tokens: int | None, max_time: float) -> float:
        if self.dropout is not None:
            return self.dropout
        return AUTO_DROPOUT if self.many_passes(train_tokens, max_time) else 0.0

    def weight_decay_for(self, train_tokens: int | None, max_time: float) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        if not self.many_passes(train_tokens, max_time):
            return BASE_WEIGHT_DECAY
        return round(AUTO_WEIGHT_DECAY * max(1.0, self.epochs(train_tokens, max_time) / DECAY_PASSES), 2)

    def overrides(self, max_time: float, train_tokens: int | None = None) -> list[str]:
        """The recipe as `--set` assignments; a `model.dropout` or `weight_decay` in `sets` wins over the automatic one."""
        return [f"model.dropout={self.dropout_for(train_tokens, max_time)}",
                f"weight_decay={self.weight_decay_for(train_tokens, max_time)}", *self.sets, f"max_time={max_time}"]

    def train_config(self, data_dir: str, out_dir: str, vocab_size: int | None, max_time: float,
                     train_tokens: int | None = None, **flags) -> TrainConfig:
        """The resolved TrainConfig; `train_tokens` (the prepared train split's size) lets the regularisation
        follow the expected epochs; `flags` are further TrainConfig fields (seed, progress, resume, ...)."""
        from tinygemma.runconfig import resolve_config

        return resolve_config(self.preset, sets=self.overrides(max_time, train_tokens),
                              flags={"data_dir": data_dir, "out_dir": out_dir, **flags}, vocab_size=vocab_size)


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
    """quickstart.json, or {} when there is none or it is unreadable (then the run starts over)."""
    if not (out_dir / STATE_NAME).exists():
        return {}
    try:
        state = read_json(out_dir / STATE_NAME, "the quickstart's state")
    except TinyGemmaError:
        return {}
    return state if isinstance(state, dict) else {}


def _train(cfg: TrainConfig, out_dir: Path) -> dict:
    from tinygemma.train import train

    atomic_write_json(out_dir / STATE_NAME, {"status": "running", "data_dir": cfg.data_dir, "max_time": cfg.max_time,
                                            "dropout": cfg.model.dropout,
                                            "weight_decay": cfg.weight_decay})
    summary = train(cfg)
    interrupted = summary["stop_reason"] in ("SIGINT", "SIGTERM")
    atomic_write_json(out_dir / STATE_NAME, {"status": "interrupted" if interrupted else "done",
                                            "data_dir": cfg.data_dir, "max_time": cfg.max_time, "dropout": cfg.model.dropout,
                                            "weight_decay": cfg.weight_decay,
                                            "step": summary["step"], "tokens_seen": summary["tokens_seen"]})
    if interrupted:
        raise KeyboardInterrupt(summary["stop_reason"])  # the CLI exits 128 + that signal's number
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


@dataclass(frozen=True, kw_only=True)
class QuickstartOptions:
    """What `tinygemma quickstart` takes (its flags, with their defaults)."""

    source: str | None = None  # anything prepare takes; None: hub TinyStories if reachable, else builtin
    val_source: str | None = None
    doc_split: str = "auto"
    minutes: float = ranged(10.0, gt=0)  # the training budget (--time)
    data_dir: str = DATA_DIR
    out_dir: str = MODEL_DIR
    hub_mb: float = ranged(50.0, gt=0)  # MB of TinyStories streamed from the hub
    builtin_mb: float = ranged(20.0, gt=0)  # MB of built-in stories to train on
    fresh: bool = False  # start over instead of resuming an interrupted run
    seed: int = ranged(1337, ge=0)
    num_proc: int | None = ranged(None, ge=1)  # processes for tokenizing (None: every core)
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "quickstart")

    def prepare_options(self, source: str, tokenizer: str) -> PrepareOptions:
        """What prepare makes of them: the chosen source, the recipe's tokenizer, 1/10 of the stories for validation."""
        return PrepareOptions(source=source, val_source=self.val_source, tokenizer=tokenizer, out=self.data_dir,
                              num_proc=self.num_proc, doc_split=self.doc_split, builtin_mb=self.builtin_mb,
                              builtin_val_mb=min(1.0, self.builtin_mb / 10),
                              hf_mb=self.hub_mb if source.startswith("hf:") else None, progress=self.progress)


def quickstart(opts: QuickstartOptions = QuickstartOptions(), recipe: Recipe = RECIPE) -> dict:
    """Prepare (or reuse) data, train the recipe for opts.minutes, print stories and scores; return the summary.

    The whole run holds --out-dir's lock (fsutil.exclusive_dir), prepare holds --data-dir's too."""
    with exclusive_dir(opts.out_dir, "quickstart"):
        return _quickstart(opts, recipe)


def _quickstart(opts: QuickstartOptions, recipe: Recipe) -> dict:
    src, why = choose_source(opts.source, opts.hub_mb)
    print(why, flush=True)
    meta = prepare(opts.prepare_options(src, recipe.tokenizer))
    out = Path(opts.out_dir)
    state = _read_state(out)
    resume = (not opts.fresh and state.get("status") in ("running", "interrupted")
              and state.get("data_dir") == opts.data_dir and (out / "last.pt").exists())
    if resume:
        print(f"resuming the interrupted quickstart in {out} from step {state.get('step', '?')} "
              "(pass --fresh to start over)", flush=True)
        for key in ("dropout", "weight_decay"):  # the run's own, even if --time (and so the epochs) changed
            if state.get(key) is not None:
                recipe = replace(recipe, **{key: state[key]})
    max_time, train_tokens = opts.minutes * 60, meta["train"]["tokens"]
    cfg = recipe.train_config(opts.data_dir, opts.out_dir, meta["tokenizer"]["vocab_size"], max_time=max_time,
                              train_tokens=train_tokens, seed=opts.seed, sample_every_eval=True,
                              progress=opts.progress, force=not resume, resume=resume)
    print(f"recipe: {recipe.preset}, {meta['tokenizer']['name']}, {cfg.optimizer}, dropout {cfg.model.dropout:g}, "
          f"weight decay {cfg.weight_decay:g} "
          f"(about {recipe.epochs(train_tokens, max_time):.1f} passes over {train_tokens:,} training tokens in "
          f"{opts.minutes:g} min on a 2-core CPU)", flush=True)
    t0 = time.time()
    summary = _train(cfg, out)
    print(f"trained {summary['step']:,} steps, {summary['tokens_seen']:,} tokens in {time.time() - t0:.0f} s "
          f"({summary['stop_reason']})", flush=True)
    _report(out, opts.data_dir, cfg.block_size, stories=3, seed=opts.seed)
    return summary
