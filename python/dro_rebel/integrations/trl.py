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
``robust/ess`` and ``robust/max_weight``. With ``ambiguity="none"`` (the default) or ``radius=0``
the loss is TRL's own; a set needs its size (``radius``, ``penalty`` or ``alpha``), as
``robust_weights`` does, and the config checks it when it is built.

Groups (``group_column="preference_type"``, a dataset column of integer or string labels): the
column is kept through TRL's tokenisation and collation and reaches the loss step as integer
``groups``; the worst case then ranges over mixtures of the groups (docs/method.md#groups).
``group_column="prompt"`` is DRO over prompts when a prompt has several pairs
(docs/method.md#prompt-dro).

The online adversary (``adversary="online"``, with ``group_column``): Sagawa et al.'s group
weights, updated by exponentiated gradient on each optimiser step's group losses (computed from
the gathered batch, so the same on every process) instead of each batch's exact worst case
(docs/method.md#online-group-adversary). Evaluation weighs with them without updating them;
they are saved in each checkpoint folder as ``robust_adversary.json`` and restored on resume.

Gradient accumulation (``robust_scope``): with ``"step"`` (the default) the worst case ranges
over every pair of the optimiser step, across its ``gradient_accumulation_steps``
micro-batches and every process. Before the step's micro-batches are backpropagated, one forward
pass without gradients over them gives their losses (and the reference log-probs, which
the backward pass then reuses), one solve on the gathered losses gives the weights, and each
micro-batch is backpropagated with its slice: one extra forward pass of the policy per step,
and none without accumulation. ``"micro_batch"`` makes each micro-batch (across processes) its
own problem, at no extra cost (docs/method.md#accumulation).

Supported: DPO's ``loss_type`` ``"sigmoid"`` (standard DPO), ``"hinge"`` or ``"ipo"``, one at a
time, with ``f_divergence_type="reverse_kl"`` and without ``ld_alpha``, WPO weighting or MoE
auxiliary losses; the ``kl``, ``chi2``, ``cvar`` and ``tv`` sets; the reward trainer as TRL has it
(``margin`` column and ``center_rewards_coefficient`` included); TRL's precomputed reference
log-probabilities and LoRA (``peft_config``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

from dro_rebel.torch.config import NOMINAL, ROBUST_SCOPES, check_adversary, check_ambiguity_set
from dro_rebel.torch.data import group_labels
from dro_rebel.torch.robust_loss import RobustLoss

__all__ = ["DRODPOConfig", "DRODPOTrainer", "DRORewardConfig", "DRORewardTrainer"]

_SUPPORTED_DPO_LOSSES = ("sigmoid", "hinge", "ipo")
# What the step scope stores in each micro-batch for its backward pass: the weights and, for DPO,
# the reference log-probs of the scoring pass, as computed (float32). Kept out of transformers' input casting
# (under DeepSpeed it casts every floating input to the model's dtype: in bf16 a log-prob near
# -200 would be rounded to a step of 1).
_STEP_KEYS = ("robust_weights", "robust_ref_chosen_logps", "robust_ref_rejected_logps")
# Entries the robust trainers add to a batch, which the model never sees.
_ROBUST_KEYS = ("groups", *_STEP_KEYS)
# The online adversary's state in a checkpoint folder, beside TRL's files.
ADVERSARY_STATE_NAME = "robust_adversary.json"


@dataclass
class _RobustFields:
    """The ambiguity set, as in :class:`dro_rebel.torch.TrainingConfig`."""

    ambiguity: str = field(
        default=NOMINAL,
        metadata={
            "help": "Ambiguity set: 'kl', 'chi2', 'cvar' or 'tv', sized by radius, penalty or alpha as "
            "robust_weights takes them; 'none' (the default): TRL's own loss."
        },
    )
    # Union[float, str]: HfArgumentParser reads it as a string from the command line, and
    # __post_init__ turns a numeric one back into a number.
    radius: Union[float, str, None] = field(
        default=None,
        metadata={
            "help": "Size of the set; 0 is TRL's loss. 'calibrated' (chi2, kl): q / (2n) per batch, an upper "
            "confidence bound on the mean loss (docs/method.md#calibrated-radius)."
        },
    )
    confidence: Optional[float] = field(
        default=None, metadata={"help": "Level of radius='calibrated', in (0.5, 1); None: 0.95."}
    )
    penalty: Optional[float] = field(default=None, metadata={"help": "A fixed dual variable instead of a radius."})
    alpha: Optional[float] = field(default=None, metadata={"help": "CVaR level in (0, 1] (ambiguity='cvar')."})
    group_column: Optional[str] = field(
        default=None,
        metadata={
            "help": "A dataset column of group labels, integers or strings ('prompt': DRO over prompts): the worst "
            "case ranges over mixtures of the groups (docs/method.md#groups). None: over the pairs."
        },
    )
    adversary: str = field(
        default="exact",
        metadata={
            "help": "'exact': each step's exact worst case over the set. 'online': Sagawa et al.'s online group "
            "DRO (docs/method.md#online-group-adversary), group weights that persist across steps, saved beside "
            "TRL's checkpoint files; needs group_column and no radius, penalty, alpha or confidence."
        },
    )
    adversary_step_size: float = field(
        default=0.01, metadata={"help": "eta_q of the online adversary's q_g <- q_g exp(eta_q L_g), >= 0."}
    )
    robust_scope: str = field(
        default="step",
        metadata={
            "help": "'step': one worst case over every pair of the optimiser step, across its accumulation "
            "micro-batches and processes (one extra forward pass without gradients per step when "
            "gradient_accumulation_steps > 1). 'micro_batch': each micro-batch its own problem."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.radius, str) and self.radius != "calibrated":
            try:
                self.radius = float(self.radius)
            except ValueError:
                pass  # not a number: the check below names it
        check_adversary(self)
        if self.adversary != "online":
            check_ambiguity_set(self.ambiguity, self.radius, self.penalty, self.alpha, self.confidence)
        if self.ambiguity == "wasserstein":
            raise ValueError(
                "the TRL trainers take the 'kl', 'chi2', 'cvar' and 'tv' sets; the Wasserstein set "
                "needs sample features or input embeddings (see dro_rebel.torch.RobustDPOTrainer)"
            )
        if self.robust_scope not in ROBUST_SCOPES:
            raise ValueError(f"robust_scope must be one of {ROBUST_SCOPES}, got {self.robust_scope!r}")
        super().__post_init__()

    def robust_loss(self) -> RobustLoss:
        """The reduction this config asks for (``ambiguity="none"``: the chi-square set of
        radius 0, whose weights are uniform: TRL's loss)."""
        if self.adversary == "online":
            return RobustLoss(adversary="online", adversary_step_size=self.adversary_step_size)
        if self.ambiguity == NOMINAL:
            return RobustLoss("chi2", radius=0.0)
        return RobustLoss(
            self.ambiguity, radius=self.radius, penalty=self.penalty, alpha=self.alpha, confidence=self.confidence
        )


@dataclass
class DRODPOConfig(_RobustFields, DPOConfig):
    """TRL's ``DPOConfig`` plus the ambiguity set (``ambiguity``, ``radius``, ``confidence``,
    ``penalty``, ``alpha``), ``group_column``, ``robust_scope`` and ``adversary``."""


@dataclass
class DRORewardConfig(_RobustFields, RewardConfig):
    """TRL's ``RewardConfig`` plus the ambiguity set (``ambiguity``, ``radius``, ``confidence``,
    ``penalty``, ``alpha``), ``group_column``, ``robust_scope`` and ``adversary``."""


def _log_robust(metrics: Dict[str, list], robust: RobustLoss) -> None:
    assert robust.last is not None  # logged right after a solve
    for key, value in robust.last.as_dict().items():
        metrics[key].append(value)


class _GroupCollator:
    """TRL's collator, with the group column of the examples as integer labels (``groups``):
    integers as they are, strings hashed alike on every process (:func:`group_labels`)."""

    def __init__(self, collator: Callable[[List[Dict[str, Any]]], Dict[str, Any]], column: str):
        self.collator = collator
        self.column = column

    def __call__(self, examples: List[Dict[str, Any]]) -> Dict[str, Any]:
        if self.column not in examples[0]:
            raise KeyError(f"group_column={self.column!r} is not a column of the dataset (keys: {sorted(examples[0])})")
        labels = [example[self.column] for example in examples]
        if not all(isinstance(label, (int, np.integer, str)) and not isinstance(label, bool) for label in labels):
            raise ValueError(
                f"group_column={self.column!r} must hold one integer or string label per pair, got {labels[:4]!r}..."
            )
        batch = self.collator([{k: v for k, v in example.items() if k != self.column} for example in examples])
        batch["groups"] = group_labels(labels)
        return batch


class _RobustTrainerMixin:
    """What both TRL subclasses share: the group column through TRL's data pipeline, the
    robust reduction of a micro-batch, and the one worst case per optimiser step.

    A subclass supplies ``_pair_losses(model, inputs)``: the per-pair losses of a batch
    (shape (n,), with gradient when enabled) and a dict of what its loss step logs (the model
    outputs under ``"outputs"``), with no side effects."""

    args: Any
    accelerator: Any
    robust_loss: RobustLoss

    def _init_robust(self) -> None:
        self.robust_loss = self.args.robust_loss()
        column = self.args.group_column
        if column is not None:
            self._check_group_column(column)
            self.data_collator = _GroupCollator(self.data_collator, column)

    def _check_group_column(self, column: str) -> None:
        """Checked here, not at the first batch of training or of an evaluation hours later."""
        evaluation = getattr(self, "eval_dataset", None)
        named = {"train_dataset": self.train_dataset}
        if isinstance(evaluation, dict):
            named.update({f"eval_dataset[{key!r}]": value for key, value in evaluation.items()})
        elif evaluation is not None:
            named["eval_dataset"] = evaluation
        for name, dataset in named.items():
            names = getattr(dataset, "column_names", None)
            if names is not None and column not in names:
                raise ValueError(f"group_column={column!r} is not a column of {name} (columns: {names})")

    def _set_signature_columns_if_needed(self) -> None:
        # remove_unused_columns keeps TRL's columns only: add the group column to them.
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        column = self.args.group_column
        if column is not None and column not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, column]

    def _pair_losses(self, model: Any, inputs: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        raise NotImplementedError

    def _prepare_inputs(self, inputs: Dict[str, Any]) -> Dict[str, Any]:
        """transformers' preparation of a batch, except for what the step scope stored in it
        (``_STEP_KEYS``), which moves to the device in its own dtype."""
        kept = {key: inputs[key] for key in _STEP_KEYS if key in inputs}
        if not kept:
            return super()._prepare_inputs(inputs)  # type: ignore[misc]
        prepared = super()._prepare_inputs({k: v for k, v in inputs.items() if k not in kept})  # type: ignore[misc]
        prepared.update({key: value.to(self.args.device) for key, value in kept.items()})
        return prepared

    def _robust_reduce(self, losses: torch.Tensor, inputs: Dict[str, Any], metrics: Dict[str, list]) -> torch.Tensor:
        """The robust loss of a micro-batch, in the scale TRL's ``training_step`` expects
        (it divides by the number of micro-batches)."""
        weights = inputs.get("robust_weights")
        if weights is None:
            # The online adversary updates its group weights on training batches only.
            self.robust_loss.train(self.model.training)
            loss = self.robust_loss(losses, groups=inputs.get("groups"))
            _log_robust(metrics, self.robust_loss)
            return loss
        # This micro-batch's share of the step's one problem: training_step divides it by the
        # number of micro-batches, and the step sums them.
        return RobustLoss.reduce(losses, weights) * self.current_gradient_accumulation_steps

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any):
        """transformers fetches every micro-batch of an optimiser step here, before any of
        them is backpropagated: with ``robust_scope="step"`` and more than one micro-batch,
        solve the step's worst case now and hand each micro-batch its slice of the weights."""
        batch_samples, num_items_in_batch = super().get_batch_samples(  # type: ignore[misc]
            epoch_iterator, num_batches, device
        )
        if self.args.robust_scope == "step" and len(batch_samples) > 1:
            self._solve_over_step(batch_samples)
        return batch_samples, num_items_in_batch

    @torch.no_grad()
    def _solve_over_step(self, batch_samples: Sequence[Dict[str, Any]]) -> None:
        model = self.model_wrapped
        model.train()
        losses, groups = [], []
        for batch in batch_samples:
            inputs = self._prepare_inputs(batch)
            with self.compute_loss_context_manager():
                part, scored = self._pair_losses(model, inputs)
            losses.append(part.detach())
            groups.append(inputs.get("groups"))
            self._keep_from_scoring(batch, scored)
        self.robust_loss.train()
        weights = self.robust_loss.weights(torch.cat(losses), groups=None if groups[0] is None else torch.cat(groups))
        for batch, part in zip(batch_samples, weights.split([len(x) for x in losses])):
            batch["robust_weights"] = part
        _log_robust(self._metrics["train"], self.robust_loss)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """TRL's checkpoint, plus the online adversary's group weights beside its files (the
        same on every process: the main one writes them), as TRL keeps its own extra state."""
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        if self.robust_loss.adversary is not None and self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            (folder / ADVERSARY_STATE_NAME).write_text(json.dumps(self.robust_loss.adversary.state_dict()))

    def _load_optimizer_and_scheduler(self, checkpoint: Optional[str]) -> None:
        """On resume, TRL's optimiser and schedule, then the online adversary's group weights."""
        super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
        if checkpoint is None or self.robust_loss.adversary is None:
            return
        path = Path(checkpoint) / ADVERSARY_STATE_NAME
        if not path.is_file():
            raise ValueError(
                f"{checkpoint} has no {ADVERSARY_STATE_NAME} (written with adversary='exact', or with "
                "save_only_model=True): resume it with the adversary it was trained with"
            )
        self.robust_loss.adversary.load_state_dict(json.loads(path.read_text()))

    def _keep_from_scoring(self, batch: Dict[str, Any], scored: Dict[str, Any]) -> None:
        """Put into ``batch`` what the scoring pass computed that the backward pass can reuse
        (DPO: the reference log-probs)."""


class DRODPOTrainer(_RobustTrainerMixin, DPOTrainer):
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
        self._init_robust()

    def compute_ref_log_probs(self, model, inputs):
        # TRL passes every key but its own to the model: leave out the robust ones.
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k not in _ROBUST_KEYS})

    def _pair_losses(self, model, inputs):
        """TRL's forward and reference log-probs (from the batch when precomputed, or kept
        from the step's scoring pass), then the per-pair losses."""
        completion_mask = inputs["completion_mask"]
        model_kwargs = {
            key: value
            for key, value in inputs.items()
            if key not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps", *_ROBUST_KEYS)
        }
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, use_cache=False, labels=labels, fused_lm_head=True)
        # Prompt-learning PEFT prepends virtual tokens to the outputs: keep the real positions.
        seq_len = completion_mask.size(1) - 1
        chosen_logps, rejected_logps = outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2)
        if "robust_ref_chosen_logps" in inputs:
            ref_logps = (inputs["robust_ref_chosen_logps"], inputs["robust_ref_rejected_logps"])
        elif "ref_chosen_logps" in inputs:
            ref_logps = (inputs["ref_chosen_logps"], inputs["ref_rejected_logps"])
        else:
            reference = self.ref_model if self.ref_model is not None else self.model
            ref_logps = self.compute_ref_log_probs(reference, inputs)
        chosen_logratios = chosen_logps - ref_logps[0]
        rejected_logratios = rejected_logps - ref_logps[1]
        losses = self._per_pair_loss(chosen_logratios, rejected_logratios, completion_mask)
        return losses, {
            "outputs": outputs,
            "logps": (chosen_logps, rejected_logps),
            "ref_logps": ref_logps,
            "logratios": (chosen_logratios, rejected_logratios),
        }

    def _keep_from_scoring(self, batch, scored):
        # The reference is frozen: the backward pass reuses the scoring pass's log-probs.
        if "ref_chosen_logps" not in batch:
            batch["robust_ref_chosen_logps"], batch["robust_ref_rejected_logps"] = scored["ref_logps"]

    def _compute_loss(self, model, inputs, return_outputs):
        """Per-pair losses, then the robust reduction in place of TRL's ``.mean()``."""
        mode = "train" if self.model.training else "eval"
        losses, scored = self._pair_losses(model, inputs)
        metrics = self._metrics[mode]
        loss = self._robust_reduce(losses, inputs, metrics)
        chosen_logratios, rejected_logratios = scored["logratios"]
        chosen_logps, rejected_logps = scored["logps"]
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        gather = self.accelerator.gather
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        return (loss, scored["outputs"]) if return_outputs else loss

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


