"""Averaging gradients over ranks in flat buckets, for steps that bypass DDP's own reducer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean_(tensors: Sequence[Tensor], bucket_numel: int = 1 << 24) -> None:
    """Average ``tensors`` over all ranks in place, packed into flat buckets.

    One all-reduce per bucket of at most ``bucket_numel`` elements (a larger tensor travels
    alone) instead of one per tensor. Every rank must pass the same shapes in the same order.
    """
    world = world_size()
    if world == 1 or not tensors:
        return
    bucket: list[Tensor] = []
    size = 0
    for tensor in tensors:
        if bucket and size + tensor.numel() > bucket_numel:
            _reduce_bucket(bucket, world)
            bucket, size = [], 0
        bucket.append(tensor)
        size += tensor.numel()
    _reduce_bucket(bucket, world)


def _reduce_bucket(bucket: list[Tensor], world: int) -> None:
    flat = torch.cat([t.reshape(-1) for t in bucket])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for tensor in bucket:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()
