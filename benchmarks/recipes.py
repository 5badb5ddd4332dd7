"""Choose the quickstart's CPU recipe by experiment (docs/RECIPES.md).

A candidate is a tokenizer plus `--set`-style overrides of the quickstart's training config.
Every candidate trains on the same story documents and is scored in bits per byte on the whole
validation file by tinygemma.evaluate, at its best checkpoint and at its last.

Two steps, because a 2-core machine is rarely quiet for hours:

    # 1. each candidate's speed relative to the old recipe's: training steps of all of them
    #    interleaved in one process (other work on the machine slows them alike), times the old
    #    recipe's tokens/s in train() measured on a quiet machine (--reference)
    python benchmarks/recipes.py speed --reference 11500 --results speeds.jsonl
    # 2. train each candidate for the tokens that speed gives in --minutes (a token budget, so
    #    other work changes how long a run takes, not its result)
    python benchmarks/recipes.py run --minutes 10 --speeds speeds.jsonl --results runs.jsonl \
        [--fraction 0.25] [--seed 2] [--only NAME ...]

`--fraction F` trains on F of the train file's documents, evenly spaced through it (the data-size axis).
Rows are appended to --results as JSON lines, and a finished (name, fraction, seed, minutes) is skipped,
so an interrupted sweep continues where it stopped. `table` prints a results file as Markdown.
`run --keep DIR` keeps each model; `ensemble --models DIR/a DIR/b ...` scores the average of their
predicted probabilities (how much a committee of runs would gain over one).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SEPARATOR = "<|endoftext|>"

sys.path.insert(0, str(ROOT / "benchmarks"))
from quality import SHARED, cpu_name  # noqa: E402

# The recipe before this sweep (the quickstart's of 2026-11-26: mini, AdamW 3e-3 cosine, dropout 0.2
# for many passes), written as overrides so every candidate is one diff from it.
OLD = ["preset=mini", "block_size=256", "batch_size=16", "lr=3e-3", "min_lr=3e-4", "warmup_iters=50",
       "weight_decay=0.1", "dtype=float32", "model.dropout=0.2"]
MUON = ["optimizer=muon"]
WSD = ["lr_decay=wsd", "min_lr=0", "decay_fraction=0.3"]
BF16 = ["dtype=bfloat16"]
COMPILE = ["compile=true"]


def shape(d: int, layers: int, heads: int = 4) -> list[str]:
    """A mini-like model of width d and depth `layers` (one full layer in each six, the last one)."""
    hd = d // heads
    return [f"model.hidden_size={d}", f"model.n_layers={layers}", f"model.head_dim={hd}",
            f"model.query_pre_attn_scalar={hd}", f"model.intermediate_size={4 * d}"]


def candidates() -> dict[str, dict]:
    """name -> {"tokenizer": spec, "sets": overrides applied after OLD}."""
    c = {"old recipe": []}
    c["bf16"] = BF16
    c["muon"] = MUON
    c["muon, wsd"] = MUON + WSD
    c["muon, wsd, compile"] = MUON + WSD + COMPILE
    best = MUON + WSD + COMPILE + BF16
    c["muon, wsd, compile, bf16"] = best
    for wd in (0.5, 1.0, 2.0, 4.0, 8.0):
        c[f"muon, wsd, compile, bf16, wd {wd}"] = best + [f"weight_decay={wd}"]
    for p in (0.1, 0.3):
        c[f"muon, wsd, compile, bf16, wd 0.5, dropout {p}"] = best + ["weight_decay=0.5", f"model.dropout={p}"]
    for d, layers in ((128, 6), (192, 4), (256, 4), (256, 6)):
        c[f"muon, wsd, compile, bf16, wd 0.5, d{d} x {layers}"] = best + ["weight_decay=0.5"] + shape(d, layers)
    c["muon, wsd, compile, bf16, wd 1.0, d128 x 6"] = best + ["weight_decay=1.0"] + shape(128, 6)
    c["muon, wsd, compile, bf16, wd 4.0, d128 x 6"] = best + ["weight_decay=4.0"] + shape(128, 6)
    c["muon, wsd, compile, bf16, wd 4.0, dropout 0.1"] = best + ["weight_decay=4.0", "model.dropout=0.1"]
    c["muon, wsd, compile, bf16, wd 2.0, lr 6e-3"] = best + ["weight_decay=2.0", "lr=6e-3"]
    c["muon, wsd, compile, bf16, wd 4.0, decay 0.5"] = best + ["weight_decay=4.0", "decay_fraction=0.5"]
    wd4 = best + ["weight_decay=4.0"]
    c["muon, wsd, compile, bf16, wd 4.0, window 256"] = wd4 + ["model.sliding_window=256"]  # every layer sees the block
    c["muon, wsd, compile, bf16, wd 4.0, adamw lr 1e-2"] = wd4 + ["lr=1e-2", "muon_lr=3e-3"]  # embedding and norms
    c["muon, wsd, compile, bf16, wd 4.0, adamw lr 1e-3"] = wd4 + ["lr=1e-3", "muon_lr=3e-3"]
    c["muon, wsd, compile, bf16, wd 4.0, muon lr 6e-3"] = wd4 + ["muon_lr=6e-3"]
    c["muon, wsd, compile, bf16, wd 4.0, dropout 0.3"] = wd4 + ["model.dropout=0.3"]
    c["muon, wsd, compile, bf16, wd 4.0, d192 x 4"] = wd4 + shape(192, 4)
    c["muon, wsd, compile, bf16, wd 4.0, 8 x 512"] = wd4 + ["batch_size=8", "block_size=512"]  # longer context, same tokens/step
    c["muon, wsd, compile, bf16, wd 4.0, 8 x 256"] = wd4 + ["batch_size=8"]  # twice the steps
    c["muon, wsd, compile, bf16, wd 2.0, 8 x 512"] = best + ["weight_decay=2.0", "batch_size=8", "block_size=512"]
    for wd in (8.0, 16.0):  # the data-size axis: more passes over less text
        c[f"muon, wsd, compile, bf16, wd {wd}, 8 x 512"] = best + [f"weight_decay={wd}", "batch_size=8", "block_size=512"]
    c["muon, wsd, compile, bf16, wd 2.0, 8 x 512, dropout 0.3"] = best + ["weight_decay=2.0", "batch_size=8",
                                                                          "block_size=512", "model.dropout=0.3"]
    c["muon, wsd, compile, bf16, wd 4.0, 4 x 1024"] = wd4 + ["batch_size=4", "block_size=1024"]
    c["muon, wsd, compile, bf16, wd 4.0, 8 x 512, window 512"] = wd4 + ["batch_size=8", "block_size=512",
                                                                         "model.sliding_window=512"]
    out = {name: {"tokenizer": "bpe:4096", "sets": OLD + sets} for name, sets in c.items()}
    # the training stories tokenized 16 times, 15 of them with BPE dropout 0.1 (an augmentation of the ids)
    out["muon, wsd, compile, bf16, wd 4.0, bpe-dropout 0.1 x 16"] = {"tokenizer": "bpe:4096", "sets": OLD + wd4,
                                                                   "bpe_dropout": (0.1, 16)}
    for vocab in (1024, 2048):  # the same recipe on a smaller vocabulary (speed class: the bpe:4096 one's, a floor)
        out[f"muon, wsd, compile, bf16, wd 4.0, bpe:{vocab}"] = {"tokenizer": f"bpe:{vocab}",
                                                                 "sets": OLD + best + ["weight_decay=4.0"]}
    for wd in (2.0, 4.0, 8.0, 16.0):  # the data-size axis: a vocabulary the text can fill
        for vocab in (512, 1024, 2048):
            out[f"muon, wsd, compile, bf16, wd {wd}, 8 x 512, bpe:{vocab}"] = {
                "tokenizer": f"bpe:{vocab}", "sets": OLD + best + [f"weight_decay={wd}", "batch_size=8", "block_size=512"]}
    return out


def speed_class(sets: list[str]) -> str:
    """Candidates whose speed is the same: everything but the optimizer's numbers and the schedule."""
    keep = ("preset", "block_size", "batch_size", "dtype", "compile", "model.hidden_size", "model.n_layers",
            "model.head_dim", "model.intermediate_size", "optimizer")
    last = {s.split("=")[0]: s for s in sets}
    dropout = float(last.get("model.dropout", "model.dropout=0").split("=")[1]) > 0
    return ",".join(last[k] for k in keep if k in last) + f",dropout={dropout}"


