"""DRO-REBEL and robust GRPO inside TRL's online trainer, ``GRPOTrainer``.

Usage (TRL's API, plus REBEL's fields or the ambiguity set in the config)::

    from dro_rebel.integrations.trl import DRORebelConfig, DRORebelTrainer

    args = DRORebelConfig(output_dir="runs/rebel", eta=1.0, num_generations=4, kl_coef=0.05,
                          ambiguity="chi2", radius=0.1, group_column="prompt")
    trainer = DRORebelTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=reward_fn,
                              args=args, train_dataset=dataset)
    trainer.train()

Both trainers keep everything of ``GRPOTrainer`` but the loss step: generation (vLLM
included), reward functions and their weights, LoRA (``peft_config``), accelerate, logging.

``DRORebelTrainer`` regresses REBEL's loss (docs/method.md#rebel-in-grpo) on one pair per
prompt, formed among its ``num_generations`` completions: the two completions as sampled when
there are two, else the best and the worst by reward (first index on ties). The rewards are
TRL's weighted sum of the reward functions, less ``kl_coef`` times the sampler-to-reference
log-ratio, whitened over the global batch with ``whiten_rewards``, in that order. The
log-ratios are against the sampling policy: TRL's ``old_per_token_logps`` when it keeps them
(``num_iterations > 1``, generation not aligned with the optimiser step, vLLM's importance
sampling correction), else the policy's own log-probs detached, which TRL's loss uses too:
on-policy they are the sampler's. ``num_iterations`` is REBEL's epochs per rollout. Only the
pairs are kept after scoring (each pair one row, so that TRL's shuffle keeps it whole), so
``per_device_train_batch_size`` must be a multiple of ``num_generations``: a micro-batch
then holds ``per_device_train_batch_size / num_generations`` pairs.

``kl_coef > 0`` needs the reference model's log-probs: the config sets TRL's ``beta`` to
``kl_coef``, which makes ``GRPOTrainer`` load its reference model (or switch LoRA adapters off)
and compute ``ref_per_token_logps`` at generation time. REBEL's loss never uses ``beta``.

``DROGRPOTrainer`` keeps GRPO's per-token loss and replaces its reduction: TRL's loss of a
micro-batch is a sum over completions sum_i m_i L_i, L_i a completion's loss (its tokens'
mean, or sum / ``max_completion_length`` for ``"dr_grpo"``, or sum for ``"luspo"``) and m_i
its share of the objective (docs/method.md#grpo-per-prompt, per ``loss_type``). The worst case
is taken over prompts (the ``num_generations`` completions of one sampled prompt are one
group), or over the groups of ``group_column``, with the shares m as the reference
distribution, and the loss is M sum_i q_i L_i (M the total share of the problem). With
``radius=0``, q = m / M and the loss and its gradients are TRL's. TRL's regularisers (entropy
bonus, MoE auxiliary loss) are kept as TRL computes them; its metrics are logged unchanged.

Both log ``robust/value``, ``robust/mean``, ``robust/ess``, ``robust/max_weight`` beside TRL's
metrics. ``robust_scope="step"`` solves one worst case over every micro-batch of the
optimiser step and every process: the step's completions are generated (or taken from TRL's
buffer) when its first micro-batch is prepared, one forward pass without gradients over them
gives the losses, and each micro-batch is then backpropagated with its slice of the weights
(docs/method.md#accumulation). ``radius_schedule="inverse_samples"`` counts prompts. The online
adversary (``adversary="online"``, with ``group_column``) is the offline configs': its group
weights update once per optimiser step and are saved beside TRL's checkpoint files.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from trl import GRPOConfig, GRPOTrainer

from dro_rebel.integrations.trl import _log_robust, _RobustFields, _RobustTrainerMixin
from dro_rebel.torch.config import RADIUS_SCHEDULES
from dro_rebel.torch.data import group_labels
from dro_rebel.torch.distributed import gather_rows
from dro_rebel.torch.losses import rebel_loss
from dro_rebel.torch.rebel_pairs import identical_pairs, kl_penalised_rewards, pick_pairs, whitened_rewards

__all__ = ["DRORebelConfig", "DRORebelTrainer", "DROGRPOConfig", "DROGRPOTrainer"]

# GRPO's loss types by how TRL normalises a micro-batch's summed per-token losses
# (docs/method.md#grpo-per-prompt): each completion's share of the objective follows.
_PER_SEQUENCE_MEAN = ("grpo", "sapo")
_LOCAL_TOKENS = ("bnpo",)
_CONSTANT_LENGTH = ("dr_grpo",)
_GLOBAL_TOKENS = ("dapo", "cispo", "vespo")
_SEQUENCE_SUM = ("luspo",)
SUPPORTED_GRPO_LOSSES = _PER_SEQUENCE_MEAN + _LOCAL_TOKENS + _CONSTANT_LENGTH + _GLOBAL_TOKENS + _SEQUENCE_SUM
# The tensors of a rollout the model's forward does not need or REBEL replaces.
_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "spatial_shapes")
_REBEL_ROW_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "tool_mask")


@dataclass
class _OnlineRobustFields(_RobustFields):
    """The robust fields of the offline TRL configs (the ambiguity set, ``group_column``,
    ``robust_scope``, the online adversary), plus the radius schedule."""

    radius_schedule: str = field(
        default="constant",
        metadata={
            "help": "'constant': radius at every step. 'inverse_samples': radius / n, n the prompts seen by every "
            "process up to and including the step (docs/method.md#radius-schedule)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.radius_schedule not in RADIUS_SCHEDULES:
            raise ValueError(f"radius_schedule must be one of {RADIUS_SCHEDULES}, got {self.radius_schedule!r}")
        if self.radius_schedule != "constant" and not isinstance(self.robust_loss().radius, (int, float)):
            raise ValueError(
                f"radius_schedule={self.radius_schedule!r} scales a number: set radius to its constant c, "
                f"got radius={self.radius!r}"
            )


@dataclass
class DRORebelConfig(_OnlineRobustFields, GRPOConfig):
    """TRL's ``GRPOConfig`` for DRO-REBEL: REBEL's ``eta``, ``kl_coef`` and ``whiten_rewards``,
    ``num_generations`` completions per prompt (2 by default), and the ambiguity set
    (``ambiguity``, ``radius``, ``radius_schedule``, ``confidence``, ``penalty``, ``alpha``,
    ``group_column``, ``robust_scope``, ``adversary``, ``adversary_step_size``).
    ``num_iterations`` is REBEL's optimisation epochs per rollout. GRPO's ``loss_type``,
    ``epsilon`` and ``scale_rewards`` do not apply; ``beta`` is set from ``kl_coef``."""

    eta: float = field(
        default=1.0,
        metadata={"help": "REBEL's step size eta > 0: the log-ratio difference / eta regresses on the reward gap."},
    )
    kl_coef: float = field(
        default=0.0,
        metadata={
            "help": "The reward is r - kl_coef * (log pi_t(y) - log pi_ref(y)), pi_t the sampler and pi_ref the "
            "reference model (loaded as TRL does for beta > 0). REBEL's reference code uses 0.05."
        },
    )
    whiten_rewards: bool = field(
        default=False,
        metadata={"help": "Whiten the (penalised) rewards over the global batch before the pairs are formed."},
    )
    num_generations: Optional[int] = field(
        default=2,
        metadata={
            "help": "Completions per prompt, G >= 2: with 2 the pair is the two as sampled, with more the best and "
            "the worst by reward. per_device_train_batch_size must be a multiple of it."
        },
    )

    def __post_init__(self) -> None:
        if self.eta <= 0:
            raise ValueError(f"eta must be positive, got {self.eta}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be non-negative, got {self.kl_coef}")
        if self.beta not in (0.0, self.kl_coef):
            raise ValueError(
                f"DRORebelConfig penalises the reward with kl_coef and sets GRPO's beta from it; got beta={self.beta} "
                f"and kl_coef={self.kl_coef}: set kl_coef only"
            )
        # GRPOTrainer loads its reference model and computes its log-probs when beta != 0.
        self.beta = self.kl_coef
        super().__post_init__()
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a multiple of "
                f"num_generations ({self.num_generations}): a micro-batch holds whole pairs of REBEL"
            )


@dataclass
class DROGRPOConfig(_OnlineRobustFields, GRPOConfig):
    """TRL's ``GRPOConfig`` plus the ambiguity set (``ambiguity``, ``radius``,
    ``radius_schedule``, ``confidence``, ``penalty``, ``alpha``, ``group_column``,
    ``robust_scope``, ``adversary``, ``adversary_step_size``) over prompts or groups."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in SUPPORTED_GRPO_LOSSES:
            raise ValueError(
                f"DROGRPOConfig takes loss_type in {SUPPORTED_GRPO_LOSSES}, got {self.loss_type!r}: its per-prompt "
                "reduction is not known here (docs/method.md#grpo-per-prompt)"
            )


