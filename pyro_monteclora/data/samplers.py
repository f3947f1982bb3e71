"""Samplers: the order in which a loader visits a data set, in one process or in a process group.

:func:`training_sampler` shuffles with an order that depends on ``(seed, epoch)`` only
(:class:`EpochShuffleSampler`, or this rank's ``DistributedSampler`` shard), so a resumed run
sees the order an uninterrupted one would; :func:`evaluation_sampler` gives every example to
exactly one rank, without padding (:class:`EvaluationShardSampler`).
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from pyro_monteclora.distributed import world

__all__ = ["EpochShuffleSampler", "EvaluationShardSampler", "training_sampler", "evaluation_sampler"]


class EpochShuffleSampler(Sampler):
    """A random order that depends on ``(seed, epoch)`` only, as ``DistributedSampler``'s.

    :func:`~pyro_monteclora.fit` calls :meth:`set_epoch` before each epoch, so a run resumed at
    epoch ``k`` sees the same order as one that never stopped.

    >>> sampler = EpochShuffleSampler(5, seed=0)
    >>> order = list(sampler); sampler.set_epoch(1)
    >>> sorted(order) == list(range(5)) and list(sampler) != order
    True
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class EvaluationShardSampler(Sampler):
    """Examples ``rank, rank + K, rank + 2K, ...``: every example on exactly one rank, no padding."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = list(range(rank, size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def training_sampler(size: int, seed: int = 0):
    """A shuffling sampler over ``size`` examples: this rank's ``DistributedSampler`` shard
    (order from ``(seed, epoch)``, padded to equal shards) in a process group, else
    :class:`~pyro_monteclora.data.samplers.EpochShuffleSampler`."""
    rank, world_size = world()
    if world_size == 1:
        return EpochShuffleSampler(size, seed)
    from torch.utils.data import DistributedSampler

    return DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


def evaluation_sampler(size: int):
    """This rank's :class:`EvaluationShardSampler` in a process group, else ``None`` (in order)."""
    rank, world_size = world()
    return None if world_size == 1 else EvaluationShardSampler(size, rank, world_size)
