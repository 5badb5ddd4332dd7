"""Generation speed: tinygemma's KV-cache sampler vs transformers' `model.generate`.

Same weights (random init with non-trivial norms, exported to a Gemma3ForCausalLM),
greedy, batch 1, a 16-token prompt, 256 new tokens, fp32, CPU threads set by --threads.
Also three ablations of ours: the same cached forward without `prepared_for_inference`
(separate q/k/v and gate/up matmuls, norms computing 1 + w each time), the exact fp32 head
instead of the ranked one (an int8 or bf16 copy, exact near the top), and no cache at all
(fewer tokens: it recomputes every prefix).
With --llamacpp, llama.cpp too (`make llama-cpp`), on the same weights exported to GGUF
in f32 and q8_0 (bench_llamacpp); --no-hf runs only that comparison.

    flock -x /tmp/tinygemma-bench.lock python benchmarks/generate.py [--presets small gemma3-270m] [--llamacpp [--no-hf]]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from tinygemma.config import model_preset
from tinygemma.generate import LMHead, generate_ids
from tinygemma.hf import to_hf_config, to_hf_state_dict
from tinygemma.model import Gemma3Model, KVCache


def build_pair(preset: str, vocab_size: int):
    """Our model and HF's Gemma3ForCausalLM holding the same fp32 weights."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = model_preset(preset, vocab_size)
    ours = Gemma3Model(cfg).eval()
    with torch.no_grad():  # non-zero norms so every weight matters
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.3)
    hf_cfg = {k: v for k, v in to_hf_config(cfg).items() if k not in ("architectures", "model_type", "torch_dtype")}
    hf = Gemma3ForCausalLM(Gemma3TextConfig(**hf_cfg)).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.tie_weights()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = cfg.pad_token_id
    return ours, hf, cfg


