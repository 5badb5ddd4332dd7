import torch

from tinygemma.config import TrainConfig
from tinygemma.device import autocast_context, cpu_flags, native_bf16

CPU = torch.device("cpu")


def test_auto_dtype_is_bf16_only_on_cpus_with_bf16_instructions():
    assert native_bf16(CPU, {"avx2", "avx512f", "avx512_bf16"})
    assert native_bf16(CPU, {"avx512f", "amx_tile", "amx_bf16"})
    assert not native_bf16(CPU, {"avx2", "fma", "avx512f"})  # Zen 3 and older AVX512 parts: emulated bf16
    assert not native_bf16(torch.device("meta"), {"amx_bf16"})


def test_autocast_follows_the_dtype_setting_and_this_cpus_flags():
    def autocasts(dtype):
        with autocast_context(TrainConfig(dtype=dtype), CPU):
            return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16

    assert not autocasts("float32")
    assert autocasts("bfloat16")
    assert autocasts("auto") == bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
