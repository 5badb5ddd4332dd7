"""Quality per wall-clock minute: the quickstart recipe against two plain Hugging Face loops.

Three systems train on the same story documents, each for the same wall-clock budget, on the
same machine, one after the other in this one run, and are scored the same way:

- ours:   the `tinygemma quickstart` recipe as it is when this runs (quickstart.RECIPE), with
          its best checkpoint (the one the quickstart reports); the last one is scored too;
- peer a: transformers' Gemma3ForCausalLM, d 128 x 4, GPT-2 tokenizer, AdamW lr 2e-3 with linear
          warmup then cosine decay to 10% over the time budget, batch 16 x block 128 random
          windows, in a plain PyTorch loop (the script a user would write);
- peer b: the same loop with the tokenizer a careful user would pick, a 4,096-token byte-level
          BPE trained on the train file (bpe:4096), at d 256 x 6, lr 3e-3.

Data: every system reads the files through `tinygemma prepare` (the default `--doc-split auto`:
TinyStories' own `<|endoftext|>` files give one document per story, paragraphs kept), so all
three see the same documents; the peers then draw random windows from the prepared ids.

Scoring, one evaluator for all: each peer's trained weights are loaded into our Gemma3Model
(after checking its logits agree with the HF model's on a batch), and every system is scored by
`tinygemma.evaluate.evaluate_split` on the whole validation split, in non-overlapping windows
of its own training block size: total NLL in bits / UTF-8 bytes of the validation stories.
Bits per byte compares the different tokenizers. Two sample stories per system come from
tinygemma.generate (temperature 0.8, top-k 200, the same seed).

    python benchmarks/quality.py                  # 10 minutes each (about 32 minutes in all)
    python benchmarks/quality.py --minutes 1      # a quick look
    python benchmarks/quality.py --json           # one JSON object on stdout instead of the table
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (or beside the folder of worktrees it is in)
SHARED = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
              ROOT.parent / "shared" / "data")
TARGETS = {"peer_a": 0.80, "peer_b": 0.90}  # issue 11: ours / peer bits per byte at most this


@dataclass(frozen=True)
class Peer:
    """A plain HF training loop: a Gemma3ForCausalLM shape, a tokenizer and AdamW settings."""

    key: str
    tokenizer: str
    shape: dict
    layer_types: list = field(default_factory=list)
    block: int = 128
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 100

    @property
    def name(self) -> str:
        return (f"HF Gemma3ForCausalLM, plain loop (d{self.shape['hidden_size']} x {self.shape['num_hidden_layers']}, "
                f"{self.tokenizer}, lr {self.lr:g}, batch {self.batch} x block {self.block})")


PEERS = (
    Peer("peer_a", "gpt2", dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
                                head_dim=32, intermediate_size=512, sliding_window=128, query_pre_attn_scalar=32),
         ["sliding_attention"] * 3 + ["full_attention"], lr=2e-3),
    Peer("peer_b", "bpe:4096", dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1,
                                    head_dim=64, intermediate_size=1024, sliding_window=128, query_pre_attn_scalar=64),
         ["sliding_attention"] * 5 + ["full_attention"], lr=3e-3),
)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown CPU"


def say(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def prepare_data(train_file: Path, valid_file: Path, tokenizer: str, out: Path) -> dict:
    from tinygemma.prepare import PrepareOptions, prepare

    return prepare(PrepareOptions(source=str(train_file), val_source=str(valid_file), tokenizer=tokenizer, out=out,
                                  quiet=True, progress=False))


def run_ours(train_file: Path, valid_file: Path, seconds: float, work: Path, seed: int) -> dict:
    from tinygemma.checkpoint import load_model
    from tinygemma.quickstart import RECIPE
    from tinygemma.train import train

    data = work / "ours_data"
    meta = prepare_data(train_file, valid_file, RECIPE.tokenizer, data)
    cfg = RECIPE.train_config(str(data), str(work / "ours_model"), meta["tokenizer"]["vocab_size"],
                              max_time=seconds, train_tokens=meta["train"]["tokens"], seed=seed, progress=False)
    t0 = time.time()
    summary = train(cfg)
    wall = time.time() - t0
    model, _, tok = load_model(work / "ours_model")  # best_model_params.pt: the best val loss, as the seed keeps
    last, _, _ = load_model(work / "ours_model" / "last.pt")  # the weights at the end of the budget
    return {"key": "ours", "model": model, "last_model": last, "tokenizer": tok, "data": data,
            "block": cfg.block_size, "wall": wall, "tokens_seen": summary["tokens_seen"],
            "params": model.config.n_params,
            "name": f"tinygemma quickstart recipe ({cfg.preset}, {meta['tokenizer']['name']}, batch {cfg.batch_size} x "
                    f"block {cfg.block_size}, lr {cfg.lr:g}, dropout {cfg.model.dropout:g})"}


def run_peer(peer: Peer, train_file: Path, valid_file: Path, seconds: float, work: Path, seed: int) -> dict:
    """The plain loop a user would write around transformers' Gemma3ForCausalLM."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from tinygemma.data import load_split
    from tinygemma.tokenizer import load_tokenizer

    data = work / f"{peer.key}_data"
    meta = prepare_data(train_file, valid_file, peer.tokenizer, data)
    train_ids = torch.from_numpy(np.asarray(load_split(data, "train"), dtype=np.int64))
    torch.manual_seed(seed)
    hf_cfg = Gemma3TextConfig(vocab_size=meta["tokenizer"]["vocab_size"], attn_implementation="sdpa",
                              layer_types=peer.layer_types, **peer.shape)
    model = Gemma3ForCausalLM(hf_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=peer.lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    step, t0 = 0, time.time()
    while (elapsed := time.time() - t0) < seconds:
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * elapsed / seconds))
        for group in opt.param_groups:
            group["lr"] = peer.lr * min(1.0, (step + 1) / peer.warmup) * cosine
        ix = torch.randint(len(train_ids) - peer.block - 1, (peer.batch,))
        x = torch.stack([train_ids[i : i + peer.block] for i in ix])
        loss = model(input_ids=x, labels=x).loss  # HF shifts the labels itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    wall = time.time() - t0
    ours = to_our_model(model, hf_cfg)
    return {"key": peer.key, "model": ours, "tokenizer": load_tokenizer(meta["tokenizer"], data), "data": data,
            "block": peer.block, "wall": wall, "tokens_seen": step * peer.batch * peer.block,
            "params": ours.config.n_params, "name": peer.name}


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