class DRORewardTrainer(_RobustTrainerMixin, RewardTrainer):
    """TRL's ``RewardTrainer`` with the per-pair Bradley-Terry loss reduced by the worst case."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, DRORewardConfig):
            raise TypeError("DRORewardTrainer needs args=DRORewardConfig(...) (TRL's RewardConfig plus the set)")
        self._init_robust()

    def _pair_losses(self, model, inputs):
        """The model's scores of the chosen and rejected sequences, then the per-pair
        Bradley-Terry losses (less the ``margin`` column when there is one)."""
        model_kwargs = {key: value for key, value in inputs.items() if key not in ("margin", *_ROBUST_KEYS)}
        outputs = model(**model_kwargs, use_cache=False)
        rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        difference = rewards_chosen - rewards_rejected
        margin = inputs.get("margin")
        losses = -F.logsigmoid(difference if margin is None else difference - margin)
        return losses, {"outputs": outputs, "rewards": (rewards_chosen, rewards_rejected)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        losses, scored = self._pair_losses(model, inputs)
        outputs = scored["outputs"]
        rewards_chosen, rewards_rejected = scored["rewards"]
        metrics = self._metrics[mode]
        loss = self._robust_reduce(losses, inputs, metrics)
        if self.args.center_rewards_coefficient is not None:
            # A regulariser on the scale of the rewards, not part of the risk: kept as a plain mean.
            loss = loss + self.args.center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)

        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            difference = rewards_chosen - rewards_rejected
            all_rewards = self.accelerator.gather(outputs.logits)
            metrics["min_reward"].append(all_rewards.min().item())
            metrics["mean_reward"].append(all_rewards.mean().item())
            metrics["max_reward"].append(all_rewards.max().item())
            metrics["accuracy"].append(self.accelerator.gather_for_metrics((difference > 0).float()).mean().item())
            metrics["margin"].append(self.accelerator.gather_for_metrics(difference.detach()).mean().item())
        return (loss, outputs) if return_outputs else loss


_ONLINE = ("DRORebelConfig", "DRORebelTrainer", "DROGRPOConfig", "DROGRPOTrainer")


def __getattr__(name: str) -> Any:
    # The online trainers (TRL's GRPOTrainer) live in trl_online, which builds on this module:
    # imported on first use, so that either module can be imported first.
    if name in _ONLINE:
        from dro_rebel.integrations import trl_online

        return getattr(trl_online, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
