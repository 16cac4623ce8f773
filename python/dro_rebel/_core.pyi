"""The native core (rust/python.rs). Private: use :func:`dro_rebel.robust_weights`, which
normalises the input (any array-like, torch tensors, non-contiguous arrays) before calling
these with contiguous float64/float32 numpy arrays."""

from typing import Any, Optional, Union

import numpy as np
import numpy.typing as npt

_Losses = Union[npt.NDArray[np.float64], npt.NDArray[np.float32]]
_Plan = Optional[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]]

__all__ = ["NotNative", "__version__", "build_profile", "weights", "worst_case"]

__version__: str
# "release" or "debug": benchmarks refuse a debug build.
build_profile: str

class NotNative(TypeError):
    """The losses are not a C-contiguous float64/float32 numpy array: robust_weights then
    converts them and calls again (never raised to its callers)."""

def weights(
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
) -> _Losses:
    """The worst-case weights only, same shape and dtype as ``losses`` (1-D or 2-D)."""

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
