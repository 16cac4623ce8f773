"""What robust_weights accepts and returns: numpy arrays of any layout and dtype, lists,
torch tensors (dtype kept, detached); the caller's arrays are never modified; and every bad
input is a ValueError that names the problem."""

from __future__ import annotations

import hashlib
import inspect

import numpy as np
import pytest

from dro_rebel import robust_weights, worst_case

LOSSES = np.array([0.5, 2.0, -1.0, 3.0, 1.5, 0.0])
SETS = [
    ("kl", {"radius": 0.3}),
    ("chi2", {"radius": 0.3}),
    ("cvar", {"alpha": 0.4}),
    ("tv", {"radius": 0.3}),
    ("kl", {"penalty": 1.0}),
    ("chi2", {"penalty": 1.0}),
]


def fingerprint(array) -> tuple:
    if hasattr(array, "detach"):
        array = array.detach().cpu().float().numpy() if array.dtype.is_floating_point else array.numpy()
    array = np.asarray(array)
    return array.shape, array.dtype.str, array.strides, hashlib.sha256(array.tobytes()).hexdigest()


class _Subclass(np.ndarray):
    """An ndarray subclass: not taken by the native fast path, converted like any array-like."""


@pytest.mark.parametrize("ambiguity,size", SETS)
def test_layouts_and_dtypes_give_the_same_weights(ambiguity, size):
    expected = robust_weights(LOSSES, ambiguity, **size)
    wide = np.zeros(12)
    wide[::2] = LOSSES
    read_only = LOSSES.copy()
    read_only.flags.writeable = False
    fortran = np.asfortranarray(np.stack([LOSSES, LOSSES[::-1]]))
    same = {
        "list": LOSSES.tolist(),
        "tuple": tuple(LOSSES.tolist()),
        "strided view": wide[::2],
        "read-only": read_only,
        "big-endian": LOSSES.astype(">f8"),
        "longdouble": LOSSES.astype(np.longdouble),
        "subclass": LOSSES.view(_Subclass),
    }
    for name, losses in same.items():
        q = robust_weights(losses, ambiguity, **size)
        assert type(q) is np.ndarray and q.dtype == np.float64, name
        np.testing.assert_array_equal(q, expected, err_msg=name)
    q = robust_weights(fortran, ambiguity, **size)
    np.testing.assert_array_equal(q[0], expected)
    # The reversed row sums in another order: equal up to rounding.
    np.testing.assert_allclose(q[1], expected[::-1], rtol=1e-14)
    integers = np.array([3, 1, 4, 1, 5, 9])
    for dtype in (np.int64, np.int32, np.uint8, np.int8):
        q = robust_weights(integers.astype(dtype), ambiguity, **size)
        assert q.dtype == np.float64
        np.testing.assert_array_equal(q, robust_weights(integers.astype(float), ambiguity, **size))
    q16 = robust_weights(LOSSES.astype(np.float16), ambiguity, **size)
    assert q16.dtype == np.float64
    q32 = robust_weights(LOSSES.astype(np.float32), ambiguity, **size)
    assert q32.dtype == np.float32
    np.testing.assert_allclose(q32, expected, rtol=1e-6, atol=1e-7)


def test_reference_and_groups_of_any_layout():
    reference = np.array([1, 2, 3, 4, 5, 6])
    groups = np.array([0, 0, 1, 1, 2, 2])
    expected = robust_weights(LOSSES, "chi2", radius=0.2, reference=reference.astype(float), groups=groups)
    wide_groups = np.zeros(12, dtype=np.int32)
    wide_groups[::2] = groups
    for ref, labels in [
        (reference.tolist(), groups.tolist()),
        (reference.astype(np.float32), wide_groups[::2]),
        (reference.astype(np.uint16), groups.astype(np.uint8)),
        (reference.astype(float)[::-1][::-1], groups.astype(float)),
    ]:
        q = robust_weights(LOSSES, "chi2", radius=0.2, reference=ref, groups=labels)
        np.testing.assert_allclose(q, expected, rtol=1e-15)


