"""Worst-case sample weights for distributionally robust alignment.

``robust_weights(losses, ambiguity, radius=...)`` solves the dual of a distributionally
robust optimisation problem over the minibatch (KL, chi-square, CVaR, TV or type-p
Wasserstein ambiguity sets; see docs/method.md) and returns the worst-case weights q*.
Multiply your per-sample losses by them (detached) and you get the gradient of the robust
objective: ``loss = (robust_weights(l.detach(), "chi2", radius=0.1) * l).sum()``.

Bad input raises a subclass of :class:`DroRebelError`, itself a ``ValueError``: one class per
kind of problem (:class:`LossesError`, :class:`BudgetError`, ...). A bug in the core raises
:class:`InternalError`.
"""

from __future__ import annotations

from dro_rebel._api import WorstCase, calibrated_radius, robust_weights, worst_case
from dro_rebel._core import (
    AmbiguityError,
    BudgetError,
    DroRebelError,
    GeometryError,
    GroupsError,
    InternalError,
    LossesError,
    ReferenceDistributionError,
    ShapeError,
    __version__,
    build_profile,
)

__all__ = [
    "robust_weights",
    "worst_case",
    "WorstCase",
    "calibrated_radius",
    "DroRebelError",
    "LossesError",
    "ShapeError",
    "BudgetError",
    "ReferenceDistributionError",
    "GroupsError",
    "AmbiguityError",
    "GeometryError",
    "InternalError",
    "__version__",
    "build_profile",
]
