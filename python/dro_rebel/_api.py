"""The public entry points. Everything happens in the native core, ``dro_rebel._core``
(rust/python/): the conversion of numpy arrays of any dtype and layout, torch tensors (any
device) and sequences, the checks, the calibrated radius and the solves. :func:`robust_weights`
is the native function itself; :func:`worst_case` wraps the native result in a
:class:`WorstCase`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

from dro_rebel import _core
from dro_rebel._core import calibrated_radius, robust_weights

__all__ = ["robust_weights", "worst_case", "WorstCase", "AMBIGUITY_SETS", "calibrated_radius"]

AMBIGUITY_SETS = ("kl", "chi2", "cvar", "tv", "wasserstein")

Radius = Union[float, str, None]


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


def _check_arguments(
    ambiguity: Any,
    radius: Radius = None,
    penalty: Optional[float] = None,
    alpha: Optional[float] = None,
    confidence: Optional[float] = None,
    tol: Optional[float] = None,
    p: float = 1.0,
) -> None:
    """The errors ``robust_weights`` would raise for these arguments, before there are losses
    (the torch layer checks its configuration with it): it solves a one-sample problem with
    them, so the checks and their messages are the core's own. A set that is not a string is
    an :class:`AmbiguityError` here, where the function, which binds its arguments as Python
    does, raises a ``TypeError``."""
    if not isinstance(ambiguity, str):
        names = ", ".join(f'"{name}"' for name in AMBIGUITY_SETS)
        raise _core.AmbiguityError(f"ambiguity must be one of {names}, got {ambiguity!r}")
    geometry = {"cost": [[0.0]]} if ambiguity == "wasserstein" else {}
    _core.robust_weights(
        [0.0],
        ambiguity,
        radius=radius,
        penalty=penalty,
        alpha=alpha,
        confidence=confidence,
        tol=tol,
        p=p,
        **geometry,
    )


def _resolve_radius(
    radius: Radius,
    confidence: Optional[float],
    ambiguity: Any,
    penalty: Optional[float],
    host: Any,
    groups: Any,
) -> Optional[float]:
    """The number ``robust_weights`` solves with for ``radius``: itself, or the calibrated radius
    of this problem's size (its samples, or its distinct groups)."""
    return _core.resolve_radius(radius, confidence, ambiguity, penalty, host, groups)


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
    weights, value, dual, iterations, used, plan = _core.worst_case(
        losses,
        ambiguity,
        radius=radius,
        penalty=penalty,
        alpha=alpha,
        reference=reference,
        groups=groups,
        tol=tol,
        p=p,
        features=features,
        cost=cost,
        confidence=confidence,
    )
    return WorstCase(weights, value, dual, iterations, used, plan)
