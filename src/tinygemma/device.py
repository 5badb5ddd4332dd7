"""Where and how a model runs: the device, autocast precision, torch.compile, the CPU allocator.

Shared by training (train.py) and the CLI's generate/eval; nothing here knows about the loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform

import torch

from tinygemma.config import TrainConfig
from tinygemma.errors import TinyGemmaError
from tinygemma.model import Gemma3Model

# --compile default per device, as measured (docs/BENCHMARKS.md ## Training): on CPU, compiling the blocks
# was a tie or worse on a Zen 3 EPYC and 1.2-1.3x faster at the 270M shape on an AVX512 one, after 7-35 s
# of compiling; on an H200 the compiled 270M step was 2.8x faster (plus ~66 s).
COMPILE_DEFAULT = {"cpu": False, "cuda": True, "mps": False}


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is missing is a user error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TinyGemmaError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TinyGemmaError("--device mps: MPS is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device, flags: set[str] | None = None) -> bool:
    """Whether `dtype=auto` trains in bf16 autocast here: on CUDA, and on CPUs with bf16 instructions
    (AVX512-BF16 or AMX). Elsewhere CPU bf16 is emulated and slower than fp32, so it stays fp32.

    Measured: a 2-core AMD Zen 4 (AVX512-BF16) ran the small preset's step 1.9x faster in bf16
    (docs/TRAINING.md); an Intel Xeon with AMX ran the quickstart recipe's step 1.2x faster, 1.3x with
    compiled blocks (docs/RECIPES.md)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return bool({"avx512_bf16", "amx_bf16"} & (cpu_flags() if flags is None else flags))


def autocast_context(cfg: TrainConfig, device: torch.device):
    """bf16 autocast where dtype asks for it, or dtype=auto and the hardware does bf16 natively (native_bf16)."""
    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and native_bf16(device))
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def keep_freed_memory() -> bool:
    """CPU training and decoding: glibc keeps freed memory for reuse instead of handing it back to the kernel.

    Every step frees and reallocates the same large tensors (the (V, C) gradients of the tied
    head, the MLP activations). glibc returns blocks over 32 MB to the kernel with munmap, so
    each step page-faults them in again and the kernel zeroes them: a 270M-shaped CPU step was
    about 15% faster without that (docs/BENCHMARKS.md ## Training). Decoding 16 rows of a 50k
    vocabulary frees and reallocates (16, V) logits and their softmax: sampling took 4.4 ms a
    step with glibc's defaults and 0.95 ms with this (Intel Xeon VM). The process's RSS then
    stays at its peak. Returns False (and changes nothing) where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # malloc.h
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def compile_model(model: Gemma3Model, per_block: bool) -> None:
    """torch.compile in place, so parameter names (checkpoints) stay the same.

    per_block compiles each transformer block and leaves the embedding and the chunked loss eager:
    FSDP2 needs it (one graph per sharded block), and on CPU it is the variant that pays (the whole
    model, loss included, was 1.6x slower there; the blocks alone are faster, docs/BENCHMARKS.md).
    """
    for module in (model.layers if per_block else [model]):
        module.compile()
