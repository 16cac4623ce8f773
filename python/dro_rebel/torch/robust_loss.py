"""``RobustLoss``: per-sample losses in, the distributionally robust scalar out.

The robust objective is V*(theta) = max_{q in U} sum_i q_i l_i(theta). By Danskin's theorem
its gradient is sum_i q*_i grad l_i(theta) with q* the worst-case weights held fixed, so the
module solves for q* on the *detached* losses (``dro_rebel.robust_weights``) and returns
``(q* * l).sum()``. Gradients never flow through the weights (docs/method.md#danskin-detached-weights:
through softmax or threshold weights they would push low-loss samples' losses up).

Data flow: losses (any device, any floating dtype) -> host float64 array -> native solve ->
weights -> back to the losses' device, in float32 or wider (a half-precision loss times its
weight is computed in float32). Only the loss vector visits the host: one device-to-host copy
and one host-to-device copy per solve.

Under ``torch.distributed`` the losses of all ranks are gathered, every rank solves the same
global problem and keeps its slice of q*; each rank returns ``world_size * (q*_local *
l_local).sum()``, so that the mean over ranks (what DDP does to gradients) is the global
robust loss and its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

import dro_rebel
from dro_rebel._api import _check_arguments, _resolve_radius
from dro_rebel.torch.distributed import gather_rows, world_size
from dro_rebel.torch.gradient_penalty import GRADIENT_PENALTY_FORMS, per_sample_grad_sq_norms
from dro_rebel.torch.online_adversary import ADVERSARIES, OnlineGroupAdversary

__all__ = ["RobustLoss", "RobustStats", "NonFiniteLossError"]


class NonFiniteLossError(ValueError):
    """A per-sample loss is NaN or infinite; ``indices`` are positions in the (global) batch."""

    def __init__(self, indices: Iterable[int], values: Iterable[float]):
        self.indices = [int(i) for i in indices]
        self.values = [float(v) for v in values]
        shown = ", ".join(f"#{i}: {v}" for i, v in zip(self.indices[:8], self.values[:8]))
        more = f" and {len(self.indices) - 8} more" if len(self.indices) > 8 else ""
        super().__init__(f"non-finite loss at batch position {shown}{more}")


@dataclass(frozen=True)
class RobustStats:
    """Diagnostics of the last robust reduction, over the global batch."""

    value: float
    """V* = sum_i q*_i l_i (for the gradient penalty: the penalised objective)."""
    mean: float
    """The nominal loss, the reference-weighted mean of the losses."""
    ess: float
    """Kish's effective sample size of the weights, 1 / sum_i q_i^2 (n for uniform weights)."""
    max_weight: float
    """The largest weight (1/n for uniform weights)."""
    n: int
    """The global batch size."""
    radius: Optional[float] = None
    """The radius the solve used (the number, for ``radius="calibrated"``); None for a
    penalised solve."""

    def as_dict(self, prefix: str = "robust/") -> dict:
        keys = ("value", "mean", "ess", "max_weight") + (("radius",) if self.radius is not None else ())
        return {f"{prefix}{key}": getattr(self, key) for key in keys}


