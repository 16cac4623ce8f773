"""``RobustRewardTrainer``: a Bradley-Terry reward model trained on the worst case.

Usage::

    from transformers import AutoModelForSequenceClassification
    from dro_rebel.torch import RobustRewardConfig, RobustRewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    config = RobustRewardConfig(output_dir="runs/rm", ambiguity="chi2", radius=0.5,
                                group_column="preference_type", max_steps=500)
    RobustRewardTrainer(model, tokenizer, config, train_dataset, eval_dataset).train()

The model is any ``transformers`` model that maps ``input_ids``/``attention_mask`` to one
score per sequence in ``.logits`` (shape (batch, 1)): ``AutoModelForSequenceClassification``
with ``num_labels=1`` puts that linear head on an encoder (BERT-like) or a causal LM (pooled
at the last non-padding token). With ``use_peft`` the head stays fully trainable and the
backbone gets LoRA adapters. The dataset has string columns ``chosen`` and ``rejected`` and
optionally ``prompt`` (prepended to both). Each step computes the per-pair Bradley-Terry
loss (docs/method.md#bradley-terry) and reduces it with :class:`~dro_rebel.torch.RobustLoss`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from dro_rebel.torch.base_trainer import LossOutput, Trainer
from dro_rebel.torch.config import RobustRewardConfig
from dro_rebel.torch.data import encode_pairs
from dro_rebel.torch.eval_metrics import pair_metrics
from dro_rebel.torch.losses import bradley_terry_loss

__all__ = ["RobustRewardTrainer"]


class RobustRewardTrainer(Trainer):
    """Robust Bradley-Terry reward-model training; see the module docstring."""

    task_type = "SEQ_CLS"
    columns = ("chosen", "rejected")
    config: RobustRewardConfig

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: RobustRewardConfig,
        train_dataset: Any,
        eval_dataset: Any = None,
    ):
        super().__init__(model, tokenizer, config, train_dataset, eval_dataset)

    def make_batch(self, rows: Dict[str, List[Any]], indices: Optional[List[int]] = None) -> Dict[str, Any]:
        """Tokenise a dict of columns into a batch (chosen rows over rejected rows)."""
        prompts = rows.get("prompt") or [""] * len(rows["chosen"])
        batch: Dict[str, Any] = encode_pairs(
            self.tokenizer, prompts, rows["chosen"], rows["rejected"], self.config.max_length
        )
        return self.label_batch(batch, rows, indices)

    def rewards(self, batch: Dict[str, Any]) -> torch.Tensor:
        """The model's score of each of the batch's 2n sequences."""
        return self.model(
            input_ids=batch["input_ids"].to(self.device),
            attention_mask=batch["attention_mask"].to(self.device),
        ).logits.squeeze(-1)

    def compute_losses(self, batch: Dict[str, Any]) -> LossOutput:
        with self.embeddings_captured() as embeds:
            # float32 scores: the losses are reduced outside autocast, and in float16 their
            # backward overflows the gradient scaler's first scales.
            chosen, rejected = self.rewards(batch).float().chunk(2)
        margins = (chosen - rejected).detach()
        metrics = {"accuracy": (margins > 0).float().mean(), "margin": margins.mean()}
        return bradley_terry_loss(chosen, rejected), embeds, metrics

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Bradley-Terry loss, pairwise accuracy and margin on ``eval_dataset``, per group and
        for the worst group too."""
        self.model.eval()
        losses, margins, groups = [], [], []
        for batch in self.eval_batches():
            with self.autocast():
                chosen, rejected = self.rewards(batch).chunk(2)
            losses.append(bradley_terry_loss(chosen, rejected))
            margins.append(chosen - rejected)
            if "groups" in batch:
                groups.append(batch["groups"])
        return pair_metrics(torch.cat(losses), torch.cat(margins), torch.cat(groups) if groups else None)
