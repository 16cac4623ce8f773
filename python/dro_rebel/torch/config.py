"""Configuration of the trainers: one dataclass per trainer, TRL's field names where TRL has one.

Configuration is data: every field is documented here, and the CLI builds these from the
``[config]`` table of a TOML file (``dro-rebel train``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Type, TypeVar, Union

from dro_rebel._api import _check_radius
from dro_rebel.torch.gradient_penalty import GRADIENT_PENALTY_FORMS
from dro_rebel.torch.online_adversary import ADVERSARIES

__all__ = ["TrainingConfig", "DroRebelConfig", "RobustDPOConfig", "RobustRewardConfig", "check_adversary"]

NONFINITE_POLICIES = ("skip", "stop")
RADIUS_SCHEDULES = ("constant", "inverse_samples")
ROBUST_SCOPES = ("step", "micro_batch")
# transformers' schedules that step on an evaluation metric, not on the optimiser step.
_METRIC_SCHEDULES = ("reduce_lr_on_plateau", "greedy")

Config = TypeVar("Config", bound="TrainingConfig")


def check_adversary(config: Any) -> None:
    """The errors of ``adversary`` and ``adversary_step_size`` in a config (this module's, or
    the TRL subclasses'), raised when it is built rather than at the first step."""
    if config.adversary not in ADVERSARIES:
        raise ValueError(f"adversary must be one of {ADVERSARIES}, got {config.adversary!r}")
    step = config.adversary_step_size
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step >= 0):
        raise ValueError(f"adversary_step_size must be a finite number >= 0, got {step!r}")
    if config.adversary != "online":
        return
    if config.group_column is None:
        raise ValueError("adversary='online' weighs groups: set group_column")
    given = ("radius", "penalty", "alpha", "confidence", "gradient_penalty")
    set_names = [name for name in given if getattr(config, name, None) is not None]
    if set_names:
        raise ValueError(
            f"adversary='online' replaces the per-step worst case over the ambiguity set: "
            f"leave {', '.join(set_names)} unset"
        )
    if getattr(config, "radius_schedule", "constant") != "constant":
        raise ValueError("adversary='online' has no radius to schedule: leave radius_schedule='constant'")


