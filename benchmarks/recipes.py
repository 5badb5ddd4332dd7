"""Choose the quickstart's CPU recipe by experiment.

Each candidate recipe (tokenizer, model size, block, batch, learning rate) trains on the
same train file for the same wall-clock budget, on this machine, one after another, and is
scored in bits per byte on the same validation file (tinygemma.evaluate, whole split). The
winner becomes tinygemma.quickstart.RECIPE; the table goes to docs/RECIPES.md.

    python benchmarks/recipes.py --minutes 2.5 --results /tmp/recipes.jsonl
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
    from tinygemma.quickstart import Recipe

    small = Recipe(tokenizer="bpe:4096", preset="small", block_size=256, batch_size=16, lr=2e-3, min_lr=2e-4)
    mini = replace(small, preset="mini", lr=3e-3, min_lr=3e-4)
    mid = ["n_layers=6", "hidden_size=192", "head_dim=48", "intermediate_size=768", "query_pre_attn_scalar=48"]
    return {
        "small, bpe:4096, lr 2e-3": small,
        "mini, bpe:4096, lr 3e-3": mini,
        "mini, bpe:2048, lr 3e-3": replace(mini, tokenizer="bpe:2048"),
        "mini, bpe:4096, lr 5e-3": replace(mini, lr=5e-3, min_lr=5e-4),
        "mini, bpe:4096, bf16 autocast": replace(mini, dtype="bfloat16"),
        "mini d192 x 6 layers, bpe:4096, lr 3e-3": replace(mini, model_overrides=mid),
        "small, bpe:4096, bf16 autocast": replace(small, dtype="bfloat16"),
        "small, gpt2": replace(small, tokenizer="gpt2"),
    }


def run_one(name, recipe, train_file: Path, valid_file: Path, seconds: float, work: Path) -> dict:
    from tinygemma.checkpoint import load_model
    from tinygemma.data import prepare
    from tinygemma.evaluate import evaluate_split
    from tinygemma.train import train

    data = work / f"data_{recipe.tokenizer.replace(':', '_')}"
    meta = prepare(str(train_file), val_source=str(valid_file), tokenizer=recipe.tokenizer, out=data, quiet=True,
                   progress=False)
    out = work / "model"
    cfg = recipe.train_config(str(data), str(out), meta["tokenizer"]["vocab_size"], max_time=seconds,
                              progress=False, force=True)
    t0 = time.time()
    summary = train(cfg)
    wall = time.time() - t0
    model, _, _ = load_model(out)
    ev = evaluate_split(model, data, "validation", block_size=recipe.block_size)
    return {"recipe": name, **asdict(recipe), "params": model.config.n_params, "bpb": ev["bpb"],
            "val_loss": ev["loss"], "tokens_seen": summary["tokens_seen"], "tok_per_s": summary["tokens_seen"] / wall,
            "steps": summary["step"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, default=SHARED / "tinystories_train_sample.txt")
    ap.add_argument("--valid", type=Path, default=SHARED / "tinystories_valid_sample.txt")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--only", nargs="*", help="run only these recipe names")
    ap.add_argument("--results", type=Path, default=Path("recipes.jsonl"), help="JSON lines, appended per recipe")
    args = ap.parse_args()
    torch.set_num_threads(2)
    done = set()
    if args.results.exists():
        done = {json.loads(line)["recipe"] for line in args.results.read_text().splitlines() if line.strip()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in candidates().items():
            if (args.only and name not in args.only) or name in done:
                continue
            row = run_one(name, recipe, args.train, args.valid, args.minutes * 60, Path(tmp))
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