class RobustLoss(nn.Module):
    """Map a vector of per-sample losses to the robust scalar.

    Args:
        ambiguity: ``"kl"``, ``"chi2"``, ``"cvar"``, ``"tv"`` or ``"wasserstein"``
            (docs/method.md).
        radius: the size of the set; 0 gives the nominal (reference-weighted) mean.
            ``"calibrated"`` (``chi2``, ``kl``): q / (2n) for each batch, with n its global
            size (its number of groups with ``groups=``), so that V* is an upper confidence
            bound at ``confidence`` on the batch's mean loss (docs/method.md#calibrated-radius).
        confidence: the level of ``radius="calibrated"`` in (0.5, 1); 0.95 by default.
        penalty: a fixed dual variable instead of a radius (penalised form).
        alpha: the CVaR level (``"cvar"`` only).
        p: the Wasserstein type (exact transport only).
        tol: solver tolerance (default: the core's).
        gradient_penalty: ``"rebel"`` or ``"wdpo"``: with ``ambiguity="wasserstein"``, use the
            first-order gradient-regulariser form (docs/method.md#gradient-penalty) with rho0 = ``radius``
            instead of the exact transport on the batch; ``forward`` then needs
            ``inputs_embeds``.
        adversary: ``"exact"`` (the default): each batch's exact worst case over the set.
            ``"online"``: Sagawa et al.'s online group DRO (:class:`OnlineGroupAdversary`,
            docs/method.md#online-group-adversary): group weights that persist across calls,
            updated by exponentiated gradient on each batch's group losses. It replaces the
            per-batch solve, so it takes no ``radius``, ``penalty``, ``alpha``,
            ``confidence`` or ``gradient_penalty`` (``ambiguity`` is not used), and it needs
            ``groups=``. Each call of :meth:`weights` in training mode is one update;
            in eval mode (``.eval()``) it weighs with the current group weights and leaves
            them as they are. ``self.adversary`` holds its state (``state_dict()``).
        adversary_step_size: eta_q of the online adversary's q_g <- q_g exp(eta_q L_g).

    ``forward(losses, groups=None, reference=None, features=None, cost=None,
    inputs_embeds=None)`` returns the robust loss; ``self.last`` holds its
    :class:`RobustStats`. NaN or infinite losses raise :class:`NonFiniteLossError` (on every
    rank alike) and are never passed to the solver. ``weights(...)`` and ``reduce(losses,
    weights)`` are its two halves, for a loop that solves on one pass over the losses and
    backpropagates another (gradient accumulation, docs/method.md#accumulation).
    """

    def __init__(
        self,
        ambiguity: str = "chi2",
        *,
        radius: Union[float, str, None] = None,
        penalty: Optional[float] = None,
        alpha: Optional[float] = None,
        p: float = 1.0,
        tol: Optional[float] = None,
        gradient_penalty: Optional[str] = None,
        confidence: Optional[float] = None,
        adversary: str = "exact",
        adversary_step_size: float = 0.01,
    ):
        super().__init__()
        if adversary not in ADVERSARIES:
            raise ValueError(f"adversary must be one of {ADVERSARIES}, got {adversary!r}")
        self.adversary: Optional[OnlineGroupAdversary] = None
        if adversary == "online":
            given = dict(
                radius=radius, penalty=penalty, alpha=alpha, confidence=confidence, gradient_penalty=gradient_penalty
            )
            set_names = [name for name, value in given.items() if value is not None]
            if set_names:
                raise ValueError(
                    f"adversary='online' replaces the per-batch worst case over the ambiguity set: "
                    f"leave {', '.join(set_names)} unset"
                )
            self.adversary = OnlineGroupAdversary(adversary_step_size)
        else:
            # Bad arguments fail here, with robust_weights' own messages, not at the first batch.
            _check_arguments(
                ambiguity, radius=radius, penalty=penalty, alpha=alpha, confidence=confidence, tol=tol, p=p
            )
        if gradient_penalty is not None:
            if gradient_penalty not in GRADIENT_PENALTY_FORMS:
                raise ValueError(f"gradient_penalty must be one of {GRADIENT_PENALTY_FORMS}, got {gradient_penalty!r}")
            if ambiguity != "wasserstein" or not isinstance(radius, (int, float)) or radius < 0:
                raise ValueError("gradient_penalty needs ambiguity='wasserstein' and radius=rho0 >= 0")
        self.ambiguity = ambiguity
        self.radius = radius
        self.penalty = penalty
        self.alpha = alpha
        self.p = p
        self.tol = tol
        self.gradient_penalty = gradient_penalty
        self.confidence = confidence
        self.last: Optional[RobustStats] = None

    def extra_repr(self) -> str:
        if self.adversary is not None:
            return f"adversary='online', adversary_step_size={self.adversary.step_size}"
        fields = ("radius", "penalty", "alpha", "gradient_penalty", "confidence")
        set_fields = [f"{name}={getattr(self, name)}" for name in fields if getattr(self, name) is not None]
        return ", ".join([repr(self.ambiguity)] + set_fields)

    def forward(
        self,
        losses: torch.Tensor,
        *,
        groups: Any = None,
        reference: Any = None,
        features: Optional[torch.Tensor] = None,
        cost: Any = None,
        inputs_embeds: Optional[Sequence[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """The robust loss of ``losses`` (shape (n,), this rank's shard under distributed).

        Args:
            groups: integer labels (n,) for group DRO (prompt ids, preference types).
            reference: the nominal distribution p over the global batch (default uniform).
            features: (n, d) sample features for the exact Wasserstein set (gathered
                across ranks like the losses).
            cost: a (N, N) distance matrix over the global batch for the exact Wasserstein set.
            inputs_embeds: for ``gradient_penalty``: the input embeddings the losses were
                computed from (see :func:`per_sample_grad_sq_norms`).
        """
        if self.gradient_penalty is not None:
            host = _checked_host(losses)
            return self._gradient_penalised(losses, host, inputs_embeds)
        weights = self.weights(losses, groups=groups, reference=reference, features=features, cost=cost)
        return self.reduce(losses, weights)

    @torch.no_grad()
    def weights(
        self,
        losses: torch.Tensor,
        *,
        groups: Any = None,
        reference: Any = None,
        features: Optional[torch.Tensor] = None,
        cost: Any = None,
    ) -> torch.Tensor:
        """This rank's slice of the worst-case weights q* of the global batch (detached, on the
        losses' device, in the losses' dtype promoted to at least float32: half precision
        cannot hold weights that sum to 1 or that are small), without the reduction;
        ``self.last`` holds its stats.

        With :meth:`reduce` it splits ``forward`` in two, so that the weights of one problem can
        come from one pass over the losses and the gradient from another: a trainer solves once
        over every micro-batch of an optimiser step and then backpropagates each micro-batch
        with its slice. Same arguments as :meth:`forward`."""
        if self.gradient_penalty is not None:
            raise ValueError("gradient_penalty has no worst-case weights: it penalises gradients instead")
        host, offset = _checked_host(losses, with_offset=True)
        group_labels = _gathered_host(groups, losses.device)
        if self.adversary is not None:
            return self._online_weights(losses, host, offset, group_labels, reference)
        radius = _resolve_radius(self.radius, self.confidence, self.ambiguity, self.penalty, host, group_labels)
        weights = dro_rebel.robust_weights(
            host,
            self.ambiguity,
            radius=radius,
            penalty=self.penalty,
            alpha=self.alpha,
            reference=_host(reference),
            groups=group_labels,
            tol=self.tol,
            p=self.p,
            features=_gathered_host(features, losses.device),
            cost=_host(cost),
        )
        self.last = RobustStats(
            value=float(weights @ host),
            mean=float(host.mean() if reference is None else _normalised(_host(reference)) @ host),
            ess=float(1.0 / (weights @ weights)),
            max_weight=float(weights.max()),
            n=host.size,
            radius=None if radius is None else float(radius),
        )
        return _local_weights(weights, offset, losses)

    def _online_weights(
        self, losses: torch.Tensor, host: np.ndarray, offset: int, group_labels: Any, reference: Any
    ) -> torch.Tensor:
        """The online adversary's weights of the global batch (an update in training mode)."""
        assert self.adversary is not None
        if group_labels is None:
            raise ValueError("adversary='online' weighs groups: pass groups= (a trainer: set group_column)")
        reference_host = _host(reference)
        weights = self.adversary.weights(host, group_labels, reference_host, update=self.training)
        self.last = RobustStats(
            value=float(weights @ host),
            mean=float(host.mean() if reference is None else _normalised(reference_host) @ host),
            ess=float(1.0 / (weights @ weights)),
            max_weight=float(weights.max()),
            n=host.size,
        )
        return _local_weights(weights, offset, losses)

    @staticmethod
    def reduce(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """This rank's share of sum_i q_i l_i, for ``weights`` from :meth:`weights`: the sum
        times the number of ranks, so that the mean over ranks (what DDP does to gradients) is
        the global robust loss and its gradient. Computed in float32 or wider whatever the
        dtypes of ``losses`` and ``weights``."""
        dtype = torch.promote_types(torch.promote_types(losses.dtype, weights.dtype), torch.float32)
        robust = (weights.detach().to(dtype) * losses.to(dtype)).sum()
        ranks = world_size()
        return robust if ranks == 1 else ranks * robust

    def _gradient_penalised(
        self,
        losses: torch.Tensor,
        host: np.ndarray,
        inputs_embeds: Optional[Sequence[torch.Tensor]],
    ) -> torch.Tensor:
        if not inputs_embeds:
            raise ValueError("gradient_penalty needs the inputs_embeds the losses were computed from")
        rho0 = float(self.radius or 0.0)  # validated in __init__: radius is rho0 >= 0
        sq_norms = per_sample_grad_sq_norms(losses, inputs_embeds)
        norms_host = gather_rows(sq_norms.detach())[0].to(torch.float64).cpu().numpy()
        total = host.size
        ranks = world_size()
        if self.gradient_penalty == "wdpo":
            # mean_i (l_i + rho0 ||g_i||^2): a mean, so each rank's share is its sum over N.
            local = (losses + rho0 * sq_norms).sum() * (ranks / total)
            value = float(np.mean(host + rho0 * norms_host))
        else:
            # mean_i l_i + rho0 sqrt(mean_i ||g_i||^2). The square root couples the ranks, so
            # each rank adds the first-order term of its own share: the sum over ranks of
            # d(S_r)/(2 N sqrt(S/N)) is exactly d sqrt(S/N) (S = sum of ||g_i||^2 over ranks).
            root = float(np.sqrt(norms_host.mean()))
            local_sum = sq_norms.sum()
            share = (local_sum - local_sum.detach()) / (2.0 * total * max(root, 1e-30))
            local = losses.sum() * (ranks / total) + rho0 * (root + ranks * share)
            value = float(host.mean() + rho0 * root)
        self.last = RobustStats(value=value, mean=float(host.mean()), ess=float(total), max_weight=1.0 / total, n=total)
        return local


def _local_weights(weights: np.ndarray, offset: int, losses: torch.Tensor) -> torch.Tensor:
    """This rank's slice of the global weights, on the losses' device (one host-to-device copy)
    in their dtype promoted to at least float32."""
    dtype = torch.promote_types(losses.dtype, torch.float32)
    local = torch.from_numpy(weights[offset : offset + losses.shape[0]]).to(dtype)
    return local.to(losses.device, non_blocking=True)


def _checked_host(losses: torch.Tensor, with_offset: bool = False) -> Any:
    """The (detached) losses of every rank as one float64 host array, checked finite; with
    ``with_offset``, also the offset of this rank's losses in it."""
    if losses.ndim != 1:
        raise ValueError(f"losses must be a vector of per-sample losses, got shape {tuple(losses.shape)}")
    all_losses, offset = gather_rows(losses.detach())
    host = all_losses.to(torch.float64).cpu().numpy()
    _check_finite(host)
    return (host, offset) if with_offset else host


def _check_finite(host: np.ndarray) -> None:
    finite = np.isfinite(host)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise NonFiniteLossError(bad, host[bad])


def _host(values: Any) -> Any:
    """A tensor as a host array (floating point as float64: numpy has no bfloat16 and the
    solve works in float64); anything else as it is."""
    if isinstance(values, torch.Tensor):
        return _to_numpy(values.detach())
    return values


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    return tensor.cpu().numpy()


def _gathered_host(values: Any, device: torch.device) -> Any:
    """Per-sample values (groups, features) of this rank, gathered over ranks, on the host."""
    if values is None:
        return None
    tensor = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if world_size() > 1:
        # The collective runs on the losses' device (NCCL needs CUDA tensors).
        tensor = gather_rows(tensor.to(device))[0]
    return _to_numpy(tensor)


def _normalised(reference: Any) -> np.ndarray:
    reference = np.asarray(reference, dtype=np.float64)
    return reference / reference.sum()