def score(system: dict, sample_seed: int) -> dict:
    from tinygemma.evaluate import evaluate_split
    from tinygemma.generate import generate

    ev = evaluate_split(system["model"], system["data"], "validation", block_size=system["block"])
    stories = generate(system["model"], system["tokenizer"], ["Once upon a time"] * 2, max_new_tokens=200,
                       temperature=0.8, top_k=200, seed=sample_seed)
    out = {"bpb": ev["bpb"], "loss": ev["loss"], "val_documents": ev["documents"], "val_bytes": ev["bytes"],
           "stories": stories}
    if "last_model" in system:  # without the best-checkpoint selection the peers do not have
        out["bpb_last"] = evaluate_split(system["last_model"], system["data"], "validation",
                                         block_size=system["block"])["bpb"]
    return out


def report(rows: list[dict], args) -> dict:
    """The markdown table, the ratios against the targets, the stories; returns the JSON summary."""
    ours = rows[0]
    ratios = {r["key"]: ours["bpb"] / r["bpb"] for r in rows[1:]}
    ratios_last = {r["key"]: ours["bpb_last"] / r["bpb"] for r in rows[1:]}
    head = (f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, {args.threads} threads, {args.minutes:g} min each, "
            f"train {args.train.name}, valid {args.valid.name} ({ours['val_documents']:,} stories, "
            f"{ours['val_bytes']:,} bytes)")
    summary = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "threads": args.threads, "minutes": args.minutes,
               "train": str(args.train), "valid": str(args.valid), "ratios": ratios, "ratios_last": ratios_last,
               "targets": TARGETS, "rows": [{k: v for k, v in r.items() if k != "data"} for r in rows]}
    if args.json:
        print(json.dumps(summary, indent=2))
        return summary
    print(f"\n{head}\n")
    print("| system | params | val bits/byte | tokens/s | tokens seen |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['bpb']:.4f} | {r['tokens_seen'] / r['wall']:,.0f} | "
              f"{r['tokens_seen']:,} |")
    print()
    for key, ratio in ratios.items():
        print(f"ours / {key}: {ratio:.3f} (target <= {TARGETS[key]:.2f}: {'met' if ratio <= TARGETS[key] else 'NOT met'}); "
              f"with ours' last checkpoint ({ours['bpb_last']:.4f} bpb): {ratios_last[key]:.3f}")
    for r in rows:
        print(f"\n### {r['name']}\n")
        for s in r["stories"]:
            print("\n".join("> " + line for line in s.strip().split("\n")) + "\n")
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, default=SHARED / "tinystories_train_stories.txt")
    ap.add_argument("--valid", type=Path, default=SHARED / "tinystories_valid_stories.txt")
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget for each system")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object instead of the table")
    args = ap.parse_args()
    for f in (args.train, args.valid):
        if not f.is_file():
            print(f"error: {f} not found; pass --train/--valid text files", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    seconds = args.minutes * 60
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runners = [lambda: run_ours(args.train, args.valid, seconds, Path(tmp), args.seed)]
        runners += [lambda p=p: run_peer(p, args.train, args.valid, seconds, Path(tmp), args.seed) for p in PEERS]
        for run in runners:
            with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines; stdout keeps the results
                system = run()
            result = score(system, args.seed)
            rows.append({k: v for k, v in system.items() if k not in ("model", "last_model", "tokenizer")} | result)
            say(f"{system['name']}: {result['bpb']:.4f} bpb, {system['tokens_seen'] / system['wall']:,.0f} tok/s, "
                f"{system['tokens_seen']:,} tokens")
        for r in rows:
            r["data"] = str(r["data"])
        report(rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
