"""The native core (rust/python/). ``robust_weights`` and ``calibrated_radius`` are public, as
:func:`dro_rebel.robust_weights` and :func:`dro_rebel.calibrated_radius`, and so are the
exception classes; ``worst_case`` returns a tuple that :func:`dro_rebel.worst_case` wraps, and
``resolve_radius`` serves the torch layer."""

from typing import Any, Literal, Optional, Union

__all__ = [
    "__version__",
    "build_profile",
    "robust_weights",
    "worst_case",
    "calibrated_radius",
    "resolve_radius",
    "kernels",
    "DroRebelError",
    "LossesError",
    "ShapeError",
    "BudgetError",
    "ReferenceDistributionError",
    "GroupsError",
    "AmbiguityError",
    "GeometryError",
    "InternalError",
]

__version__: str
# "release" or "debug": benchmarks refuse a debug build.
build_profile: str

class DroRebelError(ValueError): ...
class LossesError(DroRebelError): ...
class ShapeError(DroRebelError): ...
class BudgetError(DroRebelError): ...
class ReferenceDistributionError(DroRebelError): ...
class GroupsError(DroRebelError): ...
class AmbiguityError(DroRebelError): ...
class GeometryError(DroRebelError): ...
class InternalError(RuntimeError): ...

def robust_weights(
    losses: Any,
    ambiguity: str = "chi2",
    *,
    radius: Union[float, Literal["calibrated"], None] = None,
    penalty: Optional[float] = None,
    alpha: Optional[float] = None,
    reference: Any = None,
    groups: Any = None,
    tol: Optional[float] = None,
    p: float = 1.0,
    features: Any = None,
    cost: Any = None,
    confidence: Optional[float] = None,
) -> Any:
    """Worst-case weights q* of the samples, in the type, dtype and device of ``losses``.

    Args:
        losses: per-sample losses, shape (n,) for one problem or (m, n) for m problems (one
            per row). numpy array, torch tensor (any device; it is detached), or a sequence.
        ambiguity: ``"kl"``, ``"chi2"``, ``"cvar"``, ``"tv"`` or ``"wasserstein"``.
        radius: size of the ambiguity set (constrained form). rho = 0 gives q = reference.
            ``"calibrated"`` (``chi2`` and ``kl``): rho = q / (2n), q the (2 * confidence - 1)
            quantile of the chi-square distribution with one degree of freedom and n the number
            of samples (of groups with ``groups=``), so that V* is an asymptotically exact
            upper confidence bound on the mean loss (docs/method.md#calibrated-radius).
        penalty: a fixed dual variable instead of a radius (penalised form: temperature tau
            for ``kl``, lam for ``chi2`` and ``wasserstein``).
        alpha: the CVaR level in (0, 1] (``cvar`` only): q_i <= p_i / alpha.
        reference: the nominal distribution p (non-negative, normalised to sum 1); uniform by
            default. Shape (n,) shared by all rows, or the shape of ``losses``.
        groups: integer group labels, shape (n,) or the shape of ``losses``: the set then
            applies to the mixture over groups (docs/method.md#groups).
        tol: tolerance of the iterative solves (default 1e-12, relative).
        p: the Wasserstein type (cost d_ij ** p), p >= 1.
        features: ``wasserstein``: (n, d) features; the cost is their Euclidean distance.
        cost: ``wasserstein``: an (n, n) matrix of distances d_ij.
        confidence: the level of ``radius="calibrated"``, in (0.5, 1); 0.95 by default.

    Returns:
        q*, same shape as ``losses``: float32 for float32 numpy input, float64 otherwise; for a
        torch tensor, a tensor of the same dtype on the same device.

    Raises:
        DroRebelError: a subclass of ValueError for each kind of bad input: LossesError (NaN,
            inf, empty, not real numbers), ShapeError (not 1-D or 2-D, shapes that do not fit),
            BudgetError (a negative or NaN radius, a non-positive penalty, alpha outside (0, 1],
            a ``confidence`` outside (0.5, 1) or without ``radius="calibrated"``),
            ReferenceDistributionError, GroupsError, AmbiguityError (an unknown set) and
            GeometryError (Wasserstein features, cost or p).
        TypeError: an argument of the wrong type.
    """

def worst_case(
    losses: Any,
    ambiguity: str = "chi2",
    *,
    radius: Union[float, Literal["calibrated"], None] = None,
    penalty: Optional[float] = None,
    alpha: Optional[float] = None,
    reference: Any = None,
    groups: Any = None,
    tol: Optional[float] = None,
    p: float = 1.0,
    features: Any = None,
    cost: Any = None,
    confidence: Optional[float] = None,
) -> tuple[Any, Any, Any, Any, Optional[float], Any]:
    """The arguments of ``robust_weights``; returns (weights, value, dual, iterations, radius as
    used, plan). For 1-D losses value is a float, dual a float or None, iterations an int and
    plan a (source, target, mass) tuple or None; for 2-D losses value, dual and iterations are
    arrays with one entry per row (dual None when no set has one) and plan a list of per-row
    plans or None. ``dro_rebel.worst_case`` wraps it in a ``WorstCase``."""

def calibrated_radius(n: int, confidence: float = 0.95) -> float:
    """The radius rho = q / (2n) of ``radius="calibrated"``: q is the (2 * confidence - 1)
    quantile of the chi-square distribution with one degree of freedom, n the number of
    samples (or groups) in the problem.

    With it, the worst-case value V* of the ``"chi2"`` or ``"kl"`` ball is an asymptotically
    exact one-sided upper confidence bound, at ``confidence``, for the mean loss
    (docs/method.md#calibrated-radius). For confidence 0.95, q = 2.706 and rho = 1.353 / n.
    """

def resolve_radius(
    radius: Union[float, str, None],
    confidence: Optional[float],
    ambiguity: Any,
    penalty: Optional[float],
    losses: Any = None,
    groups: Any = None,
) -> Optional[float]:
    """The radius a call of ``robust_weights`` would solve with (None without one), after the same
    checks: for ``radius="calibrated"`` the number for ``losses`` and ``groups`` (None when
    ``losses`` is None: the arguments are only checked). ``ambiguity`` may be any value."""

def kernels() -> str:
    """The build of the kernels this process runs: ``"avx2"`` (AVX2 and FMA) or ``"portable"``;
    ``DRO_REBEL_PORTABLE=1`` in the environment forces the portable one."""
