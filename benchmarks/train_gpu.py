"""GPU training-step speed: tinygemma vs transformers' Gemma3ForCausalLM (sdpa), bf16, one CUDA card.

Same shape and initial weights, the same pre-drawn batches, the same fused AdamW (lr 1e-3, betas
0.9/0.95, weight decay 0.1 on matrices only, grad clip 1.0), bf16 autocast and TF32, in one process,
one variant after another (peak memory is reset between them). Variants: each side eager and under
torch.compile. Reports ms/step, tokens/s, MFU (6 x params + attention FLOPs per token against the
card's dense bf16 peak, tinygemma.metrics) and peak allocated memory, plus the ratio to HF eager.
Also says which SDPA backends accept the model's attention shape (flash needs head_dim <= 256).

    python benchmarks/train_gpu.py --data DIR [--preset gemma3-270m --batch 64 --block 512 --steps 20]

DIR is a folder from `tinygemma prepare` (its vocabulary sets the head's size).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import _Batches, _hf_model, _hf_step  # noqa: E402  (the CPU benchmark's pieces: the same baseline)


def sdpa_backends(cfg, device) -> dict:
    """Which SDPA kernels run the model's causal GQA attention shape in bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, cfg.n_heads, 512, cfg.head_dim, device=device, dtype=torch.bfloat16)
    kv = torch.randn(2, cfg.n_kv_heads, 512, cfg.head_dim, device=device, dtype=torch.bfloat16)
    out = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        try:
            with sdpa_kernel(getattr(SDPBackend, name)):
                torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
            out[name] = "ok"
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            out[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return out


def measure(variant: str, cfg, batches, warmup: int, steps: int, device) -> dict:
    from tinygemma.config import TrainConfig
    from tinygemma.distributed import DistInfo
    from tinygemma.metrics import flops_per_token, peak_flops, peak_memory_mb
    from tinygemma.model import Gemma3Model
    from tinygemma.optim import build_optimizer
    from tinygemma.train import train_step

    B, T = batches[0][0].shape
    tcfg = TrainConfig(lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.1, grad_clip=1.0, batch_size=B, block_size=T)
    torch.manual_seed(0)
    ours = Gemma3Model(cfg)
    model = _hf_model(cfg, ours.state_dict()) if variant.startswith("hf") else ours
    model.to(device)
    if variant.endswith("compile"):
        model.compile()
    opt = build_optimizer(model, tcfg, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    data = _Batches(batches)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    for _ in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        if variant.startswith("hf"):
            losses.append(_hf_step(model, opt, amp, *data.next_batch()))
        else:
            losses.append(train_step(model, opt, data, tcfg, amp, DistInfo(), device, 1e-3)[0])
        sync()
        times.append(time.perf_counter() - t0)
    timed = sorted(times[warmup:])
    ms = 1000 * timed[len(timed) // 2]
    tok_s = B * T / ms * 1000
    peak = peak_flops(device)
    result = {"variant": variant, "ms_per_step": round(ms, 2), "tok_per_s": round(tok_s),
              "mfu": round(tok_s * flops_per_token(cfg, T) / peak, 4) if peak else None,
              "peak_mem_gb": round(peak_memory_mb(device) / 2**10, 2),
              "first_step_s": round(times[0], 1), "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
              "params": cfg.n_params, "batch": B, "block": T}
    del model, ours, opt
    if cuda:
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared data folder (tinygemma prepare)")
    ap.add_argument("--preset", default="gemma3-270m")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--variants", default="ours,hf,ours+compile,hf+compile")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--device", default="cuda", help="cuda (the point); cpu only to smoke-test this script")
    args = ap.parse_args()

    from tinygemma.config import model_preset
    from tinygemma.data import BatchSampler, read_meta

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = model_preset(args.preset, read_meta(args.data)["tokenizer"]["vocab_size"])
    sampler = BatchSampler(args.data, "train", args.block, args.batch, seed=0, device=args.device)
    batches = [sampler.next_batch() for _ in range(args.warmup + args.steps)]
    header = {"card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "preset": args.preset,
              "sdpa": sdpa_backends(cfg, device) if device.type == "cuda" else {}}
    print(json.dumps(header), flush=True)
    results = []
    for v in args.variants.split(","):
        try:
            r = measure(v, cfg, batches, args.warmup, args.steps, device)
        except Exception as e:  # noqa: BLE001 - one failing variant should not hide the others
            r = {"variant": v, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        print(json.dumps(r), flush=True)
        results.append(r)
    base = next((r for r in results if r["variant"] == "hf" and "ms_per_step" in r), None)
    print(f"\n{time.strftime('%Y-%m-%d')}, {header['card']}, torch {header['torch']}, bf16 autocast, "
          f"{args.preset}, batch {args.batch} x block {args.block}\n")
    print("| variant | ms/step | tokens/s | MFU | peak memory (GB) | first step (s) | vs HF eager |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['variant']} | failed: {r['error']} | | | | | |")
            continue
        ratio = f"{base['ms_per_step'] / r['ms_per_step']:.2f}x" if base else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"| {r['variant']} | {r['ms_per_step']:.1f} | {r['tok_per_s']:,} | {mfu} | {r['peak_mem_gb']:.1f} | "
              f"{r['first_step_s']:.1f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=1))


if __name__ == "__main__":
    main()
