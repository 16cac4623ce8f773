"""What the three trainers share: set-up, the optimiser step, non-finite handling,
checkpoints, logging, and the outer loop.

The outer loop (:meth:`Trainer.train`) reads top to bottom: resume, then for each step draw
a batch, take a step, log, evaluate, checkpoint. A trainer supplies four pieces:
``next_batch(step)``, ``compute_losses(batch)`` (per-sample losses, unreduced),
``evaluate()`` and ``task_type``.

A step's batch is ``gradient_accumulation_steps`` micro-batches, each forwarded and
backpropagated on its own before the one update. With ``robust_scope="step"`` (the default) the
worst case ranges over the whole step: a forward pass without gradients over its micro-batches
gives the losses, one solve gives the weights, and each micro-batch's forward and backward then
uses its slice of them (docs/method.md#accumulation). Forward passes run under
``torch.autocast`` with ``bf16``/``fp16``; the learning rate follows ``lr_scheduler_type`` with
``warmup_steps`` (transformers' schedules).

Many processes (``torchrun`` or ``accelerate launch``, one per GPU, each on ``cuda:LOCAL_RANK``):
the trainer starts the process group when the launcher asked for several processes and none is
initialised, and destroys it at the end of :meth:`Trainer.train`. With a process group, every
rank takes its ``per_device_train_batch_size * gradient_accumulation_steps`` slice of each
global batch, the robust reduction solves the problem of the global batch
(:class:`~dro_rebel.torch.RobustLoss`), gradients are averaged over the ranks before the
update, and rank 0 alone writes the log, the checkpoints (with every rank's RNG state) and the
model. Evaluation runs on every rank; rank 0 logs it.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm
from transformers import get_scheduler

from dro_rebel.torch.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dro_rebel.torch.config import TrainingConfig
from dro_rebel.torch.data import batch_indices, check_columns, group_labels, pair_rows, select_rows
from dro_rebel.torch.distributed import (
    average_gradients,
    broadcast_parameters,
    gather_objects,
    rank,
    start_process_group,
    world_size,
)
from dro_rebel.torch.jsonl import JsonlLogger
from dro_rebel.torch.model_setup import (
    adapters_disabled,
    apply_lora,
    frozen_copy,
    is_peft_model,
    resolve_device,
)
from dro_rebel.torch.reporting import Reporter, check_installed, open_reporters
from dro_rebel.torch.robust_loss import NonFiniteLossError, RobustLoss

__all__ = ["Trainer", "LossOutput"]

Metric = Union[float, torch.Tensor]
LossOutput = Tuple[torch.Tensor, Optional[List[torch.Tensor]], Dict[str, Metric]]
"""What ``compute_losses`` returns: per-sample losses (n,), the input embeddings they were
computed from (for the gradient penalty; else None), and metrics to log (numbers, or detached
0-d tensors left on the device: a step reads them all at once)."""

# Batch entries that stay on the host: group labels go to the host solve, indices are a list.
_HOST_KEYS = ("groups", "indices")


class Trainer:
    """Base class of the trainers; see the module docstring."""

    task_type = "CAUSAL_LM"
    needs_reference = False
    columns: Tuple[str, ...] = ()
    """The dataset columns the trainer reads (besides ``group_column``)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        config: TrainingConfig,
        train_dataset: Any,
        eval_dataset: Any = None,
        ref_model: Optional[nn.Module] = None,
    ):
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError(
                "the tokenizer needs a pad token and an EOS token (for many causal LMs: "
                "tokenizer.pad_token = tokenizer.eos_token)"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.check_datasets()
        self.report_backends = config.report_backends()
        check_installed(self.report_backends)
        self.device = resolve_device(config.device)
        # Under torchrun / accelerate launch: this trainer's process group, ended with its run.
        self.owns_process_group = start_process_group(self.device)
        _seed_everything(config.seed)
        self.model = apply_lora(model, config, self.task_type).to(self.device)
        if self.needs_reference and ref_model is None and not is_peft_model(self.model):
            ref_model = frozen_copy(self.model)
        self.ref_model = None if ref_model is None else ref_model.to(self.device).eval()
        self.trainable_parameters = [p for p in self.model.parameters() if p.requires_grad]
        _check_master_weights(self.trainable_parameters, config)
        self.rank, self.world_size = rank(), world_size()
        # The steps of the run: max_steps, or num_train_epochs in steps.
        self.max_steps = config.total_steps(len(train_dataset), self.world_size)
        broadcast_parameters(self.trainable_parameters)
        self.optimizer = torch.optim.AdamW(
            self.trainable_parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=config.num_warmup_steps(self.max_steps),
            num_training_steps=config.optimizer_steps(self.max_steps),
            scheduler_specific_kwargs=config.lr_scheduler_kwargs,
        )
        self.autocast_dtype = _autocast_dtype(config, self.device)
        # A pass-through unless fp16: float16 gradients underflow without a loss scale.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.fp16)
        self.robust_loss = RobustLoss(**config.robust_kwargs())
        self.output_dir = Path(config.output_dir)
        self.logger = JsonlLogger(self.output_dir / "log.jsonl")
        self.reporters: List[Reporter] = []
        self.step = 0

    def check_datasets(self) -> None:
        """An error naming a column the datasets lack (and the columns they have), now rather
        than at the first batch."""
        datasets = {"train_dataset": self.train_dataset, "eval_dataset": self.eval_dataset}
        for name, dataset in datasets.items():
            if dataset is not None:
                check_columns(dataset, name, self.columns, type(self).__name__, self.config.group_column)

    # -- the pieces each trainer supplies -------------------------------------------------

    def make_batch(self, rows: Dict[str, List[Any]], indices: Optional[List[int]] = None) -> Dict[str, Any]:
        """Tokenise a dict of dataset columns into a batch (the pair trainers)."""
        raise NotImplementedError

    def next_batch(self, step: int) -> Dict[str, Any]:
        """This rank's share of step ``step``'s global batch, through :meth:`make_batch`."""
        indices = self.step_indices(step)
        return self.make_batch(select_rows(self.train_dataset, indices), indices)

    def eval_batches(self) -> Iterator[Dict[str, Any]]:
        """``eval_dataset`` in batches of ``per_device_eval_batch_size``, through :meth:`make_batch`."""
        size = self.config.per_device_eval_batch_size
        for start in range(0, len(self.eval_dataset), size):
            indices = list(range(start, min(start + size, len(self.eval_dataset))))
            yield self.make_batch(select_rows(self.eval_dataset, indices), indices)

    def label_batch(
        self, batch: Dict[str, Any], rows: Dict[str, List[Any]], indices: Optional[List[int]]
    ) -> Dict[str, Any]:
        """Adds the rows' group labels (``group_column``) and dataset indices to a batch."""
        if self.config.group_column is not None:
            batch["groups"] = group_labels(rows[self.config.group_column])
        batch["indices"] = indices
        return batch

    def compute_losses(self, batch: Dict[str, Any]) -> LossOutput:
        raise NotImplementedError

    def num_samples(self, batch: Dict[str, Any]) -> int:
        """The samples (pairs) in a batch; REBEL counts prompts."""
        return batch["input_ids"].shape[0] // 2

    def select_samples(self, batch: Dict[str, Any], rows: Sequence[int]) -> Dict[str, Any]:
        """The part of a batch that holds the samples at positions ``rows`` (pairs here)."""
        return pair_rows(batch, rows)

    def evaluate(self) -> Dict[str, float]:
        raise NotImplementedError

    def step_indices(self, step: int) -> List[int]:
        """The training-set rows of this rank's share of step ``step``'s global batch."""
        size = self.config.per_device_train_batch_size * self.config.gradient_accumulation_steps
        rows = batch_indices(len(self.train_dataset), size * self.world_size, step, self.config.seed)
        return rows[self.rank * size : (self.rank + 1) * size]

    def log(self, record: Dict[str, Any]) -> None:
        """Append ``record`` to ``log.jsonl`` and send it to ``report_to`` (rank 0 only)."""
        if self.rank == 0:
            self.logger.write(record)
            for reporter in self.reporters:
                reporter.log(record)

    # -- the loop --------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: Union[bool, str, Path, None] = None) -> Dict[str, float]:
        """Run to :attr:`max_steps`; return the last step's metrics.

        Args:
            resume_from_checkpoint: ``True`` resumes from the latest checkpoint in
                ``output_dir`` (starting fresh if there is none), a path from that file.
        """
        config = self.config
        if resume_from_checkpoint:
            path = latest_checkpoint(self.output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
            if path is not None:
                self.load(path)
            elif self.rank == 0:
                # Killed before its first checkpoint: the run starts over, so the lines its
                # first attempt logged are retaken too.
                self.logger.drop_after(0)
        metrics: Dict[str, float] = {}
        if self.rank == 0:
            self.reporters = open_reporters(self.report_backends, self.output_dir, config.to_dict())
        progress = tqdm(
            total=self.max_steps,
            initial=self.step,
            disable=config.disable_tqdm or self.rank != 0,
            desc=type(self).__name__,
        )
        while self.step < self.max_steps:
            step = self.step + 1
            metrics = self.optimise(self.next_batch(step))
            self.step = step
            progress.update(1)
            progress.set_postfix(loss=metrics.get("loss"))
            if step % config.logging_steps == 0 or step == self.max_steps:
                self.log({"step": step, **metrics})
            if (
                config.eval_steps
                and self.eval_dataset is not None
                and (step % config.eval_steps == 0 or step == self.max_steps)
            ):
                self.log({"step": step, **self.evaluate()})
            if (config.save_steps and step % config.save_steps == 0) or step == self.max_steps:
                self.save(step)
        progress.close()
        for reporter in self.reporters:
            reporter.close()
        self.reporters = []
        if self.rank == 0:
            self.save_model(self.output_dir / "model")
        self.close()
        return metrics

    def close(self) -> None:
        """Destroy the process group this trainer started (under a launcher), if any; called
        at the end of :meth:`train`."""
        if self.owns_process_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.owns_process_group = False

    def optimise(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """Everything one step of the run does with its batch: one :meth:`train_step` here;
        REBEL takes several epochs over its rollout."""
        return self.train_step(batch)

    def samples_seen(self) -> int:
        """Samples drawn by every process up to and including the current step."""
        config = self.config
        return (
            (self.step + 1) * config.per_device_train_batch_size * config.gradient_accumulation_steps * self.world_size
        )

    def train_step(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """One optimiser step on ``batch``: per-sample losses, robust weights, backward (one
        micro-batch at a time), clip, update, learning-rate schedule. Returns the metrics
        (``loss`` is the robust loss before the update, averaged over the micro-batches'
        problems with ``robust_scope="micro_batch"``; ``skipped`` is 1.0 for a step dropped for
        a non-finite value)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.robust_loss.radius = self.config.radius_at(self.samples_seen())
        # Each micro-batch is copied to the device once, however many passes the step makes over it.
        parts = [self.to_device(part) for part in self.micro_batches(batch)]
        step_weights: Optional[Sequence[torch.Tensor]] = None
        if self.config.robust_scope == "step" and len(parts) > 1:
            try:
                step_weights = self.step_weights(parts)
            except NonFiniteLossError as error:
                return self._nonfinite("loss", error.indices, batch)
        stats: List[Dict[str, float]] = []
        part_metrics: List[Dict[str, float]] = []
        for i, part in enumerate(parts):
            with self.autocast():
                losses, inputs_embeds, metrics = self.compute_losses(part)
            if step_weights is not None:
                loss = RobustLoss.reduce(losses, step_weights[i])
            else:
                try:
                    loss = self.robust_loss(losses, groups=part.get("groups"), inputs_embeds=inputs_embeds)
                except NonFiniteLossError as error:
                    return self._nonfinite("loss", error.indices, part)
                loss = loss / len(parts)
                stats.append(self._last_stats())
            self.scaler.scale(loss).backward()
            part_metrics.append(metrics)
        if step_weights is not None:
            stats.append(self._last_stats())
        average_gradients(self.trainable_parameters)
        self.scaler.unscale_(self.optimizer)
        grad_norm_tensor = torch.nn.utils.clip_grad_norm_(self.trainable_parameters, self.config.max_grad_norm)
        # One device-to-host read for the step: the gradient norm with every micro-batch's metrics.
        grad_norm, part_metrics = _read_on_host(grad_norm_tensor, part_metrics)
        if not np.isfinite(grad_norm):
            if self.scaler.is_enabled():
                # fp16 overflow: the scaler skips the update and lowers its scale.
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                return {**_mean(stats), "loss": _mean(stats)["robust/value"], "skipped": 1.0}
            return self._nonfinite("gradient", [], batch)
        learning_rate = self.lr_scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_scheduler.step()
        robust = _mean(stats)
        return {
            "loss": robust["robust/value"],
            "grad_norm": grad_norm,
            "learning_rate": learning_rate,
            "skipped": 0.0,
            **robust,
            **_mean(part_metrics),
        }

    def micro_batches(self, batch: Dict[str, Any]) -> List[Dict[str, Any]]:
        """``batch`` in ``gradient_accumulation_steps`` parts of (nearly) equal size, in order."""
        parts = self.config.gradient_accumulation_steps
        if parts == 1:
            return [batch]
        rows = np.array_split(np.arange(self.num_samples(batch)), parts)
        return [self.select_samples(batch, part.tolist()) for part in rows if len(part)]

    def to_device(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """``batch`` with its tensors on the training device (group labels stay on the host,
        where the solve reads them)."""
        return {
            key: value.to(self.device, non_blocking=True)
            if isinstance(value, torch.Tensor) and key not in _HOST_KEYS
            else value
            for key, value in batch.items()
        }

    @torch.no_grad()
    def step_weights(self, parts: Sequence[Dict[str, Any]]) -> Sequence[torch.Tensor]:
        """The worst case over every sample of a step (every micro-batch, every rank), each
        micro-batch's slice of the weights in order. The losses come from a forward pass
        without gradients, in training mode as the backward's forward is."""
        losses = []
        for part in parts:
            with self.autocast():
                losses.append(self.compute_losses(part)[0].detach())
        groups = None
        if parts[0].get("groups") is not None:
            groups = torch.cat([torch.as_tensor(part["groups"]) for part in parts])
        weights = self.robust_loss.weights(torch.cat(losses), groups=groups)
        return weights.split([len(part_losses) for part_losses in losses])

    def autocast(self) -> ContextManager[Any]:
        """``torch.autocast`` in the config's half precision, or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _last_stats(self) -> Dict[str, float]:
        stats = self.robust_loss.last
        assert stats is not None  # set by the reduction just made
        return stats.as_dict()

    def _nonfinite(self, what: str, indices: Sequence[int], batch: Dict[str, Any]) -> Dict[str, float]:
        """Report a NaN/inf loss or gradient; skip the step or stop, as configured."""
        step = self.step + 1
        rows = batch.get("indices")
        if rows is not None:
            # Positions are in the global batch: the dataset rows of every rank, in rank order.
            rows = [row for shard in gather_objects(list(rows)) for row in shard]
        where = f" at batch position(s) {list(indices)}" if indices else ""
        if indices and rows is not None:
            where += f" (dataset rows {[rows[i] for i in indices]})"
        message = f"step {step}: non-finite {what}{where}"
        self.optimizer.zero_grad(set_to_none=True)
        self.log({"step": step, "event": f"nonfinite_{what}", "positions": list(indices), "message": message})
        if self.config.nonfinite == "stop":
            raise FloatingPointError(message + "; stopping (nonfinite='stop')")
        warnings.warn(message + "; step skipped (nonfinite='skip')", RuntimeWarning, stacklevel=2)
        return {"loss": float("nan"), "skipped": 1.0}

    # -- shared helpers for the trainers ---------------------------------------------------

    def reference(self) -> ContextManager[nn.Module]:
        """The frozen reference model: ``ref_model``, or the policy with its LoRA adapters off."""
        if self.ref_model is not None:
            return contextlib.nullcontext(self.ref_model)
        return adapters_disabled(self.model)

    @contextlib.contextmanager
    def embeddings_captured(self) -> Iterator[Optional[List[torch.Tensor]]]:
        """Inside the block, the policy's input-embedding outputs are collected (for the
        gradient penalty, which differentiates the losses with respect to them) and made
        differentiable even where the embedding matrix is frozen (LoRA). Attention runs on
        the math kernel, the one whose backward is itself differentiable (the penalty needs a
        double backward). Yields None, and changes nothing, when the config asks for no
        gradient penalty."""
        if self.config.gradient_penalty is None:
            yield None
            return
        captured: List[torch.Tensor] = []

        def capture(module: nn.Module, inputs: Any, output: torch.Tensor) -> Optional[torch.Tensor]:
            if not torch.is_grad_enabled():
                return None  # a reference pass (LoRA adapters off) through the same module
            if not output.requires_grad:
                output = output.detach().requires_grad_()
            captured.append(output)
            return output

        handle = self.model.get_input_embeddings().register_forward_hook(capture)
        try:
            with sdpa_kernel(SDPBackend.MATH):
                yield captured
        finally:
            handle.remove()

    # -- checkpoints -----------------------------------------------------------------------

    def save(self, step: int) -> Optional[Path]:
        """Checkpoint the trainable parameters, the optimiser, every RNG of every rank, the
        online adversary's group weights (the same on every rank) and the step. Every rank must
        call it; rank 0 writes the file and returns its path."""
        rng = gather_objects(rng_state())
        if self.rank != 0:
            return None
        state = {
            "model": {name: p.detach() for name, p in self.model.named_parameters() if p.requires_grad},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "config": self.config.to_dict(),
        }
        if self.robust_loss.adversary is not None:
            state["adversary"] = self.robust_loss.adversary.state_dict()
        return save_checkpoint(self.output_dir, step, state)

    def load(self, path: Union[str, Path]) -> None:
        """Restore a checkpoint written by :meth:`save` (checksum verified first)."""
        state = load_checkpoint(path)
        trainable = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        if set(state["model"]) != set(trainable):
            raise ValueError(
                f"{path} was written for other trainable parameters (a different model, or "
                "LoRA on/off): it cannot be resumed with this model"
            )
        with torch.no_grad():
            for name, value in state["model"].items():
                trainable[name].copy_(value)
        if len(state["rng"]) != self.world_size:
            raise ValueError(
                f"{path} was written by {len(state['rng'])} process(es): resume it with as many, not {self.world_size}"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        # Checkpoints written before the schedule and the loss scale existed have neither.
        if "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.robust_loss.adversary is not None:
            if "adversary" not in state:
                raise ValueError(
                    f"{path} has no online adversary state (written with adversary='exact'): "
                    "resume it with the adversary it was trained with"
                )
            self.robust_loss.adversary.load_state_dict(state["adversary"])
        set_rng_state(state["rng"][self.rank])
        self.step = int(state["step"])
        if self.rank == 0:
            self.logger.drop_after(self.step)

    def save_model(self, directory: Union[str, Path]) -> None:
        """The trained model (and tokenizer) in Hugging Face format."""
        self.model.save_pretrained(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)


def _autocast_dtype(config: TrainingConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype ``bf16``/``fp16`` ask for, checked against the device."""
    if not (config.bf16 or config.fp16):
        return None
    name, dtype = ("bf16", torch.bfloat16) if config.bf16 else ("fp16", torch.float16)
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"{name}=True: torch has no autocast on {device.type}")
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"bf16=True: {torch.cuda.get_device_name(device)} has no bfloat16; use fp16=True")
    return dtype


def _check_master_weights(parameters: Sequence[torch.Tensor], config: TrainingConfig) -> None:
    """``bf16``/``fp16`` train float32 master weights under autocast: half-precision trainable
    parameters would be updated in half precision (most bf16 updates round away; a gradient
    scaler cannot unscale fp16 gradients)."""
    if not (config.bf16 or config.fp16):
        return
    half = sorted({str(p.dtype) for p in parameters if p.dtype in (torch.float16, torch.bfloat16)})
    if half:
        name = "bf16" if config.bf16 else "fp16"
        raise ValueError(
            f"{name}=True trains float32 weights under autocast, but the model's trainable parameters are "
            f"{', '.join(half)}: load it in float32 (from_pretrained(..., torch_dtype=torch.float32), or "
            f"model.float()); autocast runs the forward in half precision"
        )


def _read_on_host(
    grad_norm: torch.Tensor, records: Sequence[Dict[str, Metric]]
) -> Tuple[float, List[Dict[str, float]]]:
    """The gradient norm and the records' tensor values as numbers, read in one copy."""
    tensors = [value for record in records for value in record.values() if isinstance(value, torch.Tensor)]
    stacked = torch.stack(
        [grad_norm.detach().float(), *(value.detach().float().to(grad_norm.device) for value in tensors)]
    )
    values = iter(stacked.tolist())
    norm = next(values)
    read = [
        {key: next(values) if isinstance(value, torch.Tensor) else float(value) for key, value in record.items()}
        for record in records
    ]
    return norm, read


def _mean(records: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Each key's mean over the records that have it (the micro-batches' metrics)."""
    keys = dict.fromkeys(key for record in records for key in record)
    return {key: float(np.mean([record[key] for record in records if key in record])) for key in keys}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
