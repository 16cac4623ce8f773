"""Distributionally robust versions of TRL's own ``DPOTrainer`` and ``RewardTrainer``.

Usage (TRL's API, plus the ambiguity set in the config)::

    from dro_rebel.integrations.trl import DRODPOConfig, DRODPOTrainer

    args = DRODPOConfig(output_dir="runs/dpo", beta=0.1, ambiguity="chi2", radius=0.5)
    trainer = DRODPOTrainer(model=model, ref_model=ref_model, args=args,
                            train_dataset=dataset, processing_class=tokenizer)
    trainer.train()

TRL reduces its per-pair losses with ``.mean()`` inside the loss step and offers no hook for
sample weights, so these subclasses own that step: they run TRL's forward (its fused LM
head, its reference log-probs, precomputed or not, LoRA adapters off for the reference),
compute the per-pair losses, and reduce them with :class:`dro_rebel.torch.RobustLoss`
(detached worst-case weights; over the global batch when accelerate runs several
processes). They log TRL's usual metrics plus ``robust/value``, ``robust/mean``,
``robust/ess`` and ``robust/max_weight``. With ``radius=0`` the loss is TRL's own.

Supported: DPO's ``loss_type`` ``"sigmoid"`` (standard DPO), ``"hinge"`` or ``"ipo"``, one at a
time, with ``f_divergence_type="reverse_kl"`` and without ``ld_alpha``, WPO weighting or MoE
auxiliary losses; the ``kl``, ``chi2``, ``cvar`` and ``tv`` sets; the reward trainer as TRL has it
(``margin`` column and ``center_rewards_coefficient`` included). With gradient accumulation each micro-batch is its
own robust problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

from dro_rebel.torch.robust_loss import RobustLoss

__all__ = ["DRODPOConfig", "DRODPOTrainer", "DRORewardConfig", "DRORewardTrainer"]

_SUPPORTED_DPO_LOSSES = ("sigmoid", "hinge", "ipo")


@dataclass
class _RobustFields:
    """The ambiguity set, as in :class:`dro_rebel.torch.TrainingConfig`."""

    ambiguity: str = field(default="chi2", metadata={"help": "Ambiguity set: 'kl', 'chi2', 'cvar' or 'tv'."})
    # Union[float, str]: HfArgumentParser reads it as a string from the command line, and
    # robust_loss() turns a numeric one back into a number.
    radius: Union[float, str, None] = field(
        default=None,
        metadata={
            "help": "Size of the set; None with no penalty/alpha means 0 (TRL's loss). 'calibrated' (chi2, kl): "
            "q / (2n) per batch, an upper confidence bound on the mean loss (docs/method.md#calibrated-radius)."
        },
    )
    confidence: Optional[float] = field(
        default=None, metadata={"help": "Level of radius='calibrated', in (0.5, 1); None: 0.95."}
    )
    penalty: Optional[float] = field(default=None, metadata={"help": "A fixed dual variable instead of a radius."})
    alpha: Optional[float] = field(default=None, metadata={"help": "CVaR level in (0, 1] (ambiguity='cvar')."})

    def robust_loss(self) -> RobustLoss:
        if self.ambiguity == "wasserstein":
            raise ValueError(
                "the TRL trainers take the 'kl', 'chi2', 'cvar' and 'tv' sets; the Wasserstein set "
                "needs sample features or input embeddings (see dro_rebel.torch.RobustDPOTrainer)"
            )
        radius = self.radius
        if radius is None and self.penalty is None and self.alpha is None:
            radius = 0.0
        if isinstance(radius, str) and radius != "calibrated":
            try:
                radius = float(radius)
            except ValueError:
                raise ValueError(f'radius must be a number or "calibrated", got {radius!r}') from None
        return RobustLoss(
            self.ambiguity, radius=radius, penalty=self.penalty, alpha=self.alpha, confidence=self.confidence
        )


@dataclass
class DRODPOConfig(_RobustFields, DPOConfig):
    """TRL's ``DPOConfig`` plus ``ambiguity``, ``radius``, ``penalty`` and ``alpha``."""


@dataclass
class DRORewardConfig(_RobustFields, RewardConfig):
    """TRL's ``RewardConfig`` plus ``ambiguity``, ``radius``, ``penalty`` and ``alpha``."""


def _log_robust(metrics: Dict[str, list], robust: RobustLoss) -> None:
    assert robust.last is not None  # logged right after a reduction
    for key, value in robust.last.as_dict().items():
        metrics[key].append(value)


class DRODPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` with the per-pair loss reduced by the worst case; see the module
    docstring for what is supported."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, DRODPOConfig):
            raise TypeError("DRODPOTrainer needs args=DRODPOConfig(...) (TRL's DPOConfig plus the ambiguity set)")
        unsupported = []
        if len(self.loss_types) != 1 or self.loss_types[0] not in _SUPPORTED_DPO_LOSSES:
            unsupported.append(f"loss_type={self.loss_types} (one of {_SUPPORTED_DPO_LOSSES})")
        if self.f_divergence_type != "reverse_kl":
            unsupported.append(f"f_divergence_type={self.f_divergence_type!r}")
        if self.ld_alpha is not None:
            unsupported.append("ld_alpha")
        if self.use_weighting:
            unsupported.append("use_weighting")
        if self.aux_loss_enabled:
            unsupported.append("MoE auxiliary loss")
        if unsupported:
            raise ValueError(f"DRODPOTrainer does not support {', '.join(unsupported)}")
        self.robust_loss = self.args.robust_loss()

    def _compute_loss(self, model, inputs, return_outputs):
        """TRL's forward and reference log-probs, then per-pair losses, then the robust
        reduction in place of TRL's ``.mean()``."""
        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"]
        model_kwargs = {
            key: value
            for key, value in inputs.items()
            if key not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")
        }
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, use_cache=False, labels=labels, fused_lm_head=True)
        # Prompt-learning PEFT prepends virtual tokens to the outputs: keep the real positions.
        seq_len = completion_mask.size(1) - 1
        chosen_logps, rejected_logps = outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2)
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            reference = self.ref_model if self.ref_model is not None else self.model
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(reference, inputs)

        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        losses = self._per_pair_loss(chosen_logratios, rejected_logratios, completion_mask)
        loss = self.robust_loss(losses)

        metrics = self._metrics[mode]
        _log_robust(metrics, self.robust_loss)
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        gather = self.accelerator.gather
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        return (loss, outputs) if return_outputs else loss

    def _per_pair_loss(
        self, chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """TRL's per-pair loss for the supported ``loss_type`` (as in ``DPOTrainer._compute_loss``)."""
        loss_type = self.loss_types[0]
        if loss_type == "sigmoid":
            return -F.logsigmoid(self.beta * (chosen_logratios - rejected_logratios))
        if loss_type == "hinge":
            return torch.relu(1 - self.beta * (chosen_logratios - rejected_logratios))
        # IPO on per-token averages of the log-ratios, as TRL does.
        chosen_mask, rejected_mask = completion_mask.chunk(2)
        delta = chosen_logratios / chosen_mask.sum(dim=1).clamp(min=1.0) - rejected_logratios / rejected_mask.sum(
            dim=1
        ).clamp(min=1.0)
        return (delta - 1 / (2 * self.beta)) ** 2


class DRORewardTrainer(RewardTrainer):
    """TRL's ``RewardTrainer`` with the per-pair Bradley-Terry loss reduced by the worst case."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, DRORewardConfig):
            raise TypeError("DRORewardTrainer needs args=DRORewardConfig(...) (TRL's RewardConfig plus the set)")
        self.robust_loss = self.args.robust_loss()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        margin = inputs.pop("margin", None)
        outputs = model(**inputs, use_cache=False)
        rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        difference = rewards_chosen - rewards_rejected
        losses = -F.logsigmoid(difference if margin is None else difference - margin)
        loss = self.robust_loss(losses)
        if self.args.center_rewards_coefficient is not None:
            # A regulariser on the scale of the rewards, not part of the risk: kept as a plain mean.
            loss = loss + self.args.center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)

        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        metrics = self._metrics[mode]
        metrics["num_tokens"] = [self._total_train_tokens]
        _log_robust(metrics, self.robust_loss)
        with torch.no_grad():
            all_rewards = self.accelerator.gather(outputs.logits)
            metrics["min_reward"].append(all_rewards.min().item())
            metrics["mean_reward"].append(all_rewards.mean().item())
            metrics["max_reward"].append(all_rewards.max().item())
            metrics["accuracy"].append(self.accelerator.gather_for_metrics((difference > 0).float()).mean().item())
            metrics["margin"].append(self.accelerator.gather_for_metrics(difference.detach()).mean().item())
        return (loss, outputs) if return_outputs else loss