@dataclass
class _PendingStep:
    """The raw batches of an optimiser step whose one worst case is solved when its first
    micro-batch is prepared, and those batches once prepared."""

    raw: List[Any]
    prepared: Optional[List[Dict[str, Any]]] = None


class _OnlineRobustMixin(_RobustTrainerMixin):
    """What both online trainers share: the group labels of a rollout, the one worst case per
    optimiser step and the radius schedule (the offline mixin keeps the online adversary's
    state beside TRL's checkpoint files).

    The offline mixin solves a step in ``get_batch_samples``, but there an online step's
    completions do not exist yet: TRL generates them in ``_prepare_inputs``, and a resumed run
    restores its random state only after ``get_batch_samples``. So the step is recorded there
    and solved when its first micro-batch is prepared."""

    _pending_step: Optional[_PendingStep] = None
    _rollouts: int = 0

    # What the losses of an on-policy step are, whatever the policy (docs/method.md).
    _on_policy_losses = ""

    def _init_online_robust(self) -> None:
        self.robust_loss = self.args.robust_loss()
        args = self.args
        on_policy = self.num_iterations == 1 and args.steps_per_generation <= args.gradient_accumulation_steps
        if on_policy and self.robust_loss.radius != 0:
            warnings.warn(
                f"{type(self).__name__} with num_iterations=1 trains on-policy, where {self._on_policy_losses}: "
                "the worst case cannot see how the policy fits each sample. Set num_iterations > 1 "
                "(docs/method.md#rebel-in-grpo, #grpo-per-prompt).",
                stacklevel=3,
            )
        column = self.args.group_column
        if column is not None:
            self._check_group_column(column)
        for dataset in (self.train_dataset, getattr(self, "eval_dataset", None)):
            names = getattr(dataset, "column_names", None) or []
            if any(name in names for name in ("image", "images")):
                raise ValueError(f"{type(self).__name__} takes text prompts; the dataset has images")

    def _rollout_labels(self, inputs: Sequence[Dict[str, Any]]) -> Optional[torch.Tensor]:
        """The group column of the rollout's examples as integer labels (``"prompt"`` and other
        text or conversation columns hashed alike on every process), or None."""
        column = self.args.group_column
        if column is None:
            return None
        if column not in inputs[0]:
            raise KeyError(f"group_column={column!r} is not a column of the dataset (keys: {sorted(inputs[0])})")
        labels = [example[column] for example in inputs]
        if all(isinstance(label, (list, dict)) for label in labels):
            labels = [json.dumps(label, sort_keys=True) for label in labels]
        if not all(isinstance(label, (int, np.integer, str)) and not isinstance(label, bool) for label in labels):
            raise ValueError(
                f"group_column={column!r} must hold one integer or string label per prompt, got {labels[:4]!r}..."
            )
        return group_labels(labels).to(self.accelerator.device)

    def _solve_over_step(self, batch_samples: Sequence[Any]) -> None:
        self._pending_step = _PendingStep(raw=list(batch_samples))

    def _prepare_inputs(self, generation_batch: Any) -> Dict[str, Any]:
        if isinstance(generation_batch, dict):
            return generation_batch  # prepared ahead for the step's one solve
        pending = self._pending_step
        if pending is None or not self.model.training:
            return super()._prepare_inputs(generation_batch)  # type: ignore[misc]
        if pending.prepared is None:
            pending.prepared = self._prepare_step(pending.raw)
            self._before_solve()
            self._solve_prepared_step(pending.prepared)
        index = next(i for i, raw in enumerate(pending.raw) if raw is generation_batch)
        if index == len(pending.raw) - 1:
            self._pending_step = None
        return pending.prepared[index]

    def _prepare_step(self, raw_batches: Sequence[Any]) -> List[Dict[str, Any]]:
        """TRL's preparation of each micro-batch of the step, as its training steps would do
        it one after the other (``_step`` numbers them; TRL advances it after each)."""
        first = self._step
        prepared = []
        try:
            for offset, raw in enumerate(raw_batches):
                self._step = first + offset
                prepared.append(super()._prepare_inputs(raw))  # type: ignore[misc]
        finally:
            self._step = first
        return prepared

    def _solve_prepared_step(self, prepared: Sequence[Dict[str, Any]]) -> None:
        super()._solve_over_step(prepared)

    def _before_solve(self) -> None:
        """The radius of this step (``radius_schedule``), and the adversary's mode: it updates on
        training steps only."""
        self.robust_loss.train(self.model.training)
        if self.model.training and self.args.radius_schedule == "inverse_samples":
            args = self.args
            prompts_per_step = (
                args.per_device_train_batch_size
                * args.gradient_accumulation_steps
                * self.accelerator.num_processes
                // self.num_generations
            )
            seen = (self.state.global_step + 1) * prompts_per_step
            self.robust_loss.radius = float(self.args.robust_loss().radius) / max(seen, 1)