@pytest.mark.parametrize("ambiguity,size", SETS)
def test_caller_arrays_are_never_modified(ambiguity, size):
    losses = np.ascontiguousarray(np.stack([LOSSES, LOSSES * 2]))
    reference = np.array([1.0, 0.0, 2.0, 1.0, 1.0, 3.0])
    groups = np.array([3, 3, 1, 1, 0, 7])
    inputs = [losses, losses[0], losses[:, ::2], losses.astype(np.float32), losses.T.copy().T]
    before = [fingerprint(x) for x in inputs] + [fingerprint(reference), fingerprint(groups)]
    for x in inputs:
        robust_weights(
            x,
            ambiguity,
            reference=reference[: x.shape[-1]] if x.shape[-1] == 6 else None,
            groups=groups if x.shape[-1] == 6 else None,
            **size,
        )
        worst_case(x, ambiguity, **size)
    after = [fingerprint(x) for x in inputs] + [fingerprint(reference), fingerprint(groups)]
    assert before == after


def test_output_is_a_fresh_array():
    losses = LOSSES.copy()
    q = robust_weights(losses, "kl", radius=0.0)
    assert not np.shares_memory(q, losses)
    q[:] = 7.0
    np.testing.assert_array_equal(losses, LOSSES)


@pytest.fixture(scope="module")
def th():
    """torch, imported only by the tests that need it (skipped where it is not installed)."""
    return pytest.importorskip("torch")


@pytest.mark.parametrize("ambiguity,size", SETS)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_torch_in_torch_out_with_the_same_dtype(th, ambiguity, size, dtype):
    dtype = getattr(th, dtype)
    losses = th.tensor(LOSSES, dtype=dtype)
    before = fingerprint(losses)
    q = robust_weights(losses, ambiguity, **size)
    assert isinstance(q, th.Tensor)
    assert q.dtype == dtype and q.device == losses.device and q.shape == losses.shape
    assert not q.requires_grad
    expected = robust_weights(losses.double().numpy(), ambiguity, **size)
    tolerance = {th.float64: 1e-15, th.float32: 1e-6, th.float16: 2e-3, th.bfloat16: 1e-2}[dtype]
    np.testing.assert_allclose(q.double().numpy(), expected, rtol=tolerance, atol=tolerance)
    assert fingerprint(losses) == before


def test_torch_tensors_that_require_grad_are_detached(th):
    params = th.tensor(LOSSES, requires_grad=True)
    losses = params * 2.0
    q = robust_weights(losses, "chi2", radius=0.5)
    assert not q.requires_grad and q.grad_fn is None
    (q * losses).sum().backward()
    # The gradient is the weights times 2, with no term through the weights themselves.
    np.testing.assert_allclose(params.grad.numpy(), 2.0 * q.numpy(), rtol=1e-15)