def write_fraction(src: Path, fraction: float, out: Path) -> int:
    """`fraction` of `src`'s SEPARATOR-separated documents, evenly spaced through the file (every fourth for
    0.25), in the same format; returns their count. Not the first ones: the story file's style drifts along
    it (stories 750-850 are about twice as long, with 8-11 paragraphs, like the validation stories), so its first
    quarter or half is another distribution as well as less text."""
    docs = [d.strip() for d in src.read_text(encoding="utf-8").split(SEPARATOR) if d.strip()]
    n = max(1, round(len(docs) * fraction))
    keep = [docs[int(i * len(docs) / n)] for i in range(n)]
    out.write_text(f"\n{SEPARATOR}\n".join(keep) + "\n", encoding="utf-8")
    return len(keep)


def prepared(tokenizer: str, train_file: Path, valid_file: Path, work: Path,
             bpe_dropout: tuple[float, int] | None = None) -> tuple[Path, dict]:
    from tinygemma.prepare import PrepareOptions, prepare

    data = work / f"data_{tokenizer.replace(':', '_')}_{train_file.stem}"
    if bpe_dropout:
        data = data.with_name(f"{data.name}_bpe_dropout_{bpe_dropout[0]:g}_x{bpe_dropout[1]}")
    meta = prepare(PrepareOptions(source=str(train_file), val_source=str(valid_file), tokenizer=tokenizer, out=data,
                                  quiet=True, progress=False, doc_split=SEPARATOR))
    if bpe_dropout:
        meta = augment_bpe_dropout(data, meta, *bpe_dropout)
    return data, meta


