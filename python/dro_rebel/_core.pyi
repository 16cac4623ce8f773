"""The native core (rust/python.rs). ``robust_weights`` is public, as
:func:`dro_rebel.robust_weights`; ``worst_case`` is private: it takes contiguous
float64/float32 numpy arrays, which ``dro_rebel._api`` makes of any other input."""

from typing import Any, Literal, Optional, Union

import numpy as np
import numpy.typing as npt

_Losses = Union[npt.NDArray[np.float64], npt.NDArray[np.float32]]
_Plan = Optional[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]]

__all__ = ["__version__", "build_profile", "robust_weights", "worst_case"]

__version__: str
# "release" or "debug": benchmarks refuse a debug build.
build_profile: str

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
        ValueError: NaN or inf losses, a negative or NaN radius, a non-positive penalty, a bad
            reference or group labels, an empty batch, a wrong shape, an unknown set, a
            ``confidence`` outside (0.5, 1) or without ``radius="calibrated"``.
    """

def worst_case(
    losses: _Losses,
    ambiguity: str,
    radius: Optional[float],
    penalty: Optional[float],
    alpha: Optional[float],
    reference: Optional[npt.NDArray[np.float64]],
    groups: Optional[npt.NDArray[np.int64]],
    tol: Optional[float],
    p: float,
    features: Optional[npt.NDArray[np.float64]],
    cost: Optional[npt.NDArray[np.float64]],
) -> tuple[_Losses, Any, Any, Any, Optional[float], Any]:
    """(weights, value, dual, iterations, radius as used, plan). For 1-D losses value is a
    float, dual a float or None, iterations an int and plan a (source, target, mass) tuple or
    None; for 2-D losses value, dual and iterations are arrays with one entry per row (dual None
    when no set has one) and plan a list of per-row plans or None."""