def test_torch_2d_non_contiguous_integer_and_extras(th):
    losses = th.tensor(np.stack([LOSSES, LOSSES[::-1]]), dtype=th.float32).t().contiguous().t()
    assert not losses.is_contiguous()
    reference = th.tensor([1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    groups = th.tensor([0, 0, 1, 1, 2, 2])
    q = robust_weights(losses, "kl", radius=0.2, reference=reference, groups=groups)
    assert q.dtype == th.float32 and q.shape == (2, 6)
    expected = robust_weights(losses.numpy(), "kl", radius=0.2, reference=reference.numpy(), groups=groups.numpy())
    np.testing.assert_array_equal(q.numpy(), expected)
    ints = robust_weights(th.tensor([3, 1, 2]), "tv", radius=0.1)
    assert ints.dtype == th.float64
    solution = worst_case(th.tensor(LOSSES), "chi2", radius=0.1)
    assert isinstance(solution.weights, th.Tensor)
    assert solution.value == pytest.approx(float(solution.weights.numpy() @ LOSSES), rel=1e-14)


L = np.array([1.0, 2.0, 3.0])
BAD = {
    "nan loss": (lambda: robust_weights(np.array([1.0, np.nan]), "kl", radius=0.1), "losses must be finite"),
    "inf loss": (lambda: robust_weights(np.array([1.0, -np.inf]), "chi2", radius=0.1), "losses must be finite"),
    "nan float32 loss": (lambda: robust_weights(np.array([1, np.nan], np.float32), "tv", radius=0.1), "finite"),
    "nan in a row": (lambda: robust_weights(np.array([[1.0, 2.0], [np.nan, 1.0]]), "kl", radius=0.1), "row 1"),
    "nan reference": (lambda: robust_weights(L, "kl", radius=0.1, reference=[1, np.nan, 1]), "reference"),
    "inf reference": (lambda: robust_weights(L, "kl", radius=0.1, reference=[1, np.inf, 1]), "reference"),
    "negative radius": (lambda: robust_weights(L, "kl", radius=-0.1), "radius"),
    "nan radius": (lambda: robust_weights(L, "chi2", radius=float("nan")), "radius"),
    "zero penalty": (lambda: robust_weights(L, "kl", penalty=0.0), "penalty"),
    "negative penalty": (lambda: robust_weights(L, "chi2", penalty=-1.0), "penalty"),
    "nan penalty": (lambda: robust_weights(L, "chi2", penalty=float("nan")), "penalty"),
    "negative reference": (lambda: robust_weights(L, "kl", radius=0.1, reference=[1, -1, 1]), "non-negative"),
    "zero reference": (lambda: robust_weights(L, "kl", radius=0.1, reference=[0, 0, 0]), "all zero"),
    "short reference": (lambda: robust_weights(L, "kl", radius=0.1, reference=[1, 1]), "reference"),
    "complex reference": (lambda: robust_weights(L, "kl", radius=0.1, reference=np.ones(3, complex)), "reference"),
    "negative group": (lambda: robust_weights(L, "kl", radius=0.1, groups=[0, -1, 1]), "non-negative"),
    "fractional group": (lambda: robust_weights(L, "kl", radius=0.1, groups=[0, 0.5, 1]), "integer"),
    "string groups": (lambda: robust_weights(L, "kl", radius=0.1, groups=["a", "b", "c"]), "integer"),
    "boolean groups": (lambda: robust_weights(L, "kl", radius=0.1, groups=[True, False, True]), "integer"),
    "short groups": (lambda: robust_weights(L, "kl", radius=0.1, groups=[0, 1]), "groups"),
    "empty": (lambda: robust_weights(np.array([]), "kl", radius=0.1), "empty"),
    "empty list": (lambda: robust_weights([], "chi2", radius=0.1), "empty"),
    "no rows": (lambda: robust_weights(np.zeros((0, 3)), "kl", radius=0.1), "empty"),
    "no columns": (lambda: robust_weights(np.zeros((3, 0)), "kl", radius=0.1), "empty"),
    "0-d": (lambda: robust_weights(np.float64(1.0), "kl", radius=0.1), "1-D"),
    "0-d array": (lambda: robust_weights(np.array(1.0), "kl", radius=0.1), "1-D"),
    "3-d": (lambda: robust_weights(np.zeros((2, 2, 2)), "kl", radius=0.1), "1-D"),
    "unknown set": (lambda: robust_weights(L, "entropy", radius=0.1), "unknown ambiguity set"),
    "complex": (lambda: robust_weights(L.astype(complex), "kl", radius=0.1), "real numbers"),
    "object": (lambda: robust_weights(np.array([1.0, 2.0], dtype=object), "kl", radius=0.1), "real numbers"),
    "bool": (lambda: robust_weights(np.array([True, False]), "kl", radius=0.1), "real numbers"),
    "strings": (lambda: robust_weights(["a", "b"], "kl", radius=0.1), "real numbers"),
    "ragged": (lambda: robust_weights([[1.0, 2.0], [1.0]], "kl", radius=0.1), "real numbers"),
    "radius and penalty": (lambda: robust_weights(L, "kl", radius=0.1, penalty=1.0), "not both"),
    "neither": (lambda: robust_weights(L, "chi2"), "radius"),
    "tv neither": (lambda: robust_weights(L, "tv"), "radius"),
    "cvar without alpha": (lambda: robust_weights(L, "cvar"), "alpha"),
    "alpha zero": (lambda: robust_weights(L, "cvar", alpha=0.0), "alpha"),
    "alpha above one": (lambda: robust_weights(L, "cvar", alpha=1.5), "alpha"),
    "alpha nan": (lambda: robust_weights(L, "cvar", alpha=float("nan")), "alpha"),
    "alpha negative": (lambda: robust_weights(L, "cvar", alpha=-0.5), "alpha"),
    "alpha for kl": (lambda: robust_weights(L, "kl", alpha=0.5), "alpha"),
    "radius for cvar": (lambda: robust_weights(L, "cvar", radius=0.5), "alpha"),
    "penalty for tv": (lambda: robust_weights(L, "tv", penalty=0.5), "penalised form"),
    "reference of the wrong 2-D shape": (
        lambda: robust_weights(np.zeros((2, 3)), "kl", radius=0.1, reference=np.ones((3, 3))),
        "reference",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_a_value_error_naming_the_problem(name):
    call, words = BAD[name]
    with pytest.raises(ValueError, match=words.replace("(", r"\(")) as raised:
        call()
    assert len(str(raised.value)) > 10


def test_worst_case_raises_the_same():
    with pytest.raises(ValueError, match="losses must be finite"):
        worst_case(np.array([1.0, np.nan]), "kl", radius=0.1)
    with pytest.raises(ValueError, match="radius"):
        worst_case(L, "chi2", radius=-1.0)
    with pytest.raises(ValueError, match="unknown ambiguity set"):
        worst_case(L, "entropy", radius=0.1)
    with pytest.raises(ValueError, match="all zero"):
        worst_case(L, "tv", radius=0.1, reference=[0, 0, 0])


@pytest.mark.parametrize("name", [3, None, b"kl"])
def test_an_ambiguity_that_is_not_a_string_is_a_type_error(name):
    with pytest.raises(TypeError, match="ambiguity must be a str"):
        robust_weights(L, name, radius=0.1)


def test_a_set_named_by_a_string_built_at_run_time_is_the_same_set():
    # Literal names are interned and recognised by identity; others are decoded.
    for name in ["kl", "chi2", "tv"]:
        built = "".join(list(name))
        np.testing.assert_array_equal(robust_weights(L, built, radius=0.1), robust_weights(L, name, radius=0.1))


def test_robust_weights_has_the_documented_signature():
    # robust_weights is native (rust/python.rs); worst_case is Python: the same parameters.
    native = inspect.signature(robust_weights).parameters
    python = inspect.signature(worst_case).parameters
    assert [(p.name, p.kind, p.default) for p in native.values()] == [
        (p.name, p.kind, p.default) for p in python.values()
    ]
    assert "Worst-case weights" in (robust_weights.__doc__ or "")
    np.testing.assert_array_equal(robust_weights(L, radius=0.1), robust_weights(L, "chi2", radius=0.1))
    np.testing.assert_array_equal(
        robust_weights(losses=L, ambiguity="tv", radius=0.1), robust_weights(L, "tv", radius=0.1)
    )
    with pytest.raises(TypeError):
        robust_weights(L, "kl", 0.1)  # the size of the set is keyword-only
    with pytest.raises(TypeError, match="radiu"):
        robust_weights(L, "kl", radiu=0.1)