def augment_bpe_dropout(data: Path, meta: dict, p: float, copies: int) -> dict:
    """Replace train.bin by `copies` tokenizations of its documents: the canonical one, then copies - 1 with
    the BPE's merges dropped at rate p (tokenizers' BPE dropout). Validation keeps the canonical ids."""
    import numpy as np

    from tinygemma.data import load_split, pack
    from tinygemma.fsutil import atomic_write_json
    from tinygemma.tokenizer import load_tokenizer

    if meta["train"].get("bpe_dropout"):  # prepare found the folder up to date: already augmented
        return meta
    tok, t = load_tokenizer(meta["tokenizer"], data), meta["tokenizer"]
    ids = np.asarray(load_split(data, "train"), dtype=np.int64)
    ends = np.flatnonzero(ids == t["eot_id"])
    starts = np.r_[0, ends[:-1] + 1] + (t["bos_id"] is not None)
    docs = [tok.decode(ids[a:b]) for a, b in zip(starts, ends)]
    bpe = tok._tok.model  # the Rust BPE model behind an HFTokenizer: its dropout rate is a settable attribute
    parts = [ids]
    for _ in range(copies - 1):
        bpe.dropout = p
        parts.append(pack(((e, True, True) for e in tok.encode_batch(docs)), t["bos_id"], t["eot_id"]))
        bpe.dropout = None
    out = np.concatenate(parts).astype(meta["dtype"])
    out.tofile(data / "train.bin")
    meta["train"] = {**meta["train"], "tokens": int(len(out)), "bpe_dropout": [p, copies]}
    atomic_write_json(data / "meta.json", meta)
    return meta


def config(cand: dict, data: Path, out: Path, seed: int, **flags):
    """The candidate's TrainConfig: the shared settings, then its overrides, resolved as `tinygemma train` does."""
    from tinygemma.runconfig import resolve_config

    common = ["eval_interval=100", "eval_windows=32", "checkpoint_interval=100", "sample_every_eval=true"]
    return resolve_config(sets=common + cand["sets"], flags={"data_dir": str(data), "out_dir": str(out), "seed": seed,
                                                             "progress": False, "force": True, **flags})


def _stepper(cand: dict, data: Path, work: Path):
    """A closure running one real training step (train.train_step) of this candidate, and its tokens per step."""
    from tinygemma.data import BatchSampler
    from tinygemma.device import autocast_context, compile_model
    from tinygemma.distributed import DistInfo
    from tinygemma.model import Gemma3Model
    from tinygemma.optim import build_optimizer
    from tinygemma.train import train_step

    cfg = config(cand, data, work / "speed", seed=1337)
    torch.manual_seed(cfg.seed)
    model, device = Gemma3Model(cfg.model), torch.device("cpu")
    if cfg.compile:
        compile_model(model, per_block=True)
    opt = build_optimizer(model, cfg, device)
    sampler = BatchSampler(cfg.data_dir, "train", cfg.block_size, cfg.batch_size, seed=cfg.seed)
    amp = autocast_context(cfg, device)
    step = lambda: train_step(model, opt, sampler, cfg, amp, DistInfo(), device, cfg.lr)  # noqa: E731
    return step, cfg.batch_size * cfg.block_size * cfg.grad_accum


