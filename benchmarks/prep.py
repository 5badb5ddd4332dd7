"""Data preparation speed and memory: `tinygemma prepare` against seed-style pipelines.

All contenders tokenize the same input (the shared TinyStories train sample repeated to
~20 MB and ~80 MB) with GPT-2 and write uint16 ids; each runs in its own subprocess so
the peak memory of its whole process tree (main + workers) can be sampled from /proc.

- ours:            `tinygemma prepare --source FILE --doc-split blank --num-proc N` (real CLI, cold
                   start; blank-line documents, the same ones the seed's paragraph loader makes)
- seed verbatim:   the nanoGPT-style prepare the seed describes: `datasets` text loader,
                   `.map(encode_ordinary + eot, num_proc=N)`, then a uint16 memmap filled
                   shard by shard with `np.concatenate(batch["ids"])` (numpy format)
- seed arrow:      the same, but each shard is flattened in Arrow (`pc.list_flatten`)
- limit:           single-thread tiktoken `encode_ordinary` over the documents already in
                   memory, times the number of cores (no reading, no writing)

Run:  flock /tmp/tinygemma-cpu.lock python benchmarks/prep.py [--sizes 20 80]
The markdown table it prints goes into docs/BENCHMARKS.md (## Data preparation).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SAMPLE = Path("/work/shared/data/tinystories_train_sample.txt")
ROOT = Path(__file__).resolve().parents[1]

# The seed-style baseline, run as its own script (argv: text file, out file, num_proc, writer, cache parent).
SEED_STYLE = r'''
import sys, tempfile, numpy as np, datasets
from tinygemma.tokenizer import gpt2
src, out, num_proc, writer = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
enc = gpt2()._enc  # the same GPT-2 encoding the datasets pipeline would download
docs = datasets.load_dataset("text", data_files=src, sample_by="paragraph", split="train",
                             cache_dir=tempfile.mkdtemp(dir=sys.argv[5]))  # cold: no cached arrow or map

def encode(example):
    ids = enc.encode_ordinary(example["text"])
    ids.append(enc.eot_token)
    return {"ids": ids, "len": len(ids)}

tokenized = docs.map(encode, remove_columns=["text"], num_proc=num_proc)
total = int(np.sum(tokenized["len"], dtype=np.uint64))
arr = np.memmap(out, dtype=np.uint16, mode="w+", shape=(total,))
pos, shards = 0, 1024
for k in range(shards):
    shard = tokenized.shard(num_shards=shards, index=k, contiguous=True)
    if writer == "numpy":
        ids = np.concatenate(shard.with_format("numpy")["ids"])
    else:
        import pyarrow.compute as pc
        ids = pc.list_flatten(shard.with_format("arrow")["ids"]).to_numpy()
    arr[pos:pos + len(ids)] = ids
    pos += len(ids)
arr.flush()
print(total)
'''

LIMIT = r'''
import sys, time
from tinygemma.sources import iter_pieces, SourceOptions
from tinygemma.tokenizer import gpt2
enc = gpt2()._enc
docs = [p.text for p in iter_pieces(sys.argv[1], "train", SourceOptions(doc_split="blank"))]
t = time.perf_counter()
n = sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
print(n, time.perf_counter() - t)
'''


def tree_memory(root: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over `root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def measure(cmd: list[str], repeat: int = 1) -> dict:
    """The fastest of `repeat` runs of `cmd` (the machine is shared), with the highest peak memory seen."""
    runs = [measure_once(cmd) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["wall"])
    return {**best, "rss": max(r["rss"] for r in runs), "pss": max(r["pss"] for r in runs)}


def measure_once(cmd: list[str]) -> dict:
    """Run `cmd`; wall time, stdout and the peak tree RSS/PSS sampled every 20 ms."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    peak = [0, 0]

    def sample():
        while proc.poll() is None:
            rss, pss = tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{cmd[:4]} failed:\n{stderr[-2000:]}")
    return {"wall": wall, "rss": peak[0], "pss": peak[1], "stdout": stdout, "stderr": stderr}


