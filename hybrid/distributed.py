"""Data-parallel training across processes: `torchrun --nproc-per-node N -m hybrid.train ...`.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; `Distributed.from_env` joins the process group
(gloo on CPUs, nccl on CUDA) and every other call is a no-op for a single process, so the
training loop reads the same either way. What each rank does is in `hybrid.fit`: it trains on
its shard of every global batch, draws shifts and augmentation from its own generator, and
only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: torch.device) -> "Distributed":
        """Join torchrun's process group when WORLD_SIZE > 1; a single process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            # validation and checkpoints run on rank 0 while the others wait: allow a slow epoch end
            dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Each rank on its own GPU (LOCAL_RANK); CPUs are shared."""
        if self.active and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, module: torch.nn.Module, device: torch.device, find_unused: bool = False):
        """DistributedDataParallel around `module` (its forward computes the loss); the module itself
        for one process. Buffers (BatchNorm statistics) are broadcast from rank 0 at every forward.
        `find_unused`: some parameters may get no gradient in a step (an encoder behind a detached head
        with no loss of its own), which DDP must be told or it fails at the next step."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=find_unused)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch (strided, so shards differ by at most one sample)."""
        return idx[self.rank::self.world_size] if self.active else idx

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        if not self.active:
            return values
        on = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=on)  # nccl reduces GPU tensors only
        dist.all_reduce(t)
        return t.cpu().tolist()

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