def speed_rows(cands: dict, train_file: Path, valid_file: Path, work: Path, steps: int, reference: float) -> list:
    """Steps of every speed class, interleaved round-robin in this one process, so that other work on the
    machine slows them all alike. Each class's tokens per median step, relative to the old recipe's, scales
    `reference` (the old recipe's tokens/s measured on a quiet machine) into its tokens/s."""
    classes = {}
    for name, cand in cands.items():
        classes.setdefault(speed_class(cand["sets"]), (name, cand))
    steppers, step_tokens = {}, {}
    for c, (name, cand) in classes.items():
        data, _ = prepared(cand["tokenizer"], train_file, valid_file, work, cand.get("bpe_dropout"))
        steppers[c], step_tokens[c] = _stepper(cand, data, work)
        for _ in range(5):  # warm-up (and compilation)
            steppers[c]()
    times = {c: [] for c in classes}
    for _ in range(steps):
        for c, step in steppers.items():
            t0 = time.perf_counter()
            step()
            times[c].append(time.perf_counter() - t0)
    median = {c: sorted(v)[len(v) // 2] for c, v in times.items()}
    rate = {c: step_tokens[c] / median[c] for c in classes}
    base = rate[speed_class(OLD)]
    return [{"name": classes[c][0], "class": c, "tok_per_s": reference * rate[c] / base,
             "step_ms": median[c] * 1e3, "relative": rate[c] / base, "reference": reference, "steps": steps,
             "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name()} for c in classes]


def run_one(name: str, cand: dict, train_file: Path, valid_file: Path, work: Path, tokens: int, seed: int,
            keep: Path | None = None) -> dict:
    from tinygemma.checkpoint import load_model
    from tinygemma.config import updated
    from tinygemma.evaluate import evaluate_split
    from tinygemma.train import train

    data, meta = prepared(cand["tokenizer"], train_file, valid_file, work, cand.get("bpe_dropout"))
    out = work / "model"
    cfg = config(cand, data, out, seed)
    steps = max(1, tokens // (cfg.batch_size * cfg.block_size))
    cfg = updated(cfg, {"max_iters": steps, "lr_decay_iters": steps, "lr_schedule": "steps", "max_time": None})
    t0 = time.time()
    summary = train(cfg)
    wall = time.time() - t0
    scores = {}
    for which, path in (("best", out), ("last", out / "last.pt")):
        model, _, _ = load_model(path)
        ev = evaluate_split(model, data, "validation", block_size=cfg.block_size)
        scores[which] = ev["bpb"]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best_step = min((r for r in history if r.get("val_loss") is not None), key=lambda r: r["val_loss"])["step"]
    if keep is not None:  # the model folder (best and last weights, metrics), and the data it was scored on
        shutil.copytree(out, keep / "model", dirs_exist_ok=True)
        shutil.copytree(data, keep / "data", dirs_exist_ok=True)
    return {"name": name, "sets": cand["sets"], "tokenizer": cand["tokenizer"], "seed": seed,
            "train_tokens": meta["train"]["tokens"], "train_docs": meta["train"]["documents"],
            "params": cfg.model.n_params, "tokens_seen": summary["tokens_seen"], "steps": summary["step"],
            "passes": summary["tokens_seen"] / meta["train"]["tokens"], "bpb_best": scores["best"],
            "bpb_last": scores["last"], "best_step": best_step, "wall_s": round(wall),
            "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name()}


@torch.no_grad()
def ensemble_bpb(model_dirs: list[Path], data_dir: Path, block_size: int, batch_size: int = 8) -> dict:
    """Bits per byte on data_dir's validation split of the models' averaged next-token probabilities
    (log of the mean of p over the models), read in the evaluator's windows (tinygemma.evaluate), and
    each model's own figure from the same pass."""
    from tinygemma.checkpoint import load_model
    from tinygemma.data import load_split, read_meta, start_token
    from tinygemma.evaluate import scored_batches

    meta = read_meta(data_dir)
    models = [load_model(d)[0].eval() for d in model_dirs]
    start = start_token(meta["tokenizer"].get("bos_id"), meta["tokenizer"]["eot_id"])
    _, batches = scored_batches(load_split(data_dir, "validation"), start, block_size, batch_size, block_size)
    each, total = [0.0] * len(models), 0.0
    for x, y in batches:
        keep = y != -1
        logp = torch.stack([m(x)[0].float().log_softmax(-1)[keep].gather(-1, y[keep][:, None])[:, 0] for m in models])
        each = [e - float(lp.double().sum()) for e, lp in zip(each, logp)]
        mixed = torch.logsumexp(logp.double(), 0) - math.log(len(models))
        total -= float(mixed.sum())
    n_bytes = meta["validation"]["bytes"]
    return {"bpb": total / math.log(2) / n_bytes, "each": [e / math.log(2) / n_bytes for e in each]}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def table(rows: list[dict]) -> str:
    lines = ["| recipe | fraction | minutes | seed | params | val bpb, best | at the end | tokens | passes | best at step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (-r.get("fraction", 1), r["bpb_best"])):
        first = " (first)" if r.get("sample") == "first" else ""  # rows of 2026-12-08 before write_fraction spread them
        lines.append(f"| {r['name']} | {r.get('fraction', 1):g}{first} | {r.get('minutes', 10):g} | {r['seed']} | "
                     f"{r['params'] / 1e6:.2f}M | "
                     f"{r['bpb_best']:.4f} | {r['bpb_last']:.4f} | {r['tokens_seen'] / 1e6:.2f}M | "
                     f"{r['passes']:.1f} | {r['best_step']} of {r['steps']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["speed", "run", "table", "ensemble"])
    ap.add_argument("--train", type=Path, default=SHARED / "tinystories_train_stories.txt")
    ap.add_argument("--valid", type=Path, default=SHARED / "tinystories_valid_stories.txt")
    ap.add_argument("--minutes", type=float, default=10.0, help="run: the budget whose tokens each candidate gets")
    ap.add_argument("--steps", type=int, default=20, help="speed: interleaved steps per speed class")
    ap.add_argument("--reference", type=float, default=11_500.0,
                    help="speed: the old recipe's tokens/s in train() on a quiet machine (measured: docs/RECIPES.md)")
    ap.add_argument("--speeds", type=Path, default=Path("speeds.jsonl"), help="run: speeds measured by `speed`")
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="run: train on this fraction of the documents, evenly spaced through the file")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--only", nargs="*", help="these candidate names only")
    ap.add_argument("--results", type=Path, default=Path("recipes.jsonl"), help="JSON lines, appended")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", type=Path, nargs="*", help="ensemble: folders kept by `run --keep`")
    ap.add_argument("--keep", type=Path, help="run: keep each model and its data under KEEP/<name>-f<fraction>even-s<seed>-m<minutes>")
    args = ap.parse_args()
    if args.mode == "table":
        print(table(read_rows(args.results)))
        return 0
    if args.mode == "ensemble":  # the kept runs' best weights, on the first one's data (one tokenizer)
        torch.set_num_threads(args.threads)
        block = json.loads((args.models[0] / "model" / "config.json").read_text())["train"]["block_size"]
        out = ensemble_bpb([m / "model" for m in args.models], args.models[0] / "data", block)
        print(f"{len(args.models)} models: each {', '.join(f'{b:.4f}' for b in out['each'])}; "
              f"their averaged probabilities {out['bpb']:.4f} bits per byte")
        return 0
    torch.set_num_threads(args.threads)
    cands = {n: c for n, c in candidates().items() if not args.only or n in args.only}
    done = read_rows(args.results)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_file = args.train
        if args.mode == "run" and args.fraction < 1:
            train_file = work / f"train_{args.fraction:g}.txt"
            write_fraction(args.train, args.fraction, train_file)
        speeds = {r["class"]: r["tok_per_s"] for r in read_rows(args.speeds)}
        if args.mode == "speed":
            known = {r["class"] for r in done}
            todo = {n: c for n, c in cands.items() if speed_class(c["sets"]) not in known}
            todo.setdefault("old recipe", candidates()["old recipe"])  # the reference every class is timed against
            with args.results.open("a") as f:
                for row in speed_rows(todo, train_file, args.valid, work, args.steps, args.reference):
                    print(f"{row['name']}: {row['relative']:.2f}x the old recipe's speed, {row['tok_per_s']:,.0f} tokens/s",
                          flush=True)
                    f.write(json.dumps(row) + "\n")
            return 0
        for name, cand in cands.items():
            if any(r["name"] == name and r["fraction"] == args.fraction and r["seed"] == args.seed
                   and r.get("minutes", 10.0) == args.minutes and r.get("sample", "even") == "even" for r in done):
                continue
            speed = speeds.get(speed_class(cand["sets"]))
            if speed is None:
                print(f"{name}: no speed measured for {speed_class(cand['sets'])}; run `speed` first", flush=True)
                continue
            tokens = math.floor(speed * args.minutes * 60)
            keep = None
            if args.keep:
                keep = args.keep / f"{re.sub(r'[^a-z0-9.]+', '-', name.lower())}-f{args.fraction:g}even-s{args.seed}-m{args.minutes:g}"
            row = {**run_one(name, cand, train_file, args.valid, work, tokens, args.seed, keep),
                   "fraction": args.fraction, "sample": "even", "assumed_tok_per_s": speed, "minutes": args.minutes}
            print(f"{name} (fraction {args.fraction:g}, seed {args.seed}): best {row['bpb_best']:.4f}, "
                  f"last {row['bpb_last']:.4f} bpb, {row['passes']:.1f} passes", flush=True)
            with args.results.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
