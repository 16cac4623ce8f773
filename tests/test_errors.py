"""Every kind of bad input raises its own class, each a subclass of DroRebelError and so of
ValueError (``except ValueError`` keeps working), exported from dro_rebel."""

from __future__ import annotations

import numpy as np
import pytest

import dro_rebel
from dro_rebel import (
    AmbiguityError,
    BudgetError,
    DroRebelError,
    GeometryError,
    GroupsError,
    InternalError,
    LossesError,
    ReferenceDistributionError,
    ShapeError,
    robust_weights,
    worst_case,
)

L = np.array([1.0, 2.0, 3.0])

CASES = [
    (LossesError, lambda: robust_weights(np.array([1.0, np.nan]), "kl", radius=0.1)),
    (LossesError, lambda: robust_weights([], "chi2", radius=0.1)),
    (LossesError, lambda: robust_weights(["a", "b"], "chi2", radius=0.1)),
    (ShapeError, lambda: robust_weights(np.zeros((2, 2, 2)), "kl", radius=0.1)),
    (BudgetError, lambda: robust_weights(L, "kl", radius=-0.1)),
    (BudgetError, lambda: robust_weights(L, "cvar")),
    (BudgetError, lambda: robust_weights(L, "chi2", radius="calibrated", confidence=1.5)),
    (BudgetError, lambda: robust_weights(L, "chi2", radius=0.1, tol=0.0)),
    (ReferenceDistributionError, lambda: robust_weights(L, "kl", radius=0.1, reference=[0, 0, 0])),
    (ReferenceDistributionError, lambda: robust_weights(L, "kl", radius=0.1, reference=[1, 1])),
    (GroupsError, lambda: robust_weights(L, "kl", radius=0.1, groups=[0, -1, 1])),
    (GroupsError, lambda: robust_weights(L, "kl", radius=0.1, groups=[0.5, 1, 1])),
    (AmbiguityError, lambda: robust_weights(L, "entropy", radius=0.1)),
    (GeometryError, lambda: robust_weights(L, "wasserstein", radius=0.1)),
    (GeometryError, lambda: robust_weights(L, "kl", radius=0.1, cost=np.zeros((3, 3)))),
    (GeometryError, lambda: worst_case(L, "wasserstein", radius=0.1, p=0.5, cost=np.ones((3, 3)))),
]


@pytest.mark.parametrize("kind,call", CASES)
def test_each_kind_of_bad_input_has_its_class(kind, call):
    with pytest.raises(kind) as raised:
        call()
    assert isinstance(raised.value, DroRebelError) and isinstance(raised.value, ValueError)
    assert len(str(raised.value)) > 10


def test_rows_keep_the_class_and_name_the_row():
    with pytest.raises(LossesError, match="row 1"):
        robust_weights(np.array([[1.0, 2.0], [np.nan, 1.0]]), "kl", radius=0.1)


def test_the_classes_are_exported_and_named_for_dro_rebel():
    for kind in (DroRebelError, LossesError, ShapeError, BudgetError, ReferenceDistributionError, GroupsError):
        assert kind.__module__ == "dro_rebel" and getattr(dro_rebel, kind.__name__) is kind
        assert issubclass(kind, ValueError)
    assert issubclass(AmbiguityError, DroRebelError) and issubclass(GeometryError, DroRebelError)
    # A bug is not bad input: it is no ValueError, so no caller mistakes it for one.
    assert issubclass(InternalError, RuntimeError) and not issubclass(InternalError, ValueError)


def test_calibrated_radius_raises_the_budget_class():
    with pytest.raises(BudgetError, match="n must be a positive integer"):
        dro_rebel.calibrated_radius(0)
    with pytest.raises(BudgetError, match="confidence must be a number"):
        dro_rebel.calibrated_radius(10, "high")


def test_a_shape_message_names_each_shape_that_fits_once():
    # 1-D losses take one shape; 2-D losses one row's or their own.
    with pytest.raises(GroupsError, match=r"^groups must have shape \(3,\) to match the losses, got \(2,\)$"):
        robust_weights(L, "kl", radius=0.1, groups=[0, 1])
    with pytest.raises(ReferenceDistributionError, match=r"^reference must have shape \(3,\) to match"):
        robust_weights(L, "kl", radius=0.1, reference=[1, 1])
    with pytest.raises(
        GroupsError, match=r"^groups must have shape \(3,\) or \(2, 3\) to match the losses, got \(2,\)$"
    ):
        robust_weights(np.stack([L, L]), "kl", radius=0.1, groups=[0, 1])