class DRORebelTrainer(_OnlineRobustMixin, GRPOTrainer):
    """TRL's ``GRPOTrainer`` with REBEL's regression on one pair of completions per prompt,
    reduced by the worst case; see the module docstring."""

    # The loss of a micro-batch is its mean (its robust value); transformers divides by the
    # number of micro-batches, as the offline mixin's reduction expects.
    loss_is_scaled_for_ga = False
    _on_policy_losses = "a pair's loss is its squared reward gap"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, DRORebelConfig):
            raise TypeError("DRORebelTrainer needs args=DRORebelConfig(...) (TRL's GRPOConfig plus REBEL's fields)")
        self._init_online_robust()

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Kept for REBEL, which regresses on the rewards themselves, not GRPO's advantages.
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _sequence_logps(self, model: Any, rows: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed log-probabilities of each row's completion tokens (masked), by TRL's forward."""
        per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([rows["prompt_ids"], rows["completion_ids"]], dim=1),
            torch.cat([rows["prompt_mask"], rows["completion_mask"]], dim=1),
            rows["completion_ids"].size(1),
        )
        return (per_token_logps * _loss_mask(rows)).sum(dim=-1)

    def _generate_and_score_completions(self, inputs):
        """TRL's rollout, then REBEL's rewards, pairs and sampler log-probs. Returns one row
        per pair: every per-completion tensor stacked as (pairs, 2, ...)."""
        self._rewards_per_func = None
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        size = self.num_generations if mode == "train" else self.num_generations_eval
        local = len(inputs)
        if size < 2 or local % size:
            raise ValueError(
                f"REBEL pairs the completions of a prompt on one process: {mode} needs num_generations >= 2 "
                f"dividing the per-process batch ({local} completions, num_generations={size})"
            )
        present = sorted(key for key in _MULTIMODAL_KEYS if key in output)
        if present:
            raise ValueError(f"DRORebelTrainer takes text-only rollouts, got {present}")
        device = self.accelerator.device
        rows = {key: output[key] for key in _REBEL_ROW_KEYS if key in output}
        mask = _loss_mask(rows)
        old = output.get("old_per_token_logps")
        sampler = None if old is None else (old * mask).sum(dim=-1)

        rewards_per_func = self._rewards_per_func
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        if unscorable.any():
            raise ValueError(
                f"every reward function returned None for {int(unscorable.sum())} completion(s): REBEL regresses "
                "on a reward for every completion"
            )
        rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        # This process's completions: whole groups of `size` (the check above and TRL's sampler).
        start = self.accelerator.process_index * local
        rewards = rewards[start : start + local]
        if self.args.kl_coef > 0:
            if sampler is None:
                with torch.no_grad():
                    sampler = self._sequence_logps(self.model, rows)
            reference = (output["ref_per_token_logps"] * mask).sum(dim=-1)
            rewards = kl_penalised_rewards(rewards, sampler, reference, self.args.kl_coef)
            self._metrics[mode]["rebel/kl"].append(self.accelerator.gather(sampler - reference).mean().item())
        if self.args.whiten_rewards:
            rewards = whitened_rewards(rewards)

        # TRL lays a prompt's completions side by side (row j G + k); the pairing takes them
        # sample-major (row k n + j).
        prompts = local // size
        first, second = pick_pairs(rewards.view(prompts, size).t().reshape(-1), size)
        offset = torch.arange(prompts, device=device) * size
        first, second = first + offset, second + offset
        pair_rewards = torch.stack([rewards[first], rewards[second]], dim=1)

        pairs: Dict[str, Any] = {key: torch.stack([value[first], value[second]], dim=1) for key, value in rows.items()}
        pairs["rewards"] = pair_rewards
        if old is not None:
            pairs["sampler_logps"] = torch.stack([sampler[first], sampler[second]], dim=1)
        labels = self._rollout_labels(inputs)
        if labels is not None:
            pairs["groups"] = labels[first]

        ids = torch.cat([rows["completion_ids"][first], rows["completion_ids"][second]])
        same = identical_pairs(ids, torch.cat([mask[first], mask[second]]))
        self._metrics[mode]["rebel/identical_pairs"].append(self.accelerator.gather(same.float()).mean().item())
        return pairs

    def _pair_losses(self, model, inputs):
        """REBEL's loss of each pair of the micro-batch (docs/method.md#rebel-in-grpo)."""
        rows = {key: inputs[key].flatten(0, 1) for key in _REBEL_ROW_KEYS if key in inputs}
        logps = self._sequence_logps(model, rows).view(-1, 2)
        sampler = inputs.get("sampler_logps")
        if sampler is None:
            # On-policy, TRL keeps no old log-probs: the sampler is the policy, as in GRPO's loss.
            sampler = logps.detach()
        rewards = inputs["rewards"]
        losses = rebel_loss(
            logps[:, 0], logps[:, 1], sampler[:, 0], sampler[:, 1], rewards[:, 0], rewards[:, 1], self.args.eta
        )
        return losses, {"logps": logps}

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        losses, _ = self._pair_losses(model, inputs)
        if "robust_weights" not in inputs:
            self._before_solve()
        return self._robust_reduce(losses, inputs, self._metrics[mode])


class DROGRPOTrainer(_OnlineRobustMixin, GRPOTrainer):
    """TRL's ``GRPOTrainer`` with its objective reduced per prompt (or group) and the worst
    case over prompts or groups; see the module docstring."""

    _on_policy_losses = "a prompt's loss is its centred mean advantage, 0 for loss_type='grpo'"

    def __init__(self, *args: Any, **kwargs: Any):
        self._captured: Optional[List[Tuple[torch.Tensor, Optional[torch.Tensor], Any]]] = None
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, DROGRPOConfig):
            raise TypeError("DROGRPOTrainer needs args=DROGRPOConfig(...) (TRL's GRPOConfig plus the ambiguity set)")
        self._init_online_robust()

    def _generate_and_score_completions(self, inputs):
        """TRL's rollout, with each completion's group: its prompt's (a label per sampled
        prompt, unique over the run) or its example's ``group_column``."""
        output = super()._generate_and_score_completions(inputs)
        labels = self._rollout_labels(inputs)
        if labels is None:
            mode = "train" if self.model.training else "eval"
            size = self.num_generations if mode == "train" else self.num_generations_eval
            start = self.accelerator.process_index * len(inputs)
            prompts = (torch.arange(len(inputs), device=self.accelerator.device) + start) // size
            labels = prompts + (self._rollouts << 32)
        self._rollouts += 1
        output["groups"] = labels
        return output

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._captured is not None:
            self._captured.append(result)
        return result

    def _per_token_loss(
        self, per_token_logps: torch.Tensor, entropies: Optional[torch.Tensor], inputs: Dict[str, Any]
    ) -> torch.Tensor:
        """GRPO's per-token loss, as ``GRPOTrainer._compute_loss`` computes it before its
        reduction (TRL 1.16): clipped (or soft, or CISPO's, or VESPO's) surrogate, the
        off-policy, entropy and vLLM importance-sampling factors, plus beta times the KL."""
        mask = _loss_mask(inputs)
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        old_per_token_logps = inputs.get("old_per_token_logps")
        old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps
        if self.off_policy_mask_threshold is not None:
            off_policy_mask = self.get_off_policy_mask(
                advantages=advantages,
                per_token_logps=per_token_logps,
                sampling_per_token_logps=inputs.get("sampling_per_token_logps", old_per_token_logps),
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            )
        log_ratio = per_token_logps - old_per_token_logps
        if self.importance_sampling_level == "token":
            log_importance_weights = log_ratio
        else:
            log_importance_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
        coef_1 = torch.exp(log_importance_weights)
        if self.loss_type == "cispo":
            per_token_loss = -torch.clamp(coef_1, max=self.epsilon_high).detach() * advantages * per_token_logps
        elif self.loss_type == "sapo":
            temperatures = torch.where(advantages > 0, self.args.sapo_temperature_pos, self.args.sapo_temperature_neg)
            per_token_loss = -torch.sigmoid(temperatures * (coef_1 - 1)) * 4 / temperatures * advantages
        elif self.loss_type == "vespo":
            phi_seq = self.get_gamma_weights(
                advantages=advantages,
                log_ratio_per_token=log_ratio,
                mask=mask,
                importance_sampling_ratio=inputs.get("importance_sampling_ratio"),
                k_pos=self.args.vespo_k_pos,
                lambda_pos=self.args.vespo_lambda_pos,
                k_neg=self.args.vespo_k_neg,
                lambda_neg=self.args.vespo_lambda_neg,
            )
            per_token_loss = -phi_seq * advantages * per_token_logps
        else:
            coef_2 = torch.clamp(coef_1, 1 - self.epsilon_low, 1 + self.epsilon_high)
            if self.args.delta is not None:
                coef_1 = torch.clamp(coef_1, max=self.args.delta)
            per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
        if self.off_policy_mask_threshold is not None:
            per_token_loss = per_token_loss * off_policy_mask
        if self.top_entropy_quantile < 1.0:
            per_token_loss = per_token_loss * self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
        if self.use_vllm and self.vllm_importance_sampling_correction and self.loss_type != "vespo":
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            ref_per_token_logps = inputs["ref_per_token_logps"]
            per_token_kl = (
                torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
            )
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(log_importance_weights)
            per_token_loss = per_token_loss + self.beta * per_token_kl
        return per_token_loss

    def _sequence_losses(
        self,
        per_token_logps: torch.Tensor,
        entropies: Optional[torch.Tensor],
        inputs: Dict[str, Any],
        micro_batches: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Each completion's loss L_i and its share m_i of the objective, such that TRL's loss
        of the micro-batch is sum_i m_i L_i (docs/method.md#grpo-per-prompt). ``micro_batches``
        is TRL's gradient-accumulation divisor (1 in evaluation)."""
        mask = _loss_mask(inputs)
        summed = (self._per_token_loss(per_token_logps, entropies, inputs) * mask).sum(dim=-1)
        tokens = mask.sum(dim=-1).to(summed.dtype)
        count = summed.new_tensor(float(summed.size(0)))
        if self.loss_type in _PER_SEQUENCE_MEAN:
            length, share = tokens.clamp(min=1.0), torch.ones_like(summed) / (count * micro_batches)
        elif self.loss_type in _LOCAL_TOKENS:
            length, share = tokens.clamp(min=1.0), tokens / (tokens.sum().clamp(min=1.0) * micro_batches)
        elif self.loss_type in _CONSTANT_LENGTH:
            length = torch.full_like(summed, float(self.max_completion_length))
            share = torch.ones_like(summed) / (count * micro_batches)
        elif self.loss_type in _GLOBAL_TOKENS:
            # TRL's normaliser: the generation batch's tokens, per process and per micro-batch.
            normaliser = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if self.model.training:
                normaliser = normaliser * micro_batches / self.args.steps_per_generation
            length, share = tokens.clamp(min=1.0), tokens / normaliser
        else:  # _SEQUENCE_SUM
            length, share = torch.ones_like(summed), torch.ones_like(summed) / (count * micro_batches)
        return summed / length, share.detach()

    def _robust_weights(
        self, losses: torch.Tensor, shares: torch.Tensor, groups: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The worst-case weights q (this process's slice) over the groups, with the shares as
        the reference distribution, and the problem's total share M (over every process)."""
        all_shares = gather_rows(shares.detach())[0].to(torch.float64).cpu().numpy()
        total = float(all_shares.sum())
        if total == 0.0:
            # Every completion masked out: TRL's loss is 0, and so is this one.
            return torch.zeros_like(losses), losses.new_tensor(0.0)
        weights = self.robust_loss.weights(losses, groups=groups, reference=all_shares)
        return weights, losses.new_tensor(total)

    def _solve_prepared_step(self, prepared):
        losses, shares, groups = [], [], []
        model = self.model_wrapped
        with torch.no_grad(), self.compute_loss_context_manager():
            for inputs in prepared:
                per_token_logps, entropies = self._policy_logps(model, inputs)
                part, share = self._sequence_losses(per_token_logps, entropies, inputs, len(prepared))
                losses.append(part)
                shares.append(share)
                groups.append(inputs["groups"])
        weights, total = self._robust_weights(torch.cat(losses), torch.cat(shares), torch.cat(groups))
        for inputs, part in zip(prepared, weights.split([len(x) for x in losses])):
            inputs["robust_weights"], inputs["robust_total"] = part, total
        _log_robust(self._metrics["train"], self.robust_loss)

    def _policy_logps(self, model: Any, inputs: Dict[str, Any]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The policy's per-token log-probs (and entropies, when the loss needs them), by TRL's forward."""
        per_token_logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
            inputs["completion_ids"].size(1),
            compute_entropy=self.top_entropy_quantile < 1.0,
        )
        return per_token_logps, entropies

    def _compute_loss(self, model, inputs):
        """TRL's loss with its policy term sum_i m_i L_i replaced by the robust M sum_i q_i L_i;
        TRL computes (and logs) everything else, from the same forward pass."""
        mode = "train" if self.model.training else "eval"
        self._captured = []
        try:
            trl_loss = super()._compute_loss(model, inputs)
            per_token_logps, entropies, _ = self._captured[0]
        finally:
            self._captured = None
        micro_batches = self.current_gradient_accumulation_steps if mode == "train" else 1
        losses, shares = self._sequence_losses(per_token_logps, entropies, inputs, micro_batches)
        weights, total = inputs.get("robust_weights"), inputs.get("robust_total")
        if weights is None:
            self._before_solve()
            weights, total = self._robust_weights(losses.detach(), shares, inputs["groups"])
            _log_robust(self._metrics[mode], self.robust_loss)
        # Each process's part of M sum_i q_i L_i: the mean over processes (DDP's) is the robust
        # objective, and with q = m / M it is this process's sum_i m_i L_i, TRL's policy term.
        robust = total * (weights.detach() * losses).sum()
        return trl_loss - (shares * losses).sum() + robust


def _loss_mask(inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The tokens TRL's loss counts: the completion's, less tool outputs in multi-turn rollouts."""
    mask = inputs["completion_mask"]
    return mask if "tool_mask" not in inputs else mask * inputs["tool_mask"]
