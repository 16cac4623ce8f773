"""``RobustDPOTrainer``: offline robust DPO on (prompt, chosen, rejected) pairs.

Usage::

    from dro_rebel.torch import RobustDPOConfig, RobustDPOTrainer

    config = RobustDPOConfig(output_dir="runs/dpo", beta=0.1, ambiguity="chi2", radius=0.5,
                             learning_rate=5e-6, max_steps=200)
    trainer = RobustDPOTrainer(model, tokenizer, config, train_dataset, eval_dataset)
    trainer.train()                      # or trainer.train(resume_from_checkpoint=True)

``train_dataset`` is a ``datasets.Dataset`` (or a list of dicts) with string columns
``prompt``, ``chosen`` and ``rejected`` (plus ``config.group_column`` if set). The reference
is ``ref_model``, else the policy with its LoRA adapters disabled (``use_peft``), else a frozen
copy of the model as passed in. Each step computes the per-pair DPO loss (docs/method.md#dpo)
and reduces it with :class:`~dro_rebel.torch.RobustLoss`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from dro_rebel.torch.base_trainer import LossOutput, Trainer
from dro_rebel.torch.config import RobustDPOConfig
from dro_rebel.torch.data import encode_pairs
from dro_rebel.torch.eval_metrics import pair_metrics
from dro_rebel.torch.logprobs import completion_logprobs
from dro_rebel.torch.losses import dpo_loss

__all__ = ["RobustDPOTrainer"]


class RobustDPOTrainer(Trainer):
    """Robust DPO against a frozen reference; see the module docstring."""

    needs_reference = True
    columns = ("prompt", "chosen", "rejected")
    config: RobustDPOConfig

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: RobustDPOConfig,
        train_dataset: Any,
        eval_dataset: Any = None,
        ref_model: Optional[torch.nn.Module] = None,
    ):
        super().__init__(model, tokenizer, config, train_dataset, eval_dataset, ref_model)

    def make_batch(self, rows: Dict[str, List[Any]], indices: Optional[List[int]] = None) -> Dict[str, Any]:
        """Tokenise a dict of columns into a batch (``input_ids`` etc. of 2n rows)."""
        batch: Dict[str, Any] = encode_pairs(
            self.tokenizer, rows["prompt"], rows["chosen"], rows["rejected"], self.config.max_length
        )
        return self.label_batch(batch, rows, indices)

    def compute_losses(self, batch: Dict[str, Any]) -> LossOutput:
        with self.embeddings_captured() as embeds:
            chosen, rejected, ref_chosen, ref_rejected = self._pair_logps(batch)
        losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.config.beta)
        margins = self.config.beta * ((chosen - ref_chosen) - (rejected - ref_rejected)).detach()
        metrics = {"rewards/margins": margins.mean(), "rewards/accuracies": (margins > 0).float().mean()}
        return losses, embeds, metrics

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Mean DPO loss, accuracy and margin of the implicit reward (beta times the log-ratio
        difference) on ``eval_dataset``, per group and for the worst group too."""
        self.model.eval()
        losses, margins, groups = [], [], []
        for batch in self.eval_batches():
            with self.autocast():
                chosen, rejected, ref_chosen, ref_rejected = self._pair_logps(batch)
            losses.append(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.config.beta))
            margins.append(self.config.beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))
            if "groups" in batch:
                groups.append(batch["groups"])
        return pair_metrics(torch.cat(losses), torch.cat(margins), torch.cat(groups) if groups else None)

    def _pair_logps(self, batch: Dict[str, Any]):
        """log pi and log pi_ref of the chosen and rejected completions. The reference is
        frozen: its log-probs are computed once per batch and kept in it (``ref_logps``), so a
        step that forwards a micro-batch twice (``robust_scope="step"``) runs it once."""
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        completion_mask = batch["completion_mask"].to(self.device)
        logps = completion_logprobs(self.model, input_ids, attention_mask, completion_mask)
        ref_logps = batch.get("ref_logps")
        if ref_logps is None:
            with torch.no_grad(), self.reference() as reference:
                ref_logps = completion_logprobs(reference, input_ids, attention_mask, completion_mask)
            batch["ref_logps"] = ref_logps
        return (*logps.chunk(2), *ref_logps.chunk(2))
