"""Choose the quickstart's CPU recipe by experiment.

Each candidate recipe (tokenizer, model size, block, batch, learning rate) trains on the
same train file for the same wall-clock budget, on this machine, one after another, and is
scored in bits per byte on the same validation file (tinygemma.evaluate, whole split). The
winner becomes tinygemma.quickstart.RECIPE; the table goes to docs/RECIPES.md.

    python benchmarks/recipes.py --minutes 2.5 --results /tmp/recipes.jsonl

--fixed-tokens trains each recipe for the tokens that its measured 2-core CPU speed
(Recipe.tokens_per_s) gives in --minutes, with the cosine over those steps, instead of for
the wall-clock minutes: the same comparison on a machine that other work shares, or on a GPU
(--device cuda). Its tokens/s column is then the assumed speed, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

sys.path.insert(0, str(ROOT / "benchmarks"))
from quality import cpu_name  # noqa: E402


def candidates():
    """Name -> Recipe. tokens_per_s: each one's measured 2-core CPU speed, used by --fixed-tokens."""
    from tinygemma.quickstart import Recipe

    small = Recipe(tokenizer="bpe:4096", preset="small", block_size=256, batch_size=16, lr=2e-3, min_lr=2e-4,
                   dropout=0.0, tokens_per_s=2_500)
    mini = replace(small, preset="mini", lr=3e-3, min_lr=3e-4, tokens_per_s=9_100)
    mid4 = ["hidden_size=192", "head_dim=48", "intermediate_size=768", "query_pre_attn_scalar=48"]
    mid = ["n_layers=6"] + mid4
    drop = replace(mini, dropout=0.2, tokens_per_s=8_500)  # residual dropout costs ~7% of the speed
    return {
        "small, bpe:4096, lr 2e-3": small,
        "mini, bpe:4096, lr 3e-3": mini,
        "mini, bpe:2048, lr 3e-3": replace(mini, tokenizer="bpe:2048"),
        "mini, bpe:4096, lr 5e-3": replace(mini, lr=5e-3, min_lr=5e-4),
        "mini, bpe:4096, bf16 autocast": replace(mini, dtype="bfloat16"),
        "mini d192 x 6 layers, bpe:4096, lr 3e-3": replace(mini, model_overrides=mid, tokens_per_s=4_250),
        "small, bpe:4096, bf16 autocast": replace(small, dtype="bfloat16"),
        "small, gpt2": replace(small, tokenizer="gpt2"),
        # dropout for the many passes a 1 MB file gets in 10 minutes (docs/RECIPES.md)
        "mini, bpe:4096, dropout 0.2": drop,
        "mini, bpe:4096, dropout 0.3": replace(drop, dropout=0.3),
        "mini, bpe:4096, dropout 0.2, batch 8": replace(drop, batch_size=8),
        "mini d192 x 4 layers, dropout 0.2": replace(drop, model_overrides=mid4, tokens_per_s=5_280),
    }


def run_one(name, recipe, train_file: Path, valid_file: Path, seconds: float, work: Path, fixed_tokens: bool = False,
            device: str = "auto") -> dict:
    from tinygemma.checkpoint import load_model
    from tinygemma.prepare import prepare
    from tinygemma.evaluate import evaluate_split
    from tinygemma.train import train

    data = work / f"data_{recipe.tokenizer.replace(':', '_')}"
    meta = prepare(str(train_file), val_source=str(valid_file), tokenizer=recipe.tokenizer, out=data, quiet=True,
                   progress=False)
    out = work / "model"
    cfg = recipe.train_config(str(data), str(out), meta["tokenizer"]["vocab_size"], max_time=seconds,
                              train_tokens=meta["train"]["tokens"], progress=False, force=True, device=device)
    if fixed_tokens:
        steps = int(recipe.tokens_per_s * seconds) // (recipe.batch_size * recipe.block_size)
        cfg.max_time, cfg.lr_schedule, cfg.max_iters, cfg.lr_decay_iters = None, "steps", steps, steps
    t0 = time.time()
    summary = train(cfg)
    wall = seconds if fixed_tokens else time.time() - t0
    model, _, _ = load_model(out, device=cfg.device if cfg.device != "auto" else "cpu")
    ev = evaluate_split(model, data, "validation", block_size=recipe.block_size, device=model.embed_tokens.weight.device)
    return {"recipe": name, **asdict(recipe), "params": model.config.n_params, "bpb": ev["bpb"],
            "val_loss": ev["loss"], "tokens_seen": summary["tokens_seen"], "tok_per_s": summary["tokens_seen"] / wall,
            "steps": summary["step"], "fixed_tokens": fixed_tokens}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, default=SHARED / "tinystories_train_sample.txt")
    ap.add_argument("--valid", type=Path, default=SHARED / "tinystories_valid_sample.txt")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--only", nargs="*", help="run only these recipe names")
    ap.add_argument("--results", type=Path, default=Path("recipes.jsonl"), help="JSON lines, appended per recipe")
    ap.add_argument("--fixed-tokens", action="store_true",
                    help="train for Recipe.tokens_per_s x --minutes tokens instead of for the wall-clock time")
    ap.add_argument("--device", default="auto", help="with --fixed-tokens: cpu, cuda, ... (default auto)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    done = set()
    if args.results.exists():
        done = {json.loads(line)["recipe"] for line in args.results.read_text().splitlines() if line.strip()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in candidates().items():
            if (args.only and name not in args.only) or name in done:
                continue
            row = run_one(name, recipe, args.train, args.valid, args.minutes * 60, Path(tmp), args.fixed_tokens,
                          args.device)
            with args.results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name}: {row['bpb']:.4f} bpb, {row['tok_per_s']:,.0f} tok/s, {row['tokens_seen']:,} tokens",
                  flush=True)
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    print(f"\n{time.strftime('%Y-%m-%d')}, {cpu_name()}, 2 threads, {args.minutes:g} min each\n")
    print("| recipe | params | val bits/byte | tokens/s | tokens seen |\n|---|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: r["bpb"]):
        print(f"| {r['recipe']} | {r['params'] / 1e6:.2f}M | {r['bpb']:.4f} | {r['tok_per_s']:,.0f} | "
              f"{r['tokens_seen']:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
