"""The gradient diagnostics from Gram matrices of hand-placed gradients, and collapse detection
on constructed loss histories."""

from __future__ import annotations

import math

import pytest
import torch

from adperception.diagnostics import (
    collapsed_tasks,
    conflict_rate,
    cosine_matrix,
    relative_improvement,
    sign_flip_rate,
    task_norms,
)

SQRT3 = math.sqrt(3)


def gram(*rows: tuple[float, ...]) -> torch.Tensor:
    grads = torch.tensor(rows, dtype=torch.float64)
    return grads @ grads.T


def test_norms_and_cosines_of_orthogonal_opposite_and_60_degree_gradients() -> None:
    # a = (2, 0); b = (0, 3) is orthogonal to a; c = (1, √3) is 60° from a and 30° from b;
    # d = (-4, 0) is opposite to a.
    g = gram((2, 0), (0, 3), (1, SQRT3), (-4, 0))
    assert task_norms(g).tolist() == pytest.approx([2, 3, 2, 4])
    expected = [
        [1, 0, 0.5, -1],
        [0, 1, SQRT3 / 2, 0],
        [0.5, SQRT3 / 2, 1, -0.5],
        [-1, 0, -0.5, 1],
    ]
    cos = cosine_matrix(g)
    assert cos.dtype == torch.float64
    assert cos.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]


@pytest.mark.parametrize(
    ("rows", "rate"),
    [
        (((1, 0), (0, 1)), 0.0),  # orthogonal: no conflict
        (((1, 0), (-1, 0)), 1.0),  # opposite
        (((1, 0), (0.5, SQRT3 / 2)), 0.0),  # 60°
        (((1, 0), (-0.5, SQRT3 / 2)), 1.0),  # 120°
        # pairs ab 0°, ac 180°, bc 180°: 2 of 3 conflict
        (((1, 0), (2, 0), (-1, 0)), 2 / 3),
        # 0, 90°, 120° from the x axis: ab 90°, ac 120°, bc 30°: 1 of 3
        (((1, 0), (0, 1), (-0.5, SQRT3 / 2)), 1 / 3),
    ],
)
def test_conflict_rate_counts_pairs_with_negative_cosine(rows, rate: float) -> None:
    assert conflict_rate(gram(*rows)) == pytest.approx(rate)


def test_a_zero_gradient_neither_agrees_nor_conflicts() -> None:
    g = gram((1, 0), (0, 0), (-1, 0))
    cos = cosine_matrix(g)
    assert cos[1].tolist() == [0, 0, 0] and cos[:, 1].tolist() == [0, 0, 0]
    assert not torch.isnan(cos).any()
    assert conflict_rate(g) == pytest.approx(1 / 3)  # only the pair (0, 2)


def test_sign_flip_rate_ignores_parameters_that_did_not_move() -> None:
    prev = torch.tensor([1, -1, 1, 0, 1, -1, 0], dtype=torch.int8)
    sign = torch.tensor([1, 1, -1, 1, 0, -1, 0], dtype=torch.int8)
    # moved at both: indices 0, 1, 2, 5; flipped: 1 and 2
    assert sign_flip_rate(prev, sign) == 0.5
    assert sign_flip_rate(prev, prev) == 0.0
    assert sign_flip_rate(prev, -prev) == 1.0
    assert sign_flip_rate(torch.zeros(3, dtype=torch.int8), sign[:3]) == 0.0


def test_sign_flip_rate_needs_vectors_of_one_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        sign_flip_rate(torch.ones(3, dtype=torch.int8), torch.ones(4, dtype=torch.int8))


def test_relative_improvement_is_the_fitted_drop_over_the_mean() -> None:
    assert relative_improvement([4, 3, 2, 1]) == pytest.approx(3 / 2.5)
    assert relative_improvement([1, 2, 3]) == pytest.approx(-1.0)
    assert relative_improvement([5, 5, 5, 5]) == 0.0
    # one low last point in a flat history: a fitted drop of 8.2 %, the end points say 10 %
    assert relative_improvement([1.0, 1.0, 1.0, 1.0, 0.9]) == pytest.approx(0.08 / 0.98)
    with pytest.raises(ValueError):
        relative_improvement([1.0])


FALLING = [1.0, 0.9, 0.8, 0.7]
FLAT = [0.5, 0.5, 0.5, 0.5]


def test_a_flat_task_is_flagged_while_another_improves() -> None:
    histories = {"det": FALLING, "seg": FLAT, "depth": [2.0, 2.2, 2.4, 2.6]}
    assert collapsed_tasks(histories, window=4, tolerance=0.01) == ["seg", "depth"]


def test_nothing_is_flagged_when_every_task_is_flat() -> None:
    histories = {"det": FLAT, "seg": [1.0, 1.001, 0.999, 1.0]}
    assert collapsed_tasks(histories, window=4, tolerance=0.01) == []


def test_only_the_last_window_counts_and_short_histories_are_not_judged() -> None:
    # det fell early, then stopped; seg still falls; depth has too few measurements
    histories = {"det": [4.0, 2.0, *FLAT], "seg": [3.0, 2.0, *FALLING], "depth": [1.0, 1.0]}
    assert collapsed_tasks(histories, window=4, tolerance=0.01) == ["det"]
    assert collapsed_tasks(histories, window=6, tolerance=0.01) == []


def test_the_tolerance_separates_slow_from_flat() -> None:
    histories = {"det": FALLING, "seg": [1.0, 0.99, 0.98, 0.97]}  # seg: 3 % better
    assert collapsed_tasks(histories, window=4, tolerance=0.01) == []
    assert collapsed_tasks(histories, window=4, tolerance=0.05) == ["seg"]