def make_input(folder: Path, mb: int) -> Path:
    text = SAMPLE.read_bytes()
    path = folder / f"tinystories_{mb}mb.txt"
    with open(path, "wb") as f:
        for _ in range(max(1, round(mb * 1e6 / len(text)))):
            f.write(text.rstrip(b"\n") + b"\n\n")
    return path


def run_size(src: Path, tmp: Path, cores: int, repeat: int, only_ours: bool = False) -> list[dict]:
    rows = []
    r = measure([sys.executable, "-m", "tinygemma", "prepare", "--source", str(src), "--out", str(tmp / "ours"),
                 "--doc-split", "blank", "--num-proc", str(cores), "--force", "--no-progress"], repeat)
    import json

    meta = json.loads((tmp / "ours" / "meta.json").read_text())
    tokens = meta["train"]["tokens"] + meta["validation"]["tokens"]
    rows.append({"name": f"tinygemma prepare (num_proc={cores})", "tokens": tokens, **r})
    if only_ours:
        return rows
    for writer in ("numpy", "arrow"):
        r = measure([sys.executable, "-c", SEED_STYLE, str(src), str(tmp / f"seed_{writer}.bin"), str(cores), writer,
                     str(tmp)], repeat if writer == "arrow" else 1)
        name = "seed-style datasets .map + np.concatenate" if writer == "numpy" else "seed-style datasets .map + arrow writer"
        rows.append({"name": f"{name} (num_proc={cores})", "tokens": int(r["stdout"].split()[-1]), **r})
    r = measure([sys.executable, "-c", LIMIT, str(src)], repeat)
    n, dt = r["stdout"].split()
    rows.append({"name": f"limit: 1-thread tiktoken encode_ordinary x {cores} cores", "tokens": int(n),
                 "wall": float(dt) / cores, "rss": None, "pss": None})
    return rows


def table(results: dict[int, list[dict]]) -> str:
    lines = ["| input | pipeline | tokens | wall s | M tokens/s | peak RSS tree (MB) | peak PSS tree (MB) | ours / this |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for mb, rows in results.items():
        ours = rows[0]["tokens"] / rows[0]["wall"]
        for row in rows:
            speed = row["tokens"] / row["wall"]
            mem = (f"{row['rss'] / 1e6:,.0f}", f"{row['pss'] / 1e6:,.0f}") if row["rss"] else ("-", "-")
            lines.append(f"| {mb} MB | {row['name']} | {row['tokens']:,} | {row['wall']:.1f} | {speed / 1e6:.2f} | "
                         f"{mem[0]} | {mem[1]} | {ours / speed:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 80], help="input sizes in MB")
    ap.add_argument("--num-proc", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--only-ours", action="store_true", help="skip the baselines (e.g. a memory check on 100 MB)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per contender (fastest kept); the slow verbatim "
                    "baseline always runs once")
    args = ap.parse_args()
    if not SAMPLE.exists():
        sys.exit(f"{SAMPLE} not found: this benchmark needs the shared TinyStories sample")
    results = {}
    with tempfile.TemporaryDirectory(prefix="tinygemma-prep-bench-") as d:
        for mb in args.sizes:
            src = make_input(Path(d), mb)
            results[mb] = run_size(src, Path(d) / f"work{mb}", args.num_proc, args.repeat, args.only_ours)
            print(table({mb: results[mb]}), flush=True)
    md = table(results)
    print("\n" + md)
    for mb, rows in results.items():
        if args.only_ours:
            continue
        ours, numpy_, arrow, limit = (r["tokens"] / r["wall"] for r in rows)
        print(f"{mb} MB: ours / faster seed-style = {ours / max(numpy_, arrow):.2f}x (target >= 1.5x); "
              f"ours / limit = {ours / limit:.0%} (target >= 50%); ours peak RSS {rows[0]['rss'] / 1e6:.0f} MB, "
              f"PSS {rows[0]['pss'] / 1e6:.0f} MB (target < 600 MB)")


if __name__ == "__main__":
    main()