@dataclass
class TrainingConfig:
    """Fields shared by every trainer."""

    output_dir: str = "runs/dro-rebel"
    """Where checkpoints (``checkpoint-<step>.pt``), the log (``log.jsonl``) and the final
    model (``model/``) go."""
    learning_rate: float = 1e-6
    """AdamW's peak learning rate (``lr_scheduler_type`` shapes it over the run)."""
    lr_scheduler_type: str = "constant"
    """A schedule of ``transformers.get_scheduler`` (``"linear"``, ``"cosine"``,
    ``"constant_with_warmup"``, ...), over the run's optimiser steps. ``"constant"`` (the
    default here; TRL's is ``"linear"``) keeps ``learning_rate`` throughout."""
    lr_scheduler_kwargs: Optional[Dict[str, Any]] = None
    """Extra arguments of the schedule (``{"min_lr": ...}`` for ``"cosine_with_min_lr"``)."""
    warmup_steps: float = 0
    """Optimiser steps of linear warm-up from 0 to ``learning_rate``; a number in (0, 1) is a
    share of the run's optimiser steps (transformers' and TRL's convention, which replaced
    ``warmup_ratio``)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm."""
    per_device_train_batch_size: int = 8
    """Prompts (REBEL) or preference pairs (DPO, reward) per forward pass on each process; a
    step draws ``gradient_accumulation_steps`` times as many (TRL's convention)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimiser step: a step's batch on each process is
    ``per_device_train_batch_size * gradient_accumulation_steps`` samples (a REBEL rollout that
    many prompts), forwarded and backpropagated ``per_device_train_batch_size`` at a time (a
    REBEL mini-batch ``per_device_train_batch_size / num_mini_batches`` prompts at a time), the
    gradients summed before one update."""
    robust_scope: str = "step"
    """Which samples one worst case ranges over. ``"step"``: every sample of the optimiser step,
    across its micro-batches and processes, the same problem as without accumulation; with
    ``gradient_accumulation_steps > 1`` this costs one extra forward pass without gradients over
    the step (its losses, for the solve) before the forward and backward of each micro-batch.
    ``"micro_batch"``: each micro-batch (across processes) is its own problem and the step
    averages their robust losses, no extra forward (docs/method.md#accumulation)."""
    bf16: bool = False
    """Forward passes under ``torch.autocast`` in bfloat16 (CUDA with bf16 support, the CPU);
    the parameters, the optimiser and the worst-case solve stay in float32."""
    fp16: bool = False
    """Forward passes under ``torch.autocast`` in float16, the loss scaled by a
    ``torch.amp.GradScaler``: a step whose scaled gradients overflow is skipped and the scale
    lowered (``skipped`` = 1 in the log, not a ``nonfinite`` event)."""
    per_device_eval_batch_size: int = 8
    """Prompts or pairs per evaluation batch."""
    max_steps: int = 1000
    """Steps in the run: optimiser steps (DPO, reward model), rollouts (REBEL: each is
    ``rollout_epochs * num_mini_batches`` optimiser steps)."""
    eval_steps: Optional[int] = None
    """Evaluate every this many steps (and at the end); None: never."""
    save_steps: Optional[int] = 500
    """Write a checkpoint every this many steps (and at the end); None: only at the end."""
    logging_steps: int = 1
    """Write a line to ``log.jsonl`` every this many steps."""
    seed: int = 42
    """Seeds the data order, the sampling and every RNG."""
    max_length: Optional[int] = 512
    """Prompt + completion tokens kept per sequence (the completion is cut first); None: all."""
    ambiguity: str = "chi2"
    """Ambiguity set: ``"kl"``, ``"chi2"``, ``"cvar"``, ``"tv"`` or ``"wasserstein"``
    (docs/method.md)."""
    radius: Union[float, str, None] = None
    """Size of the ambiguity set (rho0 for the gradient penalty). None with no ``penalty`` or
    ``alpha`` means 0: the nominal, non-robust loss. ``"calibrated"`` (``chi2``, ``kl``): q /
    (2n) on each batch of n samples (groups), so that V* is an upper confidence bound on the
    batch's mean loss at ``confidence`` (docs/method.md#calibrated-radius). With
    ``radius_schedule="inverse_samples"`` it is the constant c of c / n."""
    confidence: Optional[float] = None
    """The level of ``radius="calibrated"``, in (0.5, 1); None: 0.95."""
    radius_schedule: str = "constant"
    """``"constant"``: ``radius`` at every step. ``"inverse_samples"``: ``radius / n`` at a
    step, n the number of samples (prompts or pairs, over every process) seen up to and
    including it: DRO-REBEL's eps_n ~ 1/n, a ball that shrinks as the estimate of the data
    distribution sharpens (docs/method.md#radius-schedule)."""
    penalty: Optional[float] = None
    """A fixed dual variable instead of a radius (the penalised form)."""
    alpha: Optional[float] = None
    """CVaR level in (0, 1] (``ambiguity="cvar"``)."""
    gradient_penalty: Optional[str] = None
    """``"rebel"`` or ``"wdpo"``: with ``ambiguity="wasserstein"``, the gradient-regulariser form
    (docs/method.md#gradient-penalty) on the input embeddings (a double backward) instead of weights."""
    group_column: Optional[str] = None
    """A dataset column of group labels (prompt category, preference type): the ambiguity set
    then ranges over mixtures of groups, and evaluation reports each group. Integers, or
    strings: ``group_column="prompt"`` is Mandal et al.'s DRO over prompts when a prompt has
    several pairs (docs/method.md#prompt-dro)."""
    adversary: str = "exact"
    """``"exact"``: each step's exact worst case over the ambiguity set. ``"online"``: Sagawa et
    al.'s online group DRO (docs/method.md#online-group-adversary): group weights that persist
    across steps, q_g <- q_g exp(adversary_step_size * L_g) on each step's group losses, saved
    in checkpoints. It needs ``group_column`` and replaces the per-step solve: leave
    ``radius``, ``penalty``, ``alpha``, ``confidence`` and ``gradient_penalty`` unset
    (``ambiguity`` is not used). Suits groups with few samples per batch, whose per-batch
    means are noisy."""
    adversary_step_size: float = 0.01
    """eta_q of the online adversary (``adversary="online"``), >= 0."""
    nonfinite: str = "skip"
    """A NaN/inf loss or gradient: ``"skip"`` the step (reported in the log) or ``"stop"`` the
    run with an error. Never folded into the weights."""
    use_peft: bool = False
    """Train LoRA adapters (``peft``) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: Optional[List[str]] = None
    """Modules that get adapters; None: every linear layer (peft's ``"all-linear"``)."""
    device: Optional[str] = None
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None: CUDA when available."""
    disable_tqdm: bool = False
    """No progress bar."""

    def __post_init__(self) -> None:
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {self.nonfinite!r}")
        if self.gradient_penalty is not None and self.gradient_penalty not in GRADIENT_PENALTY_FORMS:
            raise ValueError(f"gradient_penalty must be one of {GRADIENT_PENALTY_FORMS}, got {self.gradient_penalty!r}")
        if self.ambiguity == "wasserstein" and self.gradient_penalty is None:
            raise ValueError(
                "the trainers take the Wasserstein set in its gradient-penalty form: set "
                "gradient_penalty='rebel' or 'wdpo' (the exact transport needs sample features: "
                "use dro_rebel.torch.RobustLoss(features=...) in your own loop)"
            )
        _check_radius(self.radius, self.confidence, self.ambiguity, self.penalty)
        if self.radius_schedule not in RADIUS_SCHEDULES:
            raise ValueError(f"radius_schedule must be one of {RADIUS_SCHEDULES}, got {self.radius_schedule!r}")
        if self.radius_schedule != "constant" and not isinstance(self.radius, (int, float)):
            raise ValueError(
                f"radius_schedule={self.radius_schedule!r} scales a number: set radius to its constant c, "
                f"got radius={self.radius!r}"
            )
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "max_steps",
            "logging_steps",
            "gradient_accumulation_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.robust_scope not in ROBUST_SCOPES:
            raise ValueError(f"robust_scope must be one of {ROBUST_SCOPES}, got {self.robust_scope!r}")
        if self.gradient_penalty is not None and self.robust_scope == "step" and self.gradient_accumulation_steps > 1:
            raise ValueError(
                "gradient_penalty is computed on each micro-batch (it needs the gradients of its own forward): "
                "with gradient_accumulation_steps > 1 set robust_scope='micro_batch'"
            )
        if self.bf16 and self.fp16:
            raise ValueError("set bf16 or fp16, not both")
        self._check_schedule()
        check_adversary(self)

    def _check_schedule(self) -> None:
        from transformers import SchedulerType

        names = [kind.value for kind in SchedulerType if kind.value not in _METRIC_SCHEDULES]
        if self.lr_scheduler_type not in names:
            raise ValueError(f"lr_scheduler_type must be one of {names}, got {self.lr_scheduler_type!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be non-negative, got {self.warmup_steps}")
        if self.warmup_steps > 0 and self.lr_scheduler_type == "constant":
            raise ValueError("lr_scheduler_type='constant' has no warm-up: use 'constant_with_warmup'")

    def robust_kwargs(self) -> Dict[str, Any]:
        """The keyword arguments of :class:`dro_rebel.torch.RobustLoss` this config asks for."""
        if self.adversary == "online":
            return {"adversary": "online", "adversary_step_size": self.adversary_step_size}
        radius = self.radius
        if radius is None and self.penalty is None and self.alpha is None:
            radius = 0.0
        return {
            "radius": radius,
            "penalty": self.penalty,
            "alpha": self.alpha,
            "gradient_penalty": self.gradient_penalty,
            "confidence": self.confidence,
        }

    def radius_at(self, samples_seen: int) -> Union[float, str, None]:
        """The radius of the step at which ``samples_seen`` samples have been drawn in all."""
        radius = self.robust_kwargs().get("radius")
        if self.radius_schedule == "inverse_samples":
            return float(radius) / max(int(samples_seen), 1)
        return radius

    def optimizer_steps(self) -> int:
        """Optimiser steps in the run (the length of the learning-rate schedule)."""
        return self.max_steps

    def num_warmup_steps(self) -> int:
        """``warmup_steps`` in optimiser steps (a share of the run when below 1)."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.ceil(self.optimizer_steps() * self.warmup_steps)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: Type[Config], values: Dict[str, Any]) -> Config:
        """Build from a mapping (a TOML table), rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**values)


@dataclass
class DroRebelConfig(TrainingConfig):
    """Online DRO-REBEL (docs/method.md#dro-rebel). ``radius=0`` (the default) is REBEL."""

    eta: float = 1.0
    """REBEL's step size eta > 0: the log-ratio difference, divided by eta, regresses on the
    reward difference (docs/method.md#rebel)."""
    max_new_tokens: int = 64
    """Tokens sampled per response."""
    temperature: float = 1.0
    """Sampling temperature of the responses."""
    num_generations: int = 2
    """G >= 2 responses sampled per prompt (TRL's name), one pair kept per prompt
    (docs/method.md#rebel-as-practised): with 2 the two as sampled; with more, the best and the
    worst by the (penalised, whitened) reward, the first on ties, as REBEL's code pairs several
    generations: the widest reward gap, and a pair of identical responses only when all G
    score the same. The log's ``rebel/identical_pairs`` is the share of pairs whose two
    responses are the same tokens, pairs the regression learns nothing from."""
    kl_coef: float = 0.0
    """The regression's reward is r(x, y) - kl_coef * (log pi_t(y|x) - log pi_ref(y|x)), pi_ref
    the start policy (a frozen copy of the model, or the base model under LoRA): a KL penalty
    that keeps the policy near where it started (docs/method.md#rebel-as-practised). REBEL's
    reference code uses 0.05; 0 (the default) computes nothing extra. The log's ``rebel/kl`` is
    the rollout's mean log-ratio to the start policy."""
    whiten_rewards: bool = False
    """Whiten the (penalised) rewards of the global batch's responses, (r - mean) / sqrt(var +
    1e-8) with the unbiased variance (TRL's ``whiten``), before the pairs are formed: REBEL's
    option, a scale-free reward gap for any reward model."""
    log_ratio_reference: str = "sampler"
    """Log-ratios against ``"sampler"``: the policy that sampled the batch (REBEL's pi_t, its
    log-probs kept from sampling time), or ``"initial"``: the frozen initial model."""
    rollout_epochs: int = 4
    """Optimisation epochs over each rollout (TRL's ``num_ppo_epochs``). DRO-REBEL's update is
    the minimiser of the robust regression on the rollout, min_theta max_q sum_i q_i
    l_i(theta); several epochs approximate it, with the worst-case weights solved again on
    every epoch's losses (docs/method.md#rebel-epochs). With one epoch and
    ``log_ratio_reference="sampler"`` every loss is (r - r')^2 whatever theta is, so the
    weights would see only the spread of the reward gaps, never how well a sample is fitted.
    The default is TRL's PPO default; sampling, not the extra backward passes, usually
    dominates a step's cost."""
    num_mini_batches: int = 1
    """Mini-batches per epoch (TRL's name): each is its own optimiser step and its own robust
    problem, over ``per_device_train_batch_size * gradient_accumulation_steps /
    num_mini_batches`` prompts of each process (forwarded ``per_device_train_batch_size /
    num_mini_batches`` at a time)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rollout_epochs", "num_mini_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.per_device_train_batch_size % self.num_mini_batches:
            raise ValueError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a multiple of "
                f"num_mini_batches ({self.num_mini_batches})"
            )
        if self.eta <= 0:
            raise ValueError(f"eta must be positive, got {self.eta}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 (a pair per prompt), got {self.num_generations}")
        if not (math.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise ValueError(f"kl_coef must be a finite number >= 0, got {self.kl_coef}")
        if self.log_ratio_reference not in ("sampler", "initial"):
            raise ValueError(f"log_ratio_reference must be 'sampler' or 'initial', got {self.log_ratio_reference!r}")

    def optimizer_steps(self) -> int:
        """Every rollout takes ``rollout_epochs * num_mini_batches`` optimiser steps."""
        return self.max_steps * self.rollout_epochs * self.num_mini_batches


@dataclass
class RobustDPOConfig(TrainingConfig):
    """Offline robust DPO against a frozen reference model."""

    beta: float = 0.1
    """DPO's beta: the strength of the implicit KL regularisation to the reference."""


@dataclass
class RobustRewardConfig(TrainingConfig):
    """Robust Bradley-Terry reward-model training."""

    learning_rate: float = 1e-5
    """AdamW's peak learning rate (``lr_scheduler_type`` shapes it over the run)."""
