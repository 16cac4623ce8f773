"""Preparing a Hugging Face model for training: the device, LoRA adapters, frozen copies."""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Iterator, Optional

import torch
from torch import nn

from dro_rebel.torch.config import TrainingConfig

__all__ = ["resolve_device", "apply_lora", "frozen_copy", "adapters_disabled", "is_peft_model"]


def resolve_device(name: Optional[str]) -> torch.device:
    """``name``, or CUDA when available, else the CPU.

    Under a launcher that starts one process per GPU (``torchrun``, ``accelerate launch``: they
    set ``LOCAL_RANK``), CUDA without an index is this process's own GPU, ``cuda:LOCAL_RANK``.
    A CUDA device with an index is made the current device, so that what runs on the current
    device (NCCL collectives, ``all_gather_object``) runs on it too."""
    device = torch.device(name if name is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        return device
    local_rank = os.environ.get("LOCAL_RANK")
    if device.index is None and local_rank is not None:
        count = torch.cuda.device_count()
        if not 0 <= int(local_rank) < count:
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this process sees {count} GPU(s): start at most one process per "
                "visible GPU (torchrun --nproc_per_node, accelerate launch --num_processes)"
            )
        device = torch.device("cuda", int(local_rank))
    if device.index is not None:
        torch.cuda.set_device(device)
    return device


def apply_lora(model: nn.Module, config: TrainingConfig, task_type: str) -> nn.Module:
    """Wrap ``model`` with LoRA adapters per ``config`` (``use_peft``); otherwise return it.

    ``task_type`` is peft's: ``"CAUSAL_LM"`` for policies, ``"SEQ_CLS"`` for reward models
    (which keeps the new score head trainable).
    """
    if not config.use_peft:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("use_peft=True needs peft: pip install 'dro-rebel[peft]'") from error
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules or "all-linear",
        task_type=task_type,
    )
    return get_peft_model(model, lora)


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with no trainable parameters (a reference model)."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The base model under a LoRA-wrapped ``model``: the frozen reference at no memory cost."""
    with model.disable_adapter():
        yield model
