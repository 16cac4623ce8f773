"""How robust_weights binds its arguments. It is a native PyO3 function (rust/python/mod.rs),
checked against Python's own binding: worst_case is a Python function with the same signature,
and every call either binds in both, to the same weights or the same ValueError, or raises a
TypeError in both (PyO3 words a few of them otherwise, and checks them in another order)."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dro_rebel import robust_weights, worst_case

L = np.array([0.5, 2.0, -1.0, 3.0])

# A value for each parameter that binds and solves; "radiu" and "weights" are unknown names.
VALUES = {
    "losses": L,
    "ambiguity": "kl",
    "radius": 0.1,
    "penalty": 1.0,
    "alpha": 0.5,
    "reference": None,
    "groups": None,
    "tol": 1e-10,
    "p": 1.0,
    "features": None,
    "cost": None,
    "radiu": 0.1,
    "weights": L,
}
POSITIONAL = [L, "kl", 0.1]


def outcome(function, args, kwargs):
    """The weights, the ValueError's type and message, or TypeError."""
    try:
        result = function(*args, **kwargs)
    except TypeError:
        return TypeError
    except ValueError as error:
        return type(error), str(error)
    return np.asarray(getattr(result, "weights", result)).tolist()


@given(
    positional=st.integers(0, len(POSITIONAL)),
    keywords=st.lists(st.sampled_from(sorted(VALUES)), unique=True, max_size=5),
)
def test_every_call_binds_as_a_python_function_with_the_signature_would(positional, keywords):
    args = POSITIONAL[:positional]
    kwargs = {name: VALUES[name] for name in keywords}
    assert outcome(robust_weights, args, kwargs) == outcome(worst_case, args, kwargs)


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        ((L, "kl", 0.1), {}, "takes from 1 to 2 positional arguments but 3 were given"),
        ((L,), {"radiu": 0.1}, "got an unexpected keyword argument 'radiu'"),
        ((L,), {"losses": L, "radius": 0.1}, "got multiple values for argument 'losses'"),
        ((L, "kl"), {"ambiguity": "tv", "radius": 0.1}, "got multiple values for argument 'ambiguity'"),
        ((), {"radius": 0.1}, "missing 1 required positional argument: 'losses'"),
        ((L, "kl"), {"radius": [0.1]}, "must be real number, not list\nwhile processing 'radius'"),
        ((L, "wasserstein"), {"radius": 0.1, "p": None}, "must be real number, not NoneType\nwhile processing 'p'"),
    ],
)
def test_a_call_that_does_not_bind_is_a_type_error_as_in_python(args, kwargs, message):
    if sys.version_info < (3, 11):
        # PyO3 names the argument in an exception note (PEP 678, which pytest matches too), and
        # Python 3.10 has no notes.
        message = message.partition("\n")[0]
    with pytest.raises(TypeError, match=f"^robust_weights\\(\\) {message}$|^{message}$"):
        robust_weights(*args, **kwargs)


def test_a_radius_named_other_than_calibrated_is_a_value_error_that_names_it():
    # A string radius is a request for a calibrated one; any other string is a wrong value.
    with pytest.raises(ValueError, match="radius must be a number or \"calibrated\", got '0.1'"):
        robust_weights(L, "kl", radius="0.1")


def test_keywords_not_interned_are_found_by_their_text():
    # Keywords written in source are interned and found by identity; these are built at run time.
    penalty, ambiguity = "".join(["pen", "alty"]), "".join(["ambi", "guity"])
    assert sys.intern(penalty) is not penalty
    built = robust_weights(L, **{ambiguity: "kl", penalty: 1.0})
    np.testing.assert_array_equal(built, robust_weights(L, "kl", penalty=1.0))


def test_numbers_of_any_kind_are_taken_as_floats():
    expected = robust_weights(L, "kl", radius=0.5)
    for radius in [np.float64(0.5), np.float32(0.5), 0.5, True and 0.5]:
        np.testing.assert_array_equal(robust_weights(L, "kl", radius=radius), expected)
    np.testing.assert_array_equal(robust_weights(L, "kl", radius=1), robust_weights(L, "kl", radius=1.0))


def test_calls_hold_no_references_to_their_arguments():
    # The arguments are borrowed from CPython's call (METH_FASTCALL): no reference may be kept or lost.
    losses, name, radius = np.array([0.5, 2.0, -1.0]), "".join(["k", "l"]), 0.12345
    before = [sys.getrefcount(x) for x in (losses, name, radius)]
    for _ in range(1000):
        robust_weights(losses, name, radius=radius)
        with pytest.raises(TypeError):
            robust_weights(losses, name, radius=radius, radiu=radius)
    assert [sys.getrefcount(x) for x in (losses, name, radius)] == before


def test_it_is_a_module_function_that_pickles_by_name():
    # As PyO3's functions are: bound to dro_rebel._core, so pickle (and multiprocessing) finds it.
    assert robust_weights.__module__ == "dro_rebel._core"
    assert robust_weights.__name__ == robust_weights.__qualname__ == "robust_weights"
    assert pickle.loads(pickle.dumps(robust_weights)) is robust_weights
