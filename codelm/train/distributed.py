"""Running the training loop on several processes: torchrun + FSDP2.

`torchrun --nproc-per-node N -m codelm.cli train RECIPE.toml` (or `codelm train`
under torchrun) starts N copies of the same loop. Each process reads torchrun's
RANK / WORLD_SIZE / LOCAL_RANK, joins the process group (NCCL on GPUs, gloo on
CPUs, so the sharded path also runs on a laptop and in the tests), and shards
the model with `fully_shard`: every transformer block, then the root module
(embeddings, final norm, output). The model itself knows nothing of this.

Each optimizer step takes a global batch of sequences; process r trains on its
share of it. Gradients are reduced across processes by FSDP (an average), so
the loop scales each process's loss by world_size / global target count: the
gradient is then the mean over the global batch whatever the process count, and
N processes follow the same trajectory as one with the same global batch.

Checkpoints hold full (unsharded) tensors, gathered on rank 0, so a run can be
resumed on a different number of processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from codelm.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group if there is one; pick this process's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no GPU is available")
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        dev = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        return DistInfo(device=dev)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=dev if use_cuda else None)
    return DistInfo(rank, world, local_rank, local_world, dev)


def shard_model(model: torch.nn.Module, info: DistInfo, bf16_params: bool = False) -> torch.nn.Module:
    """FSDP2: shard each block, then the root. Parameters become DTensors in place."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # late: only a sharded run needs FSDP

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for block in model.layers:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def set_gradient_sync(model: torch.nn.Module, sync: bool, info: DistInfo) -> None:
    """Skip the reduce-scatter on all but the last micro-batch of a step."""
    if info.enabled and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------- state dicts
def _options(full: bool, **kw):
    # late: torch.distributed.checkpoint takes ~2 s to import
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=True, **kw)


def full_model_state(model: torch.nn.Module, info: DistInfo) -> dict:
    """Unsharded CPU tensors (on rank 0; other ranks get an empty dict when sharded)."""
    if not info.enabled:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # late: torch.distributed.checkpoint takes ~2 s to import
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict:
    """The optimizer's state keyed by parameter names, unsharded (rank 0), so any process count can resume it."""
    # late: torch.distributed.checkpoint takes ~2 s to import
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                              info: DistInfo) -> None:
    """Inverse of full_optimizer_state; when sharded, rank 0's copy is scattered to the others."""
    # late: torch.distributed.checkpoint takes ~2 s to import
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    opts = _options(True, broadcast_from_rank0=True) if info.enabled else _options(True)
    set_optimizer_state_dict(model, optimizer, state, options=opts)
