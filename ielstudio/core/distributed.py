"""Training and prediction on several processes with PyTorch's own engine:
`torch.distributed` (DistributedDataParallel), launched by `torchrun`.

`torchrun --nproc-per-node N -m ielstudio train|clean|predict ...` starts N copies of
the command; torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous in their
environment, and `init_from_env` joins them into one process group: NCCL when the
command trains on CUDA GPUs (one per process, `cuda:LOCAL_RANK`), gloo on CPUs. Without
torchrun (WORLD_SIZE unset or 1) every function here is a no-op for one process.

A rank that fails exits with its message; torchrun then stops the other ranks and
exits non-zero (its default, `--max-restarts 0`), so a failure never hangs. Blocking
collectives time out after `TIMEOUT` all the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

#: How long a collective waits for a rank that neither answers nor fails.
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """True in a process torchrun started with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_from_env(device: str = "auto") -> World:
    """Join the process group torchrun describes (once; later calls return the same
    world). `device`: the training device setting; CUDA means NCCL, one GPU per process."""
    if dist.is_available() and dist.is_initialized():
        return world()
    if not launched():
        return World()
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run without torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device in ("auto", "cuda") and torch.cuda.is_available() or str(device).startswith("cuda:")
    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return world()


def world() -> World:
    """This process's place in the process group (rank 0 of 1 without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown(finished: bool = True) -> None:
    """Leave the process group. `finished` (the command succeeded): wait for the other
    ranks first, so none tears the group down while another still uses it (gloo aborts
    a process that exits under a peer's feet). After a failure, leave at once."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def training_device(device: torch.device) -> torch.device:
    """The device of this rank: `cuda:LOCAL_RANK` when `device` is CUDA in a distributed run."""
    w = world()
    if w.distributed and device.type == "cuda":
        return torch.device("cuda", w.local_rank % torch.cuda.device_count())
    return device


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def mean(value: float) -> float:
    """The mean of `value` over the ranks (itself for one process)."""
    if not world().distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def from_main(values: list[float]) -> list[float]:
    """Rank 0's `values` on every rank (a decision taken once, the same everywhere)."""
    if not world().distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.broadcast(t, 0)
    return [float(v) for v in t.tolist()]


def sync_state_from_main(module: torch.nn.Module) -> None:
    """Every parameter and buffer of `module` set to rank 0's (e.g. BatchNorm statistics,
    which each rank updates from its own batches)."""
    if not world().distributed:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point() or t.dtype in (torch.int64, torch.int32):
                dist.broadcast(t, 0)


def gather(obj) -> list:
    """Every rank's `obj` (picklable, produced by this program), in rank order, on every rank."""
    if not world().distributed:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(items: list, w: World | None = None) -> list:
    """This rank's share of `items`: every `size`-th one from `rank` (all for one process)."""
    w = w or world()
    return list(items)[w.rank::w.size] if w.distributed else list(items)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` for a training step: DistributedDataParallel (gradients averaged over the
    ranks) in a distributed run, BatchNorm synchronised on CUDA (SyncBatchNorm). On CPUs
    PyTorch has no SyncBatchNorm: each rank normalises by its own batch, DDP copies rank
    0's running statistics to the others at every step. Returns `model` itself otherwise."""
    if not world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)
