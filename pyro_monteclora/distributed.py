"""Multi-process training on PyTorch's own engine: ``torch.distributed`` and ``DistributedDataParallel``.

Under ``torchrun --nproc_per_node K`` or ``accelerate launch`` (both set ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), :func:`init_distributed` starts the process
group (``nccl`` on CUDA, ``gloo`` on the CPU) and :func:`~pyro_monteclora.training.svi.fit` then:

* wraps the ELBO module (model and guide together) in ``DistributedDataParallel``, which
  broadcasts rank 0's parameters once and all-reduces (averages) every trainable gradient, the
  adapters' and the guide's, after each backward;
* expects each rank's loader to hold its shard
  (:func:`~pyro_monteclora.data.samplers.training_sampler`: a ``DistributedSampler``).
  The data plate keeps the **global** data-set size :math:`D`, so each rank's loss is
  :math:`-\\frac1D(\\frac{D}{b}\\sum_{i \\in \\text{shard batch}} \\log p(y_i \\mid x_i, A_r) - \\mathrm{KL})`
  and the averaged gradient is that of one process with the global batch of :math:`K b` examples
  (each rank's examples seeing its own adapter draw :math:`A_r`);
* seeds each rank's random numbers from ``(seed, epoch, rank)``: the ranks draw independent adapter
  noise, and a resumed run draws what an uninterrupted one would;
* shows progress and calls the callbacks (``on_epoch_end``: checkpoints) on rank 0 only;
* gathers the evaluation from all ranks (:func:`~pyro_monteclora.data.samplers.evaluation_sampler`
  shards it without padding).
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence

import torch
import torch.distributed as dist

__all__ = [
    "world",
    "is_main_process",
    "launched_world_size",
    "launched_rank",
    "init_distributed",
    "barrier",
    "all_reduce_sums",
    "gather_tensors",
    "all_ranks_agree",
    "local_device",
]


def world() -> tuple:
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files and shows progress."""
    return world()[0] == 0


def launched_world_size() -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` / ``accelerate launch`` (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched_rank() -> int:
    """``RANK`` as set by the launcher (0 when not launched)."""
    return int(os.environ.get("RANK", "0") or 0)


def local_device(device: torch.device) -> torch.device:
    """The device this process places its model on: ``cuda:LOCAL_RANK`` for a CUDA ``device``
    without an index when launched with several processes (each rank its own GPU), else
    ``device`` itself.

    >>> local_device(torch.device("cpu"))
    device(type='cpu')
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and launched_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return device


def init_distributed(device: torch.device) -> bool:
    """Start the process group from the launcher's environment when ``WORLD_SIZE > 1``.

    :returns: whether a process group is running (started here or before).
    """
    if world()[1] > 1:
        return True
    if launched_world_size() <= 1:
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if world()[1] > 1:
        dist.barrier()


def all_reduce_sums(values: Sequence[float]) -> List[float]:
    """Sum numbers over the ranks (float64; unchanged without a process group)."""
    if world()[1] == 1:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def all_ranks_agree(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (so that all ranks take the same branch)."""
    return all_reduce_sums([0.0 if flag else 1.0])[0] == 0.0


def gather_tensors(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Concatenate each named tensor over the ranks, rank 0's rows first (CPU tensors; any
    lengths). Without a process group, returns ``tensors``."""
    if world()[1] == 1:
        return tensors
    gathered: List[Dict[str, torch.Tensor]] = [None] * world()[1]  # type: ignore[list-item]
    dist.all_gather_object(gathered, {k: v.cpu() for k, v in tensors.items()})
    return {k: torch.cat([part[k] for part in gathered]) for k in tensors}
