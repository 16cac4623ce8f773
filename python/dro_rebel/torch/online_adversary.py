"""``OnlineGroupAdversary``: Sagawa et al.'s online group DRO, group weights that persist
across steps (docs/method.md#online-group-adversary).

The per-batch exact worst case (``RobustLoss`` with ``groups=``) is the adversary's best
response to one batch: it sees only that batch's group means. This adversary instead plays
exponentiated gradient (mirror descent on the simplex over groups) against the sequence of
batches, as in Sagawa et al. (ICLR 2020), Algorithm 1. At each call, with L_g the
reference-weighted mean loss of group g in the batch (the same L_g as ``groups=``,
docs/method.md#groups):

    log q_g <- log q_g + step_size * L_g        for every group g present in the batch

(a group seen for the first time starts at log q_g = 0), and the batch's samples get

    q_i = Qn_g * (p_i / P_g),   Qn_g = q_g / sum of q_h over the groups h present in the batch,

P_g the group's reference mass in the batch, so that the weights sum to 1 as every other set's do.
A group is present when its reference mass in the batch is positive; samples of a group with
zero mass get weight 0, as in the exact solve.

Data flow: host float64 arrays in, host float64 weights out. The state (label -> log q_g,
float64) is kept in log space, where it cannot overflow; computed from the gathered batch, it
is the same on every rank.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict

import numpy as np

__all__ = ["OnlineGroupAdversary", "ADVERSARIES"]

ADVERSARIES = ("exact", "online")
"""The adversaries of ``RobustLoss(adversary=...)``: the per-batch exact worst case, or this one."""


class OnlineGroupAdversary:
    """Group weights updated by exponentiated gradient on each batch's group losses.

    Args:
        step_size: eta_q of q_g <- q_g exp(eta_q L_g), finite and >= 0. Larger moves weight
            to the groups with high loss faster; 0 keeps every present group at the same
            weight (group-balanced reweighting).

    ``weights(losses, groups, reference=None)`` updates the state with the batch's group
    losses and returns the batch's sample weights; ``weights(..., update=False)`` weighs
    with the current state and leaves it as it is (evaluation). ``log_weights`` is the state,
    a dict from group label to log q_g; ``state_dict()`` / ``load_state_dict()`` save and
    restore it (checkpoints).
    """

    def __init__(self, step_size: float = 0.01):
        if isinstance(step_size, bool) or not (
            isinstance(step_size, numbers.Real) and math.isfinite(step_size) and step_size >= 0
        ):
            raise ValueError(f"adversary_step_size must be a finite number >= 0, got {step_size!r}")
        self.step_size = float(step_size)
        self.log_weights: Dict[int, float] = {}

    def __repr__(self) -> str:
        return f"OnlineGroupAdversary(step_size={self.step_size}, groups={len(self.log_weights)})"

    def weights(
        self, losses_host: Any, groups_host: Any, reference_host: Any = None, *, update: bool = True
    ) -> np.ndarray:
        """Update log q_g with this batch's group losses (unless ``update=False``), then
        return the batch's sample weights q (float64, summing to 1).

        Args:
            losses_host: per-sample losses (n,), finite.
            groups_host: integer group labels (n,).
            reference_host: the nominal distribution p over the batch (n,), non-negative
                with a positive sum; None for uniform.
            update: False weighs with the current state without updating it.
        """
        losses = np.asarray(losses_host, dtype=np.float64)
        if losses.ndim != 1 or losses.size == 0:
            raise ValueError(f"losses must be a non-empty vector, got shape {losses.shape}")
        if not np.isfinite(losses).all():
            raise ValueError(f"losses must be finite; non-finite at positions {np.flatnonzero(~np.isfinite(losses))}")
        groups = _labels(groups_host, losses.size)
        reference = _reference(reference_host, losses.size)
        labels, group_of = np.unique(groups, return_inverse=True)
        mass = np.bincount(group_of, weights=reference, minlength=labels.size)
        present = mass > 0
        # The mean as sum_i (p_i / P_g) l_i, in sample order, as the exact solve computes it.
        share = np.divide(reference, mass[group_of], out=np.zeros_like(reference), where=present[group_of])
        group_loss = np.bincount(group_of, weights=share * losses, minlength=labels.size)
        log_q = np.empty(labels.size)
        for g, label in enumerate(labels.tolist()):
            log_q[g] = self.log_weights.get(label, 0.0)
            if update and present[g]:
                log_q[g] += self.step_size * group_loss[g]
                self.log_weights[label] = float(log_q[g])
        # Normalised over the present groups, from the largest log weight down (no overflow).
        q = np.where(present, np.exp(log_q - log_q[present].max()), 0.0)
        q /= q.sum()
        return q[group_of] * share

    def state_dict(self) -> Dict[str, Any]:
        """The state as plain lists (``labels``, ``log_weights``), for ``torch.save`` and JSON."""
        return {"labels": list(self.log_weights), "log_weights": list(self.log_weights.values())}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; ``step_size`` stays the constructor's."""
        labels, log_weights = list(state["labels"]), list(state["log_weights"])
        if len(labels) != len(log_weights):
            raise ValueError(f"adversary state has {len(labels)} labels but {len(log_weights)} log weights")
        if not all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
            raise ValueError("adversary state labels must be integers")
        if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in log_weights):
            raise ValueError("adversary state log weights must be finite numbers")
        self.log_weights = {label: float(value) for label, value in zip(labels, log_weights)}


def _labels(groups: Any, n: int) -> np.ndarray:
    if groups is None:
        raise ValueError("the online adversary weighs groups: pass groups= (set group_column in a trainer config)")
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"groups has shape {labels.shape} but there are {n} losses")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"groups must be integer labels, got dtype {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def _reference(reference: Any, n: int) -> np.ndarray:
    if reference is None:
        return np.full(n, 1.0 / n)
    p = np.asarray(reference, dtype=np.float64)
    if p.shape != (n,):
        raise ValueError(f"reference has shape {p.shape} but there are {n} losses")
    if not (np.isfinite(p).all() and (p >= 0).all() and p.sum() > 0):
        raise ValueError("reference must be finite, non-negative and have a positive sum")
    # p_i times 1/sum, as the exact solve normalises it.
    return p * (1.0 / p.sum())
