"""The public entry points: normalise the caller's input, call the native core, hand back
the caller's type.

Everything numeric (validation of values, the solves) happens in ``dro_rebel._core``; this
module only turns numpy arrays, torch tensors (any device) and Python sequences into the
contiguous float32/float64 host arrays the core takes, and turns the weights back into what
the caller passed. It never writes into the caller's arrays.

:func:`robust_weights` is native (``rust/python.rs``): a contiguous float64/float32 numpy
array without extras, the hot path of a training loop, runs no Python frame; everything else
it hands to :func:`_convert_and_solve` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Optional, Union

import numpy as np

from dro_rebel import _core
from dro_rebel._core import robust_weights

__all__ = ["robust_weights", "worst_case", "WorstCase", "AMBIGUITY_SETS", "calibrated_radius"]

AMBIGUITY_SETS = ("kl", "chi2", "cvar", "tv", "wasserstein")

CALIBRATED = "calibrated"
"""The radius that makes V* an upper confidence bound on the mean loss."""

CALIBRATED_SETS = ("chi2", "kl")
"""The sets whose radius can be calibrated: the phi-divergences with phi''(1) = 1."""

DEFAULT_CONFIDENCE = 0.95

Radius = Union[float, str, None]

_NATIVE_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


@dataclass(frozen=True)
class WorstCase:
    """The solution of one call to :func:`worst_case`.

    For 2-D losses (one problem per row) ``value``, ``dual`` and ``iterations`` are numpy
    arrays with one entry per row, and ``plan`` a list with one plan per row.
    """

    weights: Any
    """q*, in the caller's type (numpy array or torch tensor on the caller's device)."""
    value: Any
    """sum_i q*_i l_i: the worst-case risk V* for the constrained form."""
    dual: Any
    """The optimal dual variable: tau (kl), eta (chi2, cvar), lam (wasserstein); None for tv."""
    iterations: Any
    """Passes or iterations the solver took."""
    radius: Optional[float]
    """The radius (or alpha for cvar) as used; None for a penalised solve."""
    plan: Any = None
    """Wasserstein only: the transport plan as (source, target, mass) arrays, at most n + 1
    entries, row sums the reference and column sums the weights."""


def calibrated_radius(n: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The radius rho = q / (2n) of ``radius="calibrated"``: q is the (2 * confidence - 1)
    quantile of the chi-square distribution with one degree of freedom, n the number of
    samples (or groups) in the problem.

    With it, the worst-case value V* of the ``"chi2"`` or ``"kl"`` ball is an asymptotically
    exact one-sided upper confidence bound, at ``confidence``, for the mean loss
    (docs/method.md#calibrated-radius). For confidence 0.95, q = 2.706 and rho = 1.353 / n.
    """
    _check_confidence(confidence)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer (the number of samples or groups), got {n!r}")
    # chi2_1 is the law of Z^2: P(Z^2 <= q) = 2c - 1 exactly when q = Phi^-1(c)^2.
    z = NormalDist().inv_cdf(float(confidence))
    return z * z / (2.0 * int(n))


def _check_confidence(confidence: Any) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating, np.integer)):
        raise ValueError(f"confidence must be a number in (0.5, 1), got {confidence!r}")
    if not (0.5 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0.5, 1) (a one-sided level such as 0.95), got {confidence!r}")


def _check_radius(radius: Radius, confidence: Optional[float], ambiguity: Any, penalty: Optional[float]) -> None:
    """The errors of a calibrated radius, by name; a number is the core's to check."""
    if not isinstance(radius, str):
        if confidence is not None:
            raise ValueError(
                f'confidence= sets the level of radius="calibrated"; it means nothing with radius={radius!r}'
            )
        return
    if radius != CALIBRATED:
        raise ValueError(f'radius must be a number or "calibrated", got {radius!r}')
    if ambiguity not in CALIBRATED_SETS:
        raise ValueError(
            f'radius="calibrated" is defined for the {" and ".join(CALIBRATED_SETS)} sets, not {ambiguity!r}'
        )
    if penalty is not None:
        raise ValueError('radius="calibrated" is a constrained form: give it or penalty=, not both')
    if confidence is not None:
        _check_confidence(confidence)


