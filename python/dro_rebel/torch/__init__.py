"""The PyTorch layer of dro-rebel: per-sample losses, the robust reduction, and trainers.

Import it explicitly (the top-level ``dro_rebel`` never imports torch)::

    from dro_rebel.torch import RobustLoss, dpo_loss

    robust = RobustLoss("chi2", radius=0.1)
    loss = robust(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1))
    loss.backward()                      # gradient of the worst case (weights detached)
    robust.last.ess                      # effective sample size of the weights

Trainers (each one readable loop; see their modules): :class:`DroRebelTrainer` (online,
with a reward callable), :class:`RobustDPOTrainer` (offline pairs against a frozen reference)
and :class:`RobustRewardTrainer` (Bradley-Terry), configured by :class:`DroRebelConfig`,
:class:`RobustDPOConfig` and :class:`RobustRewardConfig`.
"""

from __future__ import annotations

from dro_rebel.torch.checkpoint import CorruptCheckpointError, load_checkpoint, save_checkpoint
from dro_rebel.torch.config import DroRebelConfig, RobustDPOConfig, RobustRewardConfig, TrainingConfig
from dro_rebel.torch.dpo_trainer import RobustDPOTrainer
from dro_rebel.torch.gradient_penalty import per_sample_grad_sq_norms
from dro_rebel.torch.logprobs import completion_logprobs, sequence_logprobs
from dro_rebel.torch.losses import bradley_terry_loss, dpo_loss, rebel_loss
from dro_rebel.torch.online_adversary import OnlineGroupAdversary
from dro_rebel.torch.rebel_trainer import DroRebelTrainer, RewardFn
from dro_rebel.torch.reward_trainer import RobustRewardTrainer
from dro_rebel.torch.robust_loss import NonFiniteLossError, RobustLoss, RobustStats

__all__ = [
    "rebel_loss",
    "dpo_loss",
    "bradley_terry_loss",
    "sequence_logprobs",
    "completion_logprobs",
    "per_sample_grad_sq_norms",
    "RobustLoss",
    "RobustStats",
    "OnlineGroupAdversary",
    "NonFiniteLossError",
    "TrainingConfig",
    "DroRebelConfig",
    "RobustDPOConfig",
    "RobustRewardConfig",
    "DroRebelTrainer",
    "RewardFn",
    "RobustDPOTrainer",
    "RobustRewardTrainer",
    "CorruptCheckpointError",
    "save_checkpoint",
    "load_checkpoint",
]
