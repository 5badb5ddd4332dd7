"""Quality per wall-clock minute: the quickstart recipe against the script a user would write.

Both systems train on the same train file, for the same wall-clock budget, on the same
machine, in this one run, then are scored in bits per byte on the same validation file:

- ours: the `tinygemma quickstart` recipe (src/tinygemma/quickstart.py: RECIPE);
- baseline: transformers' Gemma3ForCausalLM at hidden 128, 4 layers, GPT-2 tokenizer,
  AdamW lr 2e-3 with linear warmup then cosine decay over the same time budget,
  batch 16 x block 128 random windows, trained by a plain PyTorch loop.

Scoring is one code path for both: the baseline's trained weights are loaded into our
Gemma3Model (equal to HF's by tests/unit/test_parity.py; checked again below on a batch)
and both go through tinygemma.evaluate.evaluate_tokens: non-overlapping windows of the
model's training block size over the validation documents, total NLL in bits / UTF-8 bytes.

    python benchmarks/quality.py                 # 10 minutes each, ../shared/data samples
    python benchmarks/quality.py --minutes 2     # a quicker look
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

BASELINE = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                intermediate_size=512, sliding_window=128, query_pre_attn_scalar=32)
BASE_BLOCK, BASE_BATCH, BASE_LR, BASE_WARMUP = 128, 16, 2e-3, 100


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown CPU"


def run_ours(train_file: Path, valid_file: Path, seconds: float, work: Path, seed: int) -> dict:
    from tinygemma.checkpoint import load_model
    from tinygemma.prepare import prepare
    from tinygemma.quickstart import RECIPE
    from tinygemma.train import train

    data = work / "ours_data"
    meta = prepare(str(train_file), val_source=str(valid_file), tokenizer=RECIPE.tokenizer, out=data, quiet=True,
                   progress=False)
    cfg = RECIPE.train_config(str(data), str(work / "ours_model"), meta["tokenizer"]["vocab_size"],
                              max_time=seconds, train_tokens=meta["train"]["tokens"], seed=seed, progress=False)
    t0 = time.time()
    summary = train(cfg)
    wall = time.time() - t0
    model, _, tok = load_model(work / "ours_model")  # best_model_params.pt: the best val loss, as the seed keeps
    last, _, _ = load_model(work / "ours_model" / "last.pt")  # the weights at the end of the budget
    return {"model": model, "last_model": last, "tokenizer": tok, "data": data, "block": RECIPE.block_size,
            "wall": wall, "tokens_seen": summary["tokens_seen"], "params": model.config.n_params,
            "name": f"tinygemma quickstart recipe ({RECIPE.preset}, {RECIPE.tokenizer}, block {RECIPE.block_size})"}


def run_baseline(train_file: Path, valid_file: Path, seconds: float, work: Path, seed: int) -> dict:
    """The plain loop a user would write around transformers' Gemma3ForCausalLM."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from tinygemma.data import load_split
    from tinygemma.prepare import prepare

    data = work / "base_data"
    meta = prepare(str(train_file), val_source=str(valid_file), tokenizer="gpt2", out=data, quiet=True,
                   progress=False)
    train_ids = torch.from_numpy(np.asarray(load_split(data, "train"), dtype=np.int64))
    torch.manual_seed(seed)
    hf_cfg = Gemma3TextConfig(vocab_size=meta["tokenizer"]["vocab_size"], attn_implementation="sdpa",
                              layer_types=["sliding_attention"] * 3 + ["full_attention"], **BASELINE)
    model = Gemma3ForCausalLM(hf_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=BASE_LR, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    step, t0 = 0, time.time()
    while (elapsed := time.time() - t0) < seconds:
        progress = elapsed / seconds
        lr = BASE_LR * min(1.0, (step + 1) / BASE_WARMUP) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        ix = torch.randint(len(train_ids) - BASE_BLOCK - 1, (BASE_BATCH,))
        x = torch.stack([train_ids[i : i + BASE_BLOCK] for i in ix])
        loss = model(input_ids=x, labels=x).loss  # HF shifts the labels itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    wall = time.time() - t0
    ours = to_our_model(model, hf_cfg)
    from tinygemma.tokenizer import load_tokenizer

    return {"model": ours, "tokenizer": load_tokenizer("gpt2"), "data": data, "block": BASE_BLOCK, "wall": wall,
            "tokens_seen": step * BASE_BATCH * BASE_BLOCK, "params": ours.config.n_params,
            "name": "HF Gemma3ForCausalLM, plain loop (d128, 4 layers, gpt2, block 128)"}


def to_our_model(hf_model, hf_cfg):
    """Copy the trained HF weights into our Gemma3Model and check the logits agree."""
    from tinygemma.hf import from_hf_config, from_hf_state_dict
    from tinygemma.model import Gemma3Model

    ours = Gemma3Model(from_hf_config(hf_cfg.to_dict()))
    ours.load_state_dict(from_hf_state_dict(hf_model.state_dict()))
    ours.eval(), hf_model.eval()
    x = torch.randint(0, hf_cfg.vocab_size, (2, 64))
    with torch.no_grad():
        diff = (ours(x)[0] - hf_model(input_ids=x).logits).abs().max().item()
    if diff > 1e-3:
        raise RuntimeError(f"scoring model differs from the trained HF model (max logit diff {diff})")
    return ours


def bits_per_byte(model, data: Path, block: int) -> dict:
    from tinygemma.data import load_split, read_meta
    from tinygemma.evaluate import evaluate_tokens

    meta = read_meta(data)
    tok = meta["tokenizer"]
    start = tok["bos_id"] if tok.get("bos_id") is not None else tok["eot_id"]
    return evaluate_tokens(model, load_split(data, "validation"), meta["validation"]["bytes"], start,
                           block_size=block, batch_size=8)


def score(system: dict, sample_seed: int) -> dict:
    from tinygemma.generate import generate

    ev = bits_per_byte(system["model"], system["data"], system["block"])
    stories = generate(system["model"], system["tokenizer"], ["Once upon a time"] * 2, max_new_tokens=120,
                       temperature=0.8, top_k=200, seed=sample_seed)
    out = {"bpb": ev["bpb"], "loss": ev["loss"], "stories": stories}
    if "last_model" in system:  # without the best-checkpoint selection the baseline does not have
        out["bpb_last"] = bits_per_byte(system["last_model"], system["data"], system["block"])["bpb"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, default=SHARED / "tinystories_train_sample.txt")
    ap.add_argument("--valid", type=Path, default=SHARED / "tinystories_valid_sample.txt")
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget for each system")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    for f in (args.train, args.valid):
        if not f.is_file():
            print(f"error: {f} not found; pass --train/--valid text files", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    seconds = args.minutes * 60
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for runner in (run_ours, run_baseline):
            system = runner(args.train, args.valid, seconds, Path(tmp), args.seed)
            result = score(system, args.seed)
            rows.append({k: v for k, v in system.items() if k not in ("model", "last_model", "tokenizer", "data")}
                        | result)
            print(f"{system['name']}: {result['bpb']:.4f} bpb, {system['tokens_seen'] / system['wall']:,.0f} tok/s, "
                  f"{system['tokens_seen']:,} tokens", flush=True)
    ours, base = rows
    ratio = ours["bpb"] / base["bpb"]
    print(f"\n{time.strftime('%Y-%m-%d')}, {cpu_name()}, {args.threads} threads, {args.minutes:g} min each, "
          f"train {args.train.name}, valid {args.valid.name}\n")
    print("| system | params | val bits/byte | tokens/s | tokens seen |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['bpb']:.4f} | {r['tokens_seen'] / r['wall']:,.0f} | "
              f"{r['tokens_seen']:,} |")
    print(f"\nours / baseline bits per byte: {ratio:.3f} ({(1 - ratio) * 100:.1f}% lower; target >= 25% lower)")
    last = ours["bpb_last"] / base["bpb"]
    print(f"ours at the end of the budget (last.pt, no best-checkpoint selection): {ours['bpb_last']:.4f} bpb, "
          f"{last:.3f} of the baseline ({(1 - last) * 100:.1f}% lower)\n")
    for r in rows:
        print(f"### {r['name']}\n")
        for s in r["stories"]:
            print("> " + " ".join(s.split()) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratio": ratio, "minutes": args.minutes}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
