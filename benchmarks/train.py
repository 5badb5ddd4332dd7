"""Training-step speed: tinygemma vs transformers' Gemma3ForCausalLM (sdpa), same conditions.

Same model shape and initial weights, same batches from the same prepared data, same AdamW
(lr 1e-3, betas 0.9/0.95, weight decay 0.1 on matrices only, grad clip 1.0), fp32, CPU,
torch.set_num_threads(THREADS). Each measurement runs in a fresh spawned process (so peak RSS
is per model) and the variants alternate within one invocation. HF gets `shift_labels=y`, so
both predict the same T targets per row. Ours runs as `tinygemma train` does on CPU, with
`device.keep_freed_memory()`; `--hf-heap` adds a row where HF gets that allocator setting too.
Prints a markdown table with the ratio.

    flock /tmp/tinygemma-cpu.lock python benchmarks/train.py [--quick] [--compile] [--bf16] [--hf-heap]
    python benchmarks/train.py --interleaved 10   # one process, steps alternating: the drift-proof ratio
    python benchmarks/train.py --interleaved 10 --bf16   # the same, both under CPU bf16 autocast

Data: the shared TinyStories sample tokenised with GPT-2 when /work/shared/data has it,
otherwise random GPT-2-range ids (speed does not depend on the token values).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

THREADS = 2
SHARED = Path("/work/shared/data")
SIZES = {  # name: (preset, batch, block, warmup steps, timed steps)
    "small": ("small", 8, 256, 3, 8),
    "270M-shaped": ("gemma3-270m", 2, 256, 2, 5),
}


def prepare_data(folder: Path) -> str:
    from tinygemma.data import write_prepared
    from tinygemma.prepare import PrepareOptions, prepare

    train_txt, val_txt = SHARED / "tinystories_train_sample.txt", SHARED / "tinystories_valid_sample.txt"
    if train_txt.exists() and val_txt.exists():
        prepare(PrepareOptions(source=str(train_txt), val_source=str(val_txt), tokenizer="gpt2", out=folder,
                               quiet=True))
        return "TinyStories sample (GPT-2 tokens)"
    rng = np.random.default_rng(0)
    ids = {split: rng.integers(0, 50257, n) for split, n in (("train", 400_000), ("validation", 50_000))}
    write_prepared(folder, ids, {"name": "gpt2", "fingerprint": "random", "vocab_size": 50257, "eot_id": 50256,
                                 "bos_id": None}, bytes_per_token=4)
    return "random GPT-2 ids"


class _Batches:
    """A sampler stand-in that replays pre-drawn batches, so both models see identical data."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next_batch(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b


def _setup(size: str, data_dir: str, n_batches: int):
    """In the measuring process: threads, the model config, the optimiser settings, the batches, our model."""
    import torch

    from tinygemma.config import TrainConfig, model_preset
    from tinygemma.data import BatchSampler
    from tinygemma.model import Gemma3Model

    torch.set_num_threads(THREADS)
    preset, batch, block, _, _ = SIZES[size]
    cfg = model_preset(preset, 50257)
    tcfg = TrainConfig(lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.1, grad_clip=1.0, batch_size=batch, block_size=block)
    sampler = BatchSampler(data_dir, "train", block, batch, seed=0)
    batches = [sampler.next_batch() for _ in range(n_batches)]
    torch.manual_seed(0)
    return cfg, tcfg, batches, Gemma3Model(cfg)


def measure(variant: str, size: str, data_dir: str) -> dict:
    """Runs in a fresh process: build the model, run warmup + timed steps, report speed and peak RSS."""
    import torch

    from tinygemma.distributed import DistInfo
    from tinygemma.device import compile_model, keep_freed_memory
    from tinygemma.optim import build_optimizer
    from tinygemma.train import train_step

    if not variant.startswith("hf") or "heap" in variant:
        keep_freed_memory()  # what `tinygemma train` does on CPU; "hf heap" gives the baseline the same
    _, batch, block, warmup, steps = SIZES[size]
    cfg, tcfg, batches, ours = _setup(size, data_dir, warmup + steps)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if variant.endswith("bf16") else _null()
    if variant.startswith("hf"):
        model = _hf_model(cfg, ours.state_dict())
        del ours
    else:
        model = ours
        if variant.startswith("ours+compile"):
            compile_model(model, per_block=True)  # what `tinygemma train --compile` does on CPU
    opt = build_optimizer(model, tcfg, torch.device("cpu"))
    data = _Batches(batches)
    losses, times = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        if variant.startswith("hf"):
            losses.append(_hf_step(model, opt, amp, *data.next_batch()))
        else:
            losses.append(train_step(model, opt, data, tcfg, amp, DistInfo(), torch.device("cpu"), 1e-3)[0])
        times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times[warmup:]))
    return {"variant": variant, "size": size, "ms_per_step": ms, "tok_per_s": batch * block / ms * 1000,
            "first_loss": losses[0], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "first_step_s": times[0], "params": cfg.n_params, "batch": batch, "block": block}


