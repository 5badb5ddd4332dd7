"""Serving throughput: `tinygemma serve` with 1, 4, 16 and 32 concurrent streaming clients, against
the same requests sent one at a time to the same server (the peer), in one run.

The model is the `small` preset (random init, GPT-2 vocabulary: the speed does not depend on the
weights), on CPU. Every level sends the same fixed set of requests (prompt "Once upon a time",
seeded sampling at temperature 0.8) through raw HTTP with `stream: true`. Reported per level:
aggregate tokens/s (completion tokens from each stream's usage / wall time of the whole level),
p50/p95 time to first token (request sent -> first chunk with text), and the ratio of the aggregate
rate to the one-at-a-time rate. Target: >= 6x at 16 clients.

    flock -x /tmp/tinygemma-bench.lock nice -n -20 .venv/bin/python benchmarks/serve.py [--requests 32] [--tokens 64]

llama.cpp's llama-server is not a peer here: `make llama-cpp` builds llama-completion and
llama-tokenize only (llamacpp.py), not the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def make_model(folder: Path) -> None:
    from tinygemma.checkpoint import save_config, save_weights
    from tinygemma.config import model_preset
    from tinygemma.model import Gemma3Model
    from tinygemma.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    torch.manual_seed(0)
    model = Gemma3Model(model_preset("small", tok.vocab_size))
    save_weights(model.state_dict(), folder / "best_model_params.pt")
    save_config(folder, model.config, tok.save(folder))


def start_server(folder: Path, port: int, slots: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tinygemma", "serve", "--checkpoint", str(folder), "--device", "cpu",
                             "--port", str(port), "--slots", str(slots), "--queue", "256", "--context", "512"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def one_request(port: int, i: int, tokens: int) -> tuple[float, int]:
    """One streamed completion -> (seconds to the first text, completion tokens)."""
    body = {"prompt": "Once upon a time", "max_tokens": tokens, "temperature": 0.8, "seed": i, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    first, used = None, 0
    for line in r:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if first is None and any(c["text"] for c in chunk["choices"]):
            first = time.perf_counter() - t0
        if chunk.get("usage"):
            used = chunk["usage"]["completion_tokens"]
    conn.close()
    return first if first is not None else float("nan"), used


def level(port: int, clients: int, requests: int, tokens: int) -> dict:
    """The fixed set of requests through `clients` concurrent connections."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: one_request(port, i, tokens), range(requests)))
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    return {"clients": clients, "tokens": sum(r[1] for r in results), "wall": wall,
            "tok_s": sum(r[1] for r in results) / wall, "p50": statistics.median(ttft),
            "p95": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32, help="requests per level (default %(default)s)")
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens per request (default %(default)s)")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp))
        proc = start_server(Path(tmp), args.port, slots=32)
        try:
            level(args.port, 4, 8, 8)  # warm-up
            rows = [level(args.port, c, args.requests, args.tokens) for c in (1, 4, 16, 32)]
        finally:
            proc.terminate()
            proc.wait()
    base = rows[0]["tok_s"]
    print(f"small preset, CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.requests} requests x {args.tokens} tokens per level")
    print("| clients | tokens | wall s | aggregate tok/s | vs one at a time | TTFT p50 ms | TTFT p95 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['tokens']} | {r['wall']:.1f} | {r['tok_s']:.0f} | {r['tok_s'] / base:.2f}x | "
              f"{r['p50'] * 1000:.0f} | {r['p95'] * 1000:.0f} |")


if __name__ == "__main__":
    main()
