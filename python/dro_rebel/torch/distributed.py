"""Gathering per-sample values over a ``torch.distributed`` process group.

Under data parallelism each rank holds a shard of the global batch. The robust objective is
over the global batch (SPEC.md section 3), so every rank gathers the (detached) losses of all
ranks, solves the same problem and keeps its own slice of the weights. Shards may differ in
size (the last batch of an epoch): sizes are exchanged first and the shards padded to the
largest for the collective.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.distributed as dist

__all__ = ["world_size", "gather_rows"]


def world_size() -> int:
    """The size of the default process group, 1 when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def gather_rows(tensor: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Concatenate ``tensor`` (rows along dim 0) from every rank in rank order.

    Returns the global tensor (on ``tensor``'s device, identical on every rank) and the
    offset of this rank's rows in it. Without an initialised process group, returns the
    input and 0. Not differentiable: pass detached values.
    """
    if world_size() == 1:
        return tensor, 0
    sizes = _all_sizes(tensor)
    offset = sum(sizes[: dist.get_rank()])
    largest = max(sizes)
    padded = tensor.new_zeros((largest,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    shards = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(shards, padded.contiguous())
    return torch.cat([shard[:size] for shard, size in zip(shards, sizes)]), offset


def _all_sizes(tensor: torch.Tensor) -> List[int]:
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.empty_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]
