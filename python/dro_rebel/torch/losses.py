"""Per-sample (unreduced) losses of docs/method.md: REBEL, DPO and Bradley-Terry.

Every function returns one loss per pair, shape (n,), so that a robust reduction
(:class:`dro_rebel.torch.RobustLoss`) can weight them; ``.mean()`` gives the usual,
non-robust objective. Inputs are summed sequence log-probabilities (see
:func:`dro_rebel.torch.sequence_logprobs`) or reward-model scores.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F

__all__ = ["rebel_loss", "dpo_loss", "bradley_terry_loss"]


def rebel_loss(
    logps: torch.Tensor,
    other_logps: torch.Tensor,
    sampler_logps: torch.Tensor,
    sampler_other_logps: torch.Tensor,
    rewards: torch.Tensor,
    other_rewards: torch.Tensor,
    eta: Union[float, torch.Tensor],
) -> torch.Tensor:
    """REBEL's regression loss (docs/method.md#rebel), one value per prompt.

    ``((1/eta) * [(log pi(y|x) - log pi_t(y|x)) - (log pi(y'|x) - log pi_t(y'|x))]
    - (r(x, y) - r(x, y')))^2``

    Args:
        logps, other_logps: log pi_theta of the two responses y, y' (with gradient).
        sampler_logps, sampler_other_logps: the same under the policy pi_t that sampled
            them (or a frozen reference); treated as constants.
        rewards, other_rewards: r(x, y) and r(x, y').
        eta: the step size eta > 0 (a KL-regularisation strength); a tensor broadcast against
            the losses gives each row its own.
    """
    if bool(torch.any(torch.as_tensor(eta) <= 0)):
        raise ValueError(f"eta must be positive, got {eta}")
    log_ratio = (logps - sampler_logps.detach()) - (other_logps - sampler_other_logps.detach())
    return (log_ratio / eta - (rewards - other_rewards).to(log_ratio.dtype)) ** 2


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO's loss, one value per pair (docs/method.md#dpo):
    ``-log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])``.
    """
    margin = (chosen_logps - ref_chosen_logps.detach()) - (rejected_logps - ref_rejected_logps.detach())
    return -F.logsigmoid(beta * margin)


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """The Bradley-Terry reward-model loss, one value per pair:
    ``-log sigmoid(r(x, y_w) - r(x, y_l))`` (docs/method.md#bradley-terry)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)