def _resolve_radius(
    radius: Radius,
    confidence: Optional[float],
    ambiguity: Any,
    penalty: Optional[float],
    host: np.ndarray,
    groups: Optional[np.ndarray],
) -> Any:
    """The number to hand the core for ``radius``: itself, or the calibrated radius of this
    problem's size."""
    _check_radius(radius, confidence, ambiguity, penalty)
    if not isinstance(radius, str):
        return radius
    confidence = DEFAULT_CONFIDENCE if confidence is None else confidence
    return calibrated_radius(_problem_size(host, groups), confidence)


def _problem_size(host: np.ndarray, groups: Optional[np.ndarray]) -> int:
    """n of the calibrated radius: the samples of a row, or its distinct groups."""
    if groups is None:
        return int(host.shape[-1])
    if groups.ndim == 1:
        return int(np.unique(groups).size)
    counts = {int(np.unique(row).size) for row in groups}
    if len(counts) != 1:
        raise ValueError(
            'radius="calibrated" with one row of groups per problem needs the same number of '
            f"groups in every row (one radius for the call), got counts {sorted(counts)}"
        )
    return counts.pop()


def _convert_and_solve(
    losses: Any,
    ambiguity: str,
    radius: Radius,
    penalty: Optional[float],
    alpha: Optional[float],
    reference: Any,
    groups: Any,
    tol: Optional[float],
    p: float,
    features: Any,
    cost: Any,
    confidence: Optional[float] = None,
) -> Any:
    """:func:`robust_weights` for what its native fast path does not take: torch tensors,
    sequences, other dtypes or layouts, any reference, groups or geometry, and the calibrated
    radius."""
    host, restore = _host_losses(losses)
    reference, groups, features, cost = _host_extras(host, reference, groups, features, cost)
    radius = _resolve_radius(radius, confidence, ambiguity, penalty, host, groups)
    weights = _core.worst_case(host, ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost)[0]
    return restore(weights)


def worst_case(
    losses: Any,
    ambiguity: str = "chi2",
    *,
    radius: Radius = None,
    penalty: Optional[float] = None,
    alpha: Optional[float] = None,
    reference: Any = None,
    groups: Any = None,
    tol: Optional[float] = None,
    p: float = 1.0,
    features: Any = None,
    cost: Any = None,
    confidence: Optional[float] = None,
) -> WorstCase:
    """Like :func:`robust_weights`, but returns the whole solution: weights, value V*, the dual
    variable, the iteration count, the radius as used (the number, for
    ``radius="calibrated"``) and (Wasserstein) the transport plan."""
    host, restore = _host_losses(losses)
    reference, groups, features, cost = _host_extras(host, reference, groups, features, cost)
    radius = _resolve_radius(radius, confidence, ambiguity, penalty, host, groups)
    weights, value, dual, iterations, used, plan = _core.worst_case(
        host, ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost
    )
    return WorstCase(restore(weights), value, dual, iterations, used, plan)


def _host_losses(losses: Any):
    """The losses as a contiguous float64/float32 host array, and a function that turns the
    weights back into the caller's type."""
    if type(losses) is np.ndarray and losses.dtype in _NATIVE_DTYPES:
        # The hot path of a training loop: no copy of contiguous input.
        if not losses.flags.c_contiguous:
            losses = np.ascontiguousarray(losses)
        _check_ndim(losses.ndim, losses.shape)
        return losses, _identity
    if _is_torch_tensor(losses):
        return _host_from_torch(losses)
    return _host_array(losses, "losses"), _identity


def _identity(weights: np.ndarray) -> np.ndarray:
    return weights