def interleaved(size: str, data_dir: str, steps: int, bf16: bool = False) -> dict:
    """Both models in one process, one step each in turn, with the same allocator setting (and precision).

    This machine's speed drifts by 10-20% over minutes (a shared VM), which separate processes
    see as noise in the ratio; alternating single steps puts ours and HF under the same drift.
    """
    import torch

    from tinygemma.distributed import DistInfo
    from tinygemma.device import keep_freed_memory
    from tinygemma.optim import build_optimizer
    from tinygemma.train import train_step

    keep_freed_memory()
    warmup = SIZES[size][3]
    cfg, tcfg, batches, ours = _setup(size, data_dir, warmup + steps)
    hf = _hf_model(cfg, ours.state_dict())
    opt_ours, opt_hf = build_optimizer(ours, tcfg, torch.device("cpu")), build_optimizer(hf, tcfg, torch.device("cpu"))
    data = _Batches(batches)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else _null
    t_ours, t_hf = [], []
    for i in range(warmup + steps):
        x, y = batches[i]
        t0 = time.perf_counter()
        train_step(ours, opt_ours, data, tcfg, amp(), DistInfo(), torch.device("cpu"), 1e-3)
        t1 = time.perf_counter()
        _hf_step(hf, opt_hf, amp(), x, y)
        t2 = time.perf_counter()
        if i >= warmup:
            t_ours.append(t1 - t0)
            t_hf.append(t2 - t1)
    ours_ms, hf_ms = 1000 * float(np.median(t_ours)), 1000 * float(np.median(t_hf))
    step_ratios = np.array(t_hf) / np.array(t_ours)
    return {"size": size, "precision": "bf16 autocast" if bf16 else "fp32", "steps": steps,
            "ours_ms": ours_ms, "hf_ms": hf_ms, "ratio": hf_ms / ours_ms, "step_ratio_min": float(step_ratios.min()), "step_ratio_max": float(step_ratios.max())}


def _null():
    import contextlib

    return contextlib.nullcontext()


def _hf_model(cfg, state_dict):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from tinygemma.hf import to_hf_config, to_hf_state_dict

    hf_cfg = {k: v for k, v in to_hf_config(cfg).items() if k not in ("architectures", "model_type")}
    model = Gemma3ForCausalLM(Gemma3TextConfig(**hf_cfg, attn_implementation="sdpa"))
    missing, unexpected = model.load_state_dict(to_hf_state_dict(state_dict), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    return model.train()


def _hf_step(model, opt, amp, x, y) -> float:
    """The same step as tinygemma.train.train_step: forward, backward, clip 1.0, AdamW, zero_grad."""
    import torch

    with amp:
        loss = model(input_ids=x, labels=y, shift_labels=y).loss  # shift_labels: predict y, no internal shift
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the small size")
    ap.add_argument("--compile", action="store_true", help="also time our model with its blocks compiled (torch.compile, as `train --compile` on CPU)")
    ap.add_argument("--bf16", action="store_true", help="also time both under CPU bf16 autocast (AVX512-BF16/AMX CPUs); with --compile also ours compiled under it")
    ap.add_argument("--hf-heap", action="store_true", help="also time HF with our CPU allocator setting (device.keep_freed_memory)")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the variants this many times; report the best")
    ap.add_argument("--interleaved", type=int, metavar="STEPS", default=0,
                    help="instead: ours and HF in one process, alternating STEPS timed steps each, same allocator (with --bf16: under bf16 autocast)")
    args = ap.parse_args()
    variants = ["ours", "hf"] + (["hf heap"] if args.hf_heap else []) + (["ours+compile"] if args.compile else []) + (["ours bf16", "hf bf16"] if args.bf16 else []) + (["ours+compile bf16"] if args.bf16 and args.compile else [])
    sizes = ["small"] if args.quick else list(SIZES)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        source = prepare_data(Path(tmp) / "data")
        if args.interleaved:
            for size in sizes:
                with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    r = pool.submit(interleaved, size, str(Path(tmp) / "data"), args.interleaved, args.bf16).result()
                print(json.dumps(r), flush=True)
                print(f"| {size} | interleaved, {r['precision']}, {r['steps']} steps each | ours {r['ours_ms']:.0f} ms | HF {r['hf_ms']:.0f} ms "
                      f"| {r['ratio']:.2f}x (per step {r['step_ratio_min']:.2f}-{r['step_ratio_max']:.2f}x) |", flush=True)
            return
        results: dict[tuple, dict] = {}
        for size in sizes:
            for _ in range(args.repeats):
                for v in variants:
                    with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                        r = pool.submit(measure, v, size, str(Path(tmp) / "data")).result()
                    print(json.dumps(r), flush=True)
                    key = (size, v)
                    if key not in results or r["ms_per_step"] < results[key]["ms_per_step"]:
                        results[key] = r
    print(table(results, sizes, variants, source))


def table(results: dict, sizes: list[str], variants: list[str], source: str) -> str:
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.split(":")[-1]
    lines = [f"{time.strftime('%Y-%m-%d')}, {cpu.strip() or platform.processor()}, {THREADS} threads, fp32, data: {source}", "",
             "| size | params | batch x block | variant | ms/step | tokens/s | peak RSS (MB) | first loss | speed vs HF (same precision) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for size in sizes:
        for v in [v for v in variants if (size, v) in results]:
            r, hf = results[(size, v)], results[(size, "hf bf16" if v.endswith("bf16") else "hf")]
            lines.append(f"| {size} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['block']} | {v} | {r['ms_per_step']:.0f} | "
                         f"{r['tok_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['first_loss']:.4f} | "
                         f"{hf['ms_per_step'] / r['ms_per_step']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
