"""Serving throughput: `tinygemma serve` with 1, 4, 16 and 32 concurrent streaming clients, against
the same requests sent one at a time to the same server (the peer), in one run.

The model is the `small` preset with the GPT-2 vocabulary, on CPU, trained for 150 steps on the
built-in corpus first (about a minute; `--train-steps 0` serves a random init, `--checkpoint` any
model). A trained model matters: the decoding head recomputes exactly only the few tokens that
could be the best (generate.LMHead), and a random model's flat distribution makes every row fall
back to the whole fp32 head. Every level sends the same fixed set of requests (prompt "Once upon a
time", seeded sampling at temperature 0.8, stream: true) from one asyncio thread over raw HTTP/1.1:
the client shares the server's cores, so it does as little as it can per chunk. Reported per level
(median of --rounds runs of all levels): aggregate tokens/s (completion tokens from each stream's
usage / wall time of the whole level), p50/p95 time to first token (request sent -> first chunk
with text), and the ratio of the aggregate rate to the one-at-a-time rate. Target: >= 6x at 16
clients.

    flock -x /tmp/tinygemma-bench.lock nice -n -20 .venv/bin/python benchmarks/serve.py [--rounds 3] [--train-steps 150]

When llama.cpp is built here (`make llama-cpp`), llama.cpp's llama-server serves the same weights
(an f32 GGUF, as many slots, continuous batching) as a second peer, built on first use
(llamacpp.ensure_server); `--llama-server no` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def make_model(folder: Path, train_steps: int) -> str:
    """The small preset with the GPT-2 vocabulary in `folder`: random, or trained for `train_steps` steps
    on the built-in corpus (offline, through the CLI) -> what it is, for the report."""
    if train_steps == 0:
        from tinygemma.checkpoint import save_config, save_weights
        from tinygemma.config import model_preset
        from tinygemma.model import Gemma3Model
        from tinygemma.tokenizer import load_tokenizer

        tok = load_tokenizer("gpt2")
        torch.manual_seed(0)
        model = Gemma3Model(model_preset("small", tok.vocab_size))
        save_weights(model.state_dict(), folder / "best_model_params.pt")
        save_config(folder, model.config, tok.save(folder))
        return "small preset, random init"
    cli = [sys.executable, "-m", "tinygemma"]
    data = folder / "data"
    subprocess.run([*cli, "prepare", "--source", "builtin", "--builtin-mb", "2", "--tokenizer", "gpt2",
                    "--out", str(data), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*cli, "train", "--preset", "small", "--data-dir", str(data), "--out-dir", str(folder),
                    "--max-iters", str(train_steps), "--set", "batch_size=8", "--set", "block_size=128",
                    "--set", "lr=3e-3", "--set", "eval_interval=50", "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    return f"small preset trained {train_steps} steps on the built-in corpus"


SLOTS, CONTEXT = 32, 512


def start_ours(folder: Path, port: int) -> subprocess.Popen:
    return wait_healthy(subprocess.Popen(
        [sys.executable, "-m", "tinygemma", "serve", "--checkpoint", str(folder), "--device", "cpu", "--port", str(port),
         "--slots", str(SLOTS), "--queue", "256", "--context", str(CONTEXT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port)


def start_llama_server(folder: Path, port: int, work: Path) -> subprocess.Popen:
    """llama.cpp's llama-server on the same model, exported to an f32 GGUF: as many slots of the same
    context, continuous batching, the same 2 threads."""
    from tinygemma import llamacpp

    gguf = work / "model.gguf"
    subprocess.run([sys.executable, "-m", "tinygemma", "export", "--format", "gguf", "--checkpoint", str(folder),
                    "--out", str(gguf)], check=True, stdout=subprocess.DEVNULL)
    threads = str(torch.get_num_threads())
    return wait_healthy(subprocess.Popen(
        [str(llamacpp.ensure_server()), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
         "--parallel", str(SLOTS), "--ctx-size", str(SLOTS * CONTEXT), "--cont-batching", "--threads", threads,
         "--threads-batch", threads, "--no-webui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port)


def wait_healthy(proc: subprocess.Popen, port: int) -> subprocess.Popen:
    for _ in range(1200):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server on port {port} did not start")


async def one_request(port: int, i: int, body: dict) -> tuple[float, int, bool]:
    """One streamed completion over a raw HTTP/1.1 connection -> (seconds to the first text, completion
    tokens, whether it failed). The client shares the server's two cores, so it does as little as it
    can per chunk: it reads what arrives, notes when the first non-empty text comes, and parses only
    the usage chunk. A stream that ends in an error chunk counts its text chunks as its tokens (one
    token each: llama-server 0.94.0 aborts a stream whose text has a broken UTF-8 sequence, which a
    briefly trained model can write)."""
    data = json.dumps({**body, "seed": i}).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    first, seen = None, bytearray()
    while chunk := await reader.read(1 << 16):
        seen += chunk
        if first is None and FIRST_TEXT.search(chunk):
            first = time.perf_counter() - t0
    writer.close()
    usage = USAGE.search(seen)
    if seen.startswith(b"HTTP/1.1 200") and b'data: {"error"' in seen:
        return first if first is not None else float("nan"), len(FIRST_TEXT.findall(seen)), True
    if not seen.startswith(b"HTTP/1.1 200") or b"data: [DONE]" not in seen or usage is None:
        raise SystemExit(f"request {i} failed: {bytes(seen[:200])!r} ... {bytes(seen[-300:])!r}")
    return first if first is not None else float("nan"), int(usage.group(1)), False


FIRST_TEXT = re.compile(rb'"text": ?"[^"]')  # a chunk whose text is not empty
USAGE = re.compile(rb'"completion_tokens": ?(\d+)')  # in the usage chunk only


def level(port: int, clients: int, requests: int, body: dict) -> dict:
    """The fixed set of requests through `clients` concurrent connections (one asyncio thread)."""
    async def run() -> list[tuple[float, int, bool]]:
        todo, out = iter(range(requests)), []

        async def client() -> None:
            for i in todo:
                out.append(await one_request(port, i, body))

        await asyncio.gather(*(client() for _ in range(clients)))
        return out

    t0 = time.perf_counter()
    results = asyncio.run(run())
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    return {"clients": clients, "tokens": sum(r[1] for r in results), "errors": sum(r[2] for r in results), "wall": wall,
            "tok_s": sum(r[1] for r in results) / wall, "p50": statistics.median(ttft),
            "p95": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))]}


def measure(proc: subprocess.Popen, port: int, args, body: dict) -> list[dict]:
    """Every level, --rounds times -> per level the round with the median rate (and every round's rate)."""
    try:
        level(port, 4, 8, {**body, "max_tokens": 8})  # warm-up
        runs = [[level(port, c, args.requests, body) for c in LEVELS] for _ in range(args.rounds)]
    finally:
        proc.terminate()
        proc.wait()
    rows = []
    for same in zip(*runs):
        mid = statistics.median(r["tok_s"] for r in same)
        rows.append({**min(same, key=lambda r: abs(r["tok_s"] - mid)), "every": [r["tok_s"] for r in same]})
    return rows


LEVELS = (1, 4, 16, 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64, help="requests per level (default %(default)s)")
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens per request (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="run the levels this many times; the table has each level's median (default %(default)s)")
    ap.add_argument("--train-steps", type=int, default=150,
                    help="train the small preset this long before serving it; 0: random init (default %(default)s)")
    ap.add_argument("--checkpoint", type=Path, help="serve this model folder instead")
    ap.add_argument("--llama-server", choices=["auto", "yes", "no"], default="auto",
                    help="llama.cpp's llama-server as a second peer: auto = when llama.cpp is built here (make llama-cpp)")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    from tinygemma import llamacpp
    from tinygemma.checkpoint import load_model
    from tinygemma.generate import encode_prompt

    with tempfile.TemporaryDirectory() as tmp:
        folder, what = args.checkpoint, str(args.checkpoint)
        if folder is None:
            what = make_model(folder := Path(tmp), args.train_steps)
        # the same token ids to both servers: the prompt as our model saw documents begin in training
        ids = encode_prompt(load_model(folder)[2], "Once upon a time")
        body = {"prompt": ids, "max_tokens": args.tokens, "temperature": 0.8, "stream": True,
                "stream_options": {"include_usage": True}}
        tables = {"tinygemma serve": measure(start_ours(folder, args.port), args.port, args, body)}
        if args.llama_server == "yes" or args.llama_server == "auto" and llamacpp.built():
            # llama-server samples with top-k 40 and min-p 0.05 unless told: plain temperature sampling, as ours
            plain = {**body, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
            tables["llama.cpp llama-server"] = measure(start_llama_server(folder, args.port + 1, Path(tmp)),
                                                       args.port + 1, args, plain)
    print(f"{what}; CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.requests} requests x {args.tokens} tokens per level, "
          f"median of {args.rounds} rounds")
    print("| server | clients | tokens | failed streams | wall s | aggregate tok/s | vs one at a time | TTFT p50 ms | TTFT p95 ms | "
          "every round tok/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, rows in tables.items():
        base = rows[0]["tok_s"]
        for r in rows:
            every = ", ".join(str(round(x)) for x in r["every"])
            print(f"| {name} | {r['clients']} | {r['tokens']} | {r['errors']} | {r['wall']:.1f} | {r['tok_s']:.0f} | "
                  f"{r['tok_s'] / base:.2f}x | {r['p50'] * 1000:.0f} | {r['p95'] * 1000:.0f} | {every} |")


if __name__ == "__main__":
    main()