def _check_ndim(ndim: int, shape: tuple) -> None:
    if ndim not in (1, 2):
        raise ValueError(f"losses must be 1-D (one problem) or 2-D (one problem per row), got shape {shape}")


def _host_array(values: Any, name: str, *, allow_float32: bool = True) -> np.ndarray:
    """Any array-like of real numbers as a contiguous float64 (or float32) array."""
    if _is_torch_tensor(values):
        values = _torch_to_numpy(values, name)
    try:
        array = np.asarray(values)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} must be an array of real numbers: {exc}") from None
    kind = array.dtype.kind
    if kind not in "fiu":
        raise ValueError(
            f"{name} must hold real numbers, got dtype {array.dtype}"
            + (" (convert booleans explicitly)" if kind == "b" else "")
        )
    if allow_float32 and array.dtype == np.float32:
        dtype = np.float32
    else:
        dtype = np.float64
    if name == "losses":
        _check_ndim(array.ndim, array.shape)
    return np.ascontiguousarray(array, dtype=dtype)


def _host_extras(host: np.ndarray, reference: Any, groups: Any, features: Any, cost: Any):
    """Reference, groups and Wasserstein geometry as contiguous host arrays of the right shape."""
    if reference is not None:
        reference = _host_array(reference, "reference", allow_float32=False)
        if reference.shape not in (host.shape[-1:], host.shape):
            raise ValueError(
                f"reference must have shape {host.shape[-1:]} or {host.shape} to match the "
                f"losses, got {reference.shape}"
            )
    if groups is not None:
        groups = _host_groups(groups, host.shape)
    if features is not None:
        features = _host_array(features, "features", allow_float32=False)
        if features.ndim != 2 or features.shape[0] != host.shape[-1]:
            raise ValueError(
                f"features must have shape (n, d) with n = {host.shape[-1]} (one row per sample), got {features.shape}"
            )
    if cost is not None:
        cost = _host_array(cost, "cost", allow_float32=False)
        n = host.shape[-1]
        if cost.shape != (n, n):
            raise ValueError(f"cost must have shape ({n}, {n}), got {cost.shape}")
    return reference, groups, features, cost


def _host_groups(groups: Any, shape: tuple) -> np.ndarray:
    if _is_torch_tensor(groups):
        groups = _torch_to_numpy(groups, "groups")
    labels = np.asarray(groups)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError("groups must be integer labels, got non-integer values")
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"groups must be integer labels, got dtype {labels.dtype}")
    if labels.shape not in (shape[-1:], shape):
        raise ValueError(f"groups must have shape {shape[-1:]} or {shape} to match the losses, got {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"groups must be non-negative labels, got {labels.min()}")
    return np.ascontiguousarray(labels, dtype=np.int64)


def _is_torch_tensor(value: Any) -> bool:
    # No import of torch: it is optional, and importing it costs a second.
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _torch_to_numpy(tensor: Any, name: str) -> np.ndarray:
    import torch

    tensor = tensor.detach()
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    if tensor.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor.cpu().numpy()


def _host_from_torch(tensor: Any):
    import torch

    dtype = tensor.dtype
    if tensor.is_cpu and tensor.layout is torch.strided and dtype in (torch.float64, torch.float32):
        # The hot path of a CPU training loop: share memory both ways, no dtype or device moves.
        # (is_cpu, and detach only where needed: device.type and detach are a sizeable share of
        # a call on a few losses.)
        host = (tensor.detach() if tensor.requires_grad else tensor).numpy()
        if not host.flags.c_contiguous:
            host = np.ascontiguousarray(host)
        _check_ndim(host.ndim, host.shape)
        return host, torch.from_numpy
    device = tensor.device
    host = _host_array(_torch_to_numpy(tensor, "losses"), "losses")
    out_dtype = dtype if dtype.is_floating_point else torch.float64

    def restore(weights: np.ndarray) -> Any:
        return torch.from_numpy(weights).to(device=device, dtype=out_dtype)

    return host, restore
