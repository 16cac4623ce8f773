"""Training checkpoints that a killed run resumes from, written atomically and checksummed.

A checkpoint is one file ``checkpoint-<step>.pt`` in the run's output directory holding the
model and optimiser state, every RNG state (Python, numpy, torch CPU and CUDA), the online
adversary's group weights (``adversary="online"``) and the step.
The file is ``MAGIC`` + the SHA-256 of the payload + the payload (a ``torch.save`` stream).
It is written to a temporary file in the same directory, fsynced and moved into place with
``os.replace`` (atomic on POSIX), then the directory is fsynced: a run killed at any moment
leaves either the previous checkpoint or the new one, never half a file under the real name.
A file that is truncated or corrupted afterwards fails its checksum and raises
:class:`CorruptCheckpointError`; it is never handed to ``torch.load``.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

__all__ = [
    "CorruptCheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "rng_state",
    "set_rng_state",
]

MAGIC = b"DRO-REBEL-CKPT-1\n"
_DIGEST_SIZE = hashlib.sha256().digest_size
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupted or not a dro-rebel checkpoint."""


def save_checkpoint(output_dir: Union[str, Path], step: int, state: Dict[str, Any]) -> Path:
    """Write ``state`` (plus ``step``) to ``output_dir/checkpoint-<step>.pt`` atomically."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({**state, "step": step}, buffer)
    payload = buffer.getvalue()
    path = output_dir / f"checkpoint-{step}.pt"
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(MAGIC)
            handle.write(hashlib.sha256(payload).digest())
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(output_dir)
    return path


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its checksum first.

    Raises:
        CorruptCheckpointError: the file is truncated, corrupted or of another format.
    """
    data = Path(path).read_bytes()
    header = len(MAGIC) + _DIGEST_SIZE
    if not data.startswith(MAGIC):
        raise CorruptCheckpointError(f"{path} is not a dro-rebel checkpoint (bad header)")
    if len(data) <= header:
        raise CorruptCheckpointError(
            f"{path} is truncated ({len(data)} bytes): delete it to resume from an earlier one"
        )
    payload = data[header:]
    if hashlib.sha256(payload).digest() != data[len(MAGIC) : header]:
        raise CorruptCheckpointError(
            f"{path} fails its SHA-256 checksum (truncated or corrupted): delete it to resume "
            "from an earlier checkpoint"
        )
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def latest_checkpoint(output_dir: Union[str, Path]) -> Optional[Path]:
    """The checkpoint with the highest step in ``output_dir``, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = [(int(match.group(1)), entry) for entry in output_dir.iterdir() if (match := _NAME.match(entry.name))]
    return max(steps)[1] if steps else None


def rng_state() -> Dict[str, Any]:
    """Every RNG a training step may draw from."""
    state: Dict[str, Any] = {
        "python": random.getstate(),
        # As plain types and tensors, so that loading needs no pickle (``weights_only``).
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_tensors(state: tuple) -> tuple:
    kind, keys, position, has_gauss, cached = state
    return kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)


def _fsync_directory(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
