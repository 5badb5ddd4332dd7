"""torchrun setup/cleanup and model wrapping (DDP or FSDP2). The model knows nothing of this.

`torchrun --nproc_per_node=N -m tinygemma train ...` sets RANK / WORLD_SIZE / LOCAL_RANK;
without them everything here is a no-op and a single process runs as before.
Backends: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_type: str) -> DistInfo:
    """Join the torchrun process group if launched by torchrun; return this process's rank info."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def cleanup(wait_for_others: bool = True) -> None:
    """Leave the process group; after a normal run, together.

    A rank whose peer tears gloo down while it still has a collective in flight aborts
    ("terminate called without an active exception"). The barrier keeps ranks from leaving while
    rank 0 still writes its checkpoint. But the barrier's own last message can still be in flight on
    one rank when another returns from it and destroys the group: a fresh-clone CI run saw FSDP2's
    rank 1 abort that way, once. So each rank then also checks in through the launcher's key-value
    store, which is not gloo, and waits for all the others to check in. Then no gloo operation is
    pending anywhere when the groups are destroyed.
    """
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if wait_for_others and world > 1:
            dist.barrier()
            store = dist.distributed_c10d._get_default_store()
            store.set(f"tinygemma/left_barrier/{dist.get_rank()}", "1")
            store.wait([f"tinygemma/left_barrier/{r}" for r in range(world)])
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, device: torch.device, fsdp: bool, mp_dtype: torch.dtype | None = None) -> nn.Module:
    """DDP, or FSDP2 (`fully_shard` on each block, then the root); unchanged for one process."""
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not info.enabled:
            dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())  # FSDP needs a group
        mp = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32) if mp_dtype else MixedPrecisionPolicy()
        for block in model.layers:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)  # the root holds the (tied) embedding and the final norm
        return model
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The Gemma3Model inside DDP / torch.compile wrappers (FSDP2 shards in place: no wrapper)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def set_grad_sync(model: nn.Module, sync: bool) -> None:
    """Skip the gradient all-reduce on accumulation micro-steps (all but the last)."""
    inner = getattr(model, "_orig_mod", model)
    if hasattr(inner, "set_requires_gradient_sync"):  # FSDP2
        inner.set_requires_gradient_sync(sync)
    elif hasattr(inner, "require_backward_grad_sync"):  # DDP
        inner.require_backward_grad_sync = sync


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / info.world_size


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if any rank says True (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# ---------------------------------------------------------------- full (unsharded) state for checkpoints
# The same format whatever the parallelism: plain CPU tensors keyed by parameter name (no "module."
# prefix, no shards), so a checkpoint from N processes loads in 1 and vice versa.


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """All ranks must call this under FSDP2 (it all-gathers); returns CPU tensors."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(unwrap_ddp(model), options=_options(cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state keyed by parameter name (not index), gathered to full tensors."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(unwrap_ddp(model), optimizer, options=_options(cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full optimizer state (every rank holds it) into a possibly sharded model's optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(unwrap_ddp(model), optimizer, state, options=_options())


def unwrap_ddp(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def gather_objects(obj, info: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (a list of one without torchrun)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