@torch.inference_mode()
def greedy_unprepared(model: Gemma3Model, ids: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding through the model's cached forward as it is, not prepared for inference:
    generate_ids without the fused q/k/v and precomputed norm gains (same cache, same head)."""
    cache = KVCache(model.config, 1, len(ids) + new_tokens, "cpu")
    head = LMHead(model.embed_tokens.weight)
    x = model.hidden_states(torch.tensor([ids]), cache=cache)[:, -1]  # (1, d)
    out = []
    for _ in range(new_tokens):
        out.append(head(x).argmax(-1))
        x = model.hidden_states(out[-1][:, None], cache=cache)[:, -1]
    return torch.cat(out).tolist()


def time_it(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_preset(preset: str, vocab_size: int, prompt_len: int, new_tokens: int, uncached_tokens: int,
                 repeats: int) -> list[dict]:
    ours, hf, cfg = build_pair(preset, vocab_size)
    prompt = torch.randint(0, vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    ids = [prompt[0].tolist()]

    def run_ours():
        return generate_ids(ours, ids, new_tokens, temperature=0)[0]

    def run_hf():
        with torch.no_grad():
            out = hf.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        return out[0, prompt_len:].tolist()

    def run_uncached():
        return generate_ids(ours, ids, uncached_tokens, temperature=0, use_cache=False)[0]

    def run_fp32_head():
        return generate_ids(ours, ids, new_tokens, temperature=0, fast_head=False)[0]

    generate_ids(ours, ids, 8, temperature=0)  # warm-up (allocator, oneDNN primitives)
    with torch.no_grad():
        hf.generate(prompt, max_new_tokens=8, do_sample=False)
    t_ours = t_hf = float("inf")
    for _ in range(repeats):  # interleaved, so a burst of load on the machine hits both
        t, toks_ours = time_it(run_ours, 1)
        t_ours = min(t_ours, t)
        t, toks_hf = time_it(run_hf, 1)
        t_hf = min(t_hf, t)
    t_unp, toks_unp = time_it(lambda: greedy_unprepared(ours, ids[0], new_tokens), 1)
    t_f32, toks_f32 = time_it(run_fp32_head, 1)
    t_unc, toks_unc = time_it(run_uncached, 1)

    def agree(toks):  # leading tokens equal to HF's
        return next((i for i, (a, b) in enumerate(zip(toks, toks_hf)) if a != b), len(toks))

    match = agree(toks_ours)
    assert toks_unc == toks_ours[:uncached_tokens], "cached and uncached greedy tokens differ"
    hf_tps = new_tokens / t_hf
    rows = [
        dict(preset=preset, params=cfg.n_params, impl="tinygemma (KV cache)", tokens=new_tokens,
             tps=new_tokens / t_ours, ratio=(new_tokens / t_ours) / hf_tps, same=f"{match}/{new_tokens}"),
        dict(preset=preset, params=cfg.n_params, impl="HF generate (cache)", tokens=new_tokens,
             tps=hf_tps, ratio=1.0, same="-"),
        dict(preset=preset, params=cfg.n_params, impl="tinygemma, not prepared", tokens=new_tokens,
             tps=new_tokens / t_unp, ratio=(new_tokens / t_unp) / hf_tps, same=f"{agree(toks_unp)}/{new_tokens}"),
        dict(preset=preset, params=cfg.n_params, impl="tinygemma, fp32 head", tokens=new_tokens,
             tps=new_tokens / t_f32, ratio=(new_tokens / t_f32) / hf_tps, same=f"{agree(toks_f32)}/{new_tokens}"),
        dict(preset=preset, params=cfg.n_params, impl="tinygemma, no cache", tokens=uncached_tokens,
             tps=uncached_tokens / t_unc, ratio=(uncached_tokens / t_unc) / hf_tps, same="-"),
    ]
    for r in rows:
        print(f"{r['preset']:>12} {r['impl']:<24} {r['tps']:8.1f} tok/s  x{r['ratio']:.2f}", flush=True)
    print(f"{preset}: greedy tokens identical to HF for {match}/{new_tokens} ({'all' if match == new_tokens else 'diverged'})")
    return rows


def bench_llamacpp(preset: str, vocab_size: int, prompt_len: int, new_tokens: int, repeats: int,
                   threads: int) -> list[dict]:
    """Ours vs llama.cpp on the same weights, exported with `export_gguf` in f32 and q8_0: greedy, batch 1.

    llama.cpp runs as a user gets it (tinygemma.llamacpp's tinygemma-llama: f16 KV cache, flash
    attention auto) on `threads` threads; its time is prefill + decode inside the process (loading
    excluded), ours is `generate_ids` (the model built before). Runs are interleaved, best of `repeats`."""
    import tempfile
    from pathlib import Path

    from tinygemma import llamacpp
    from tinygemma.gguf import export_gguf
    from tinygemma.tokenizer import gpt2, load_tokenizer

    torch.manual_seed(0)
    ours, _, cfg = build_pair(preset, vocab_size)
    tok = load_tokenizer("gemma3") if vocab_size == 262_144 else gpt2()
    ids = torch.randint(0, vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    rows, t_ours = [], float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        files = {d: export_gguf(ours, cfg, tok, Path(tmp) / f"{preset}-{d}.gguf", dtype=d) for d in ("f32", "q8_0")}
        generate_ids(ours, [ids], 8, temperature=0)  # warm-up
        t_llama = {d: float("inf") for d in files}
        out = {}
        for _ in range(repeats):
            t, toks_ours = time_it(lambda: generate_ids(ours, [ids], new_tokens, temperature=0)[0], 1)
            t_ours = min(t_ours, t)
            for d, f in files.items():
                res = llamacpp.greedy(f, ids, new_tokens, kv="f16", flash_attn="auto", threads=threads)
                t_llama[d], out[d] = min(t_llama[d], res["prefill_s"] + res["decode_s"]), res["ids"]
    ours_tps = new_tokens / t_ours
    rows.append(dict(preset=preset, params=cfg.n_params, impl="tinygemma (KV cache)", weights="f32", tps=ours_tps,
                     ratio=1.0, same="-"))
    for d, t in t_llama.items():
        same = next((i for i, (a, b) in enumerate(zip(out[d], toks_ours)) if a != b), new_tokens)
        rows.append(dict(preset=preset, params=cfg.n_params, impl="llama.cpp", weights=d, tps=new_tokens / t,
                         ratio=(new_tokens / t) / ours_tps, same=f"{same}/{new_tokens}"))
    for r in rows:
        print(f"{r['preset']:>12} {r['impl']:<24} {r['weights']:>5} {r['tps']:8.1f} tok/s  x{r['ratio']:.2f}", flush=True)
    return rows


def print_llamacpp_table(rows: list[dict], threads: int, new_tokens: int) -> None:
    print(f"\nllama.cpp ({llamacpp_version()}), {threads} threads, greedy, batch 1, {new_tokens} new tokens\n")
    print("| preset | params | generator | weights | tokens/s | vs ours (f32) | greedy tokens = ours |")
    print("|---|---:|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['impl']} | {r['weights']} | {r['tps']:.1f} "
              f"| {r['ratio']:.2f}x | {r['same']} |")


def llamacpp_version() -> str:
    from tinygemma import llamacpp

    return f"{llamacpp.PYDIST} {llamacpp.PYDIST_VERSION}, {llamacpp.isa()[0]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["small", "gemma3-270m"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--llamacpp", action="store_true", help="also run llama.cpp on the same weights (f32, q8_0)")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF comparison and the ablations")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = {"gemma3-270m": 262_144}
    uncached = {"gemma3-270m": 16}  # capped at --new-tokens below
    rows, peer_rows = [], []
    for preset in args.presets:
        if not args.no_hf:
            rows += bench_preset(preset, vocab.get(preset, 50_257), args.prompt_len, args.new_tokens,
                                 min(uncached.get(preset, 64), args.new_tokens), args.repeats)
        if args.llamacpp:
            peer_rows += bench_llamacpp(preset, vocab.get(preset, 50_257), args.prompt_len, args.new_tokens,
                                        args.repeats, args.threads)
    if peer_rows:
        print_llamacpp_table(peer_rows, args.threads, args.new_tokens)
    if not rows:
        return
    print(f"\ntorch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}\n")
    print("| preset | params | generator | new tokens | tokens/s | vs HF | greedy tokens = HF |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['impl']} | {r['tokens']} | {r['tps']:.1f} "
              f"| {r['ratio']:.2f}x | {r['same']} |")


if __name__ == "__main__":
    main()
