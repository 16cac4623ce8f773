"""Collectives over a ``torch.distributed`` process group, each a no-op without one.

Under data parallelism each rank holds a shard of the global batch. The robust objective is
over the global batch (docs/method.md#data-parallelism), so every rank gathers the (detached) losses of all
ranks, solves the same problem and keeps its own slice of the weights. Shards may differ in
size (the last batch of an epoch): sizes are exchanged first and the shards padded to the
largest for the collective.

The trainers use the rest for plain data parallelism: the same initial parameters on every
rank, gradients averaged after each backward, one RNG state per rank in the checkpoints.
Launched by ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1 in the environment), a
trainer starts the process group itself (:func:`start_process_group`) and destroys it at the
end of its run.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist

BUCKET_BYTES = 25 * 2**20
"""The size of the buckets gradients are averaged in (DDP's default ``bucket_cap_mb``)."""

__all__ = [
    "world_size",
    "rank",
    "start_process_group",
    "gather_rows",
    "gather_objects",
    "average_gradients",
    "broadcast_parameters",
]


def world_size() -> int:
    """The size of the default process group, 1 when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank in the default process group, 0 when none is initialised."""
    return dist.get_rank() if world_size() > 1 else 0


def start_process_group(device: torch.device) -> bool:
    """Start the default process group when a launcher asked for several processes
    (``WORLD_SIZE`` > 1, with ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, as ``torchrun`` and
    ``accelerate launch`` set them) and none is initialised: NCCL for a CUDA ``device``, gloo
    otherwise. Returns whether it started one (the caller then destroys it)."""
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


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


def gather_objects(value: Any) -> List[Any]:
    """``value`` from every rank, in rank order (picklable objects)."""
    if world_size() == 1:
        return [value]
    values: List[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def average_gradients(parameters: Iterable[torch.Tensor], bucket_bytes: Optional[int] = None) -> None:
    """Replace each gradient by its mean over the ranks (what DDP does, without overlap).

    The gradients are all-reduced in buckets of at most ``bucket_bytes`` (:data:`BUCKET_BYTES`
    by default), as DDP does: a gradient that fills a bucket alone is reduced in place, smaller
    ones are flattened together, so the memory this takes is one bucket, not a second copy of
    every gradient."""
    ranks = world_size()
    if ranks == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    for bucket in _buckets(grads, BUCKET_BYTES if bucket_bytes is None else bucket_bytes):
        if len(bucket) == 1 and bucket[0].is_contiguous():
            dist.all_reduce(bucket[0])
            bucket[0].div_(ranks)
            continue
        flat = torch.cat([grad.reshape(-1) for grad in bucket])
        dist.all_reduce(flat)
        flat.div_(ranks)
        for grad, chunk in zip(bucket, flat.split([grad.numel() for grad in bucket])):
            grad.copy_(chunk.view_as(grad))


def _buckets(grads: List[torch.Tensor], bucket_bytes: int) -> Iterator[List[torch.Tensor]]:
    """Consecutive gradients of one dtype and device, in groups of at most ``bucket_bytes``
    (a larger gradient is a bucket of its own)."""
    bucket: List[torch.Tensor] = []
    size = 0
    for grad in grads:
        nbytes = grad.numel() * grad.element_size()
        if bucket and (
            size + nbytes > bucket_bytes or grad.dtype != bucket[0].dtype or grad.device != bucket[0].device
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(grad)
        size += nbytes
    if bucket:
        yield bucket


def broadcast_parameters(parameters: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values into every rank's ``parameters``."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for parameter in parameters:
            dist.broadcast(parameter.data, src=0)
