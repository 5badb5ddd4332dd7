"""The LM head + loss alone: tinygemma's chunked linear_cross_entropy vs full logits + F.cross_entropy.

The baseline is what transformers' Gemma3ForCausalLM does: `F.linear` to (N, V) logits, `.float()`,
`F.cross_entropy`. Both run forward + backward on the same hidden states, tied weight and targets,
in one process, alternating (so the host's drift hits both), at the two benchmark shapes of
benchmarks/train.py (small: N 2048 = 8 x 256, C 256; 270M-shaped: N 512 = 2 x 256, C 640) and
GPT-2's V = 50,257, in fp32 and under CPU bf16 autocast. Reports the median ms and the ratio.

    python benchmarks/loss.py [--runs 12] [--only fp32|bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from tinygemma.device import keep_freed_memory
from tinygemma.loss import linear_cross_entropy

THREADS = 2
SHAPES = {"small": (2048, 256), "270M-shaped": (512, 640)}  # name: (N rows, C hidden)
VOCAB = 50257


def full_logits(x, w, t):
    return F.cross_entropy(F.linear(x, w).float(), t)


def run(loss_fn, x, w, t, amp) -> float:
    t0 = time.perf_counter()
    with amp():
        loss = loss_fn(x, w, t)
    loss.backward()
    x.grad = w.grad = None
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=12, help="timed runs of each (after 2 warm-up runs)")
    ap.add_argument("--only", choices=["fp32", "bf16"], help="one precision only")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    keep_freed_memory()  # as `tinygemma train` on CPU
    precisions = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    print("| shape | precision | ours (ms) | full logits + F.cross_entropy (ms) | ratio |")
    print("|---|---|---:|---:|---:|")
    for name, (n, c) in SHAPES.items():
        torch.manual_seed(0)
        x = torch.randn(n, c, requires_grad=True)
        w = (0.02 * torch.randn(VOCAB, c)).requires_grad_()
        t = torch.randint(VOCAB, (n,))
        for prec, amp in precisions.items():
            if args.only and prec != args.only:
                continue
            times = {"ours": [], "full": []}
            for i in range(args.runs + 2):
                pair = [("ours", linear_cross_entropy), ("full", full_logits)]
                for key, fn in pair if i % 2 else pair[::-1]:
                    times[key].append(run(fn, x, w, t, amp))
            med = {k: 1000 * statistics.median(v[2:]) for k, v in times.items()}  # the first 2 are warm-up
            print(f"| {name} (N {n}, C {c}) | {prec} | {med['ours']:.0f} | {med['full']:.0f} | "
                  f"{med['full'] / med['ours']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
