"""The escalation's signals and remedies as pure functions of the Gram matrix, against values
worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from adperception.balancing import functional
from adperception.balancing.escalation import conflict_strength, norm_imbalance


def gram(*rows: list[float]) -> torch.Tensor:
    G = torch.tensor(rows, dtype=torch.float64)
    return G @ G.T


def test_conflict_strength_is_the_mean_negative_cosine_over_pairs() -> None:
    # pairs: (1,0)·(0,1) cos 0; (1,0)·(−1,1)/√2 cos −0.707; (0,1)·(−1,1)/√2 cos +0.707
    assert conflict_strength(gram([1, 0], [0, 1], [-1, 1])) == pytest.approx(math.sqrt(0.5) / 3)
    # two tasks barely past orthogonal: a weak conflict, not a conflict rate of 1
    assert conflict_strength(gram([1, 0], [-0.02, 1])) == pytest.approx(0.02 / math.hypot(0.02, 1))
    assert conflict_strength(gram([1, 0], [2, 1])) == 0.0


def test_norm_imbalance_is_log10_of_the_norm_ratio() -> None:
    assert norm_imbalance(gram([3, 4], [0, 0.5], [1, 0])) == pytest.approx(1.0)  # 5 vs 0.5
    assert norm_imbalance(gram([3, 4], [0, 0])) == 0.0  # a zero gradient has no ratio


def test_equal_norm_rescales_every_gradient_to_the_mean_norm() -> None:
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 0.0]], dtype=torch.float64)
    a = functional.equal_norm_weights(G @ G.T)
    torch.testing.assert_close(a, torch.tensor([7 / 3, 7 / 6, 7 / 12], dtype=torch.float64))
    torch.testing.assert_close(
        functional.equal_norm(G), torch.tensor([7 / 3 + 7 / 3, 7 / 3]).double()
    )


def test_pcgrad_on_equalised_gradients_projects_the_rescaled_pair() -> None:
    """Two conflicting gradients g1 = (1, 0), g2 = (−3, 3) (norms 1 and 4.24): rescaled to the
    mean norm m, u1 = m·(1, 0) and u2 = m·(−1, 1)/√2; PCGrad of two: u1 − (u1·u2/|u2|²) u2 and
    u2 − (u1·u2/|u1|²) u1, summed."""
    G = torch.tensor([[1.0, 0.0], [-3.0, 3.0]], dtype=torch.float64)
    m = (1 + math.sqrt(18)) / 2
    u1 = m * torch.tensor([1.0, 0.0], dtype=torch.float64)
    u2 = m * torch.tensor([-1.0, 1.0], dtype=torch.float64) / math.sqrt(2)
    dot = float(u1 @ u2)
    expected = (u1 - dot / float(u2 @ u2) * u2) + (u2 - dot / float(u1 @ u1) * u1)
    torch.testing.assert_close(functional.pcgrad_equal_norm(G), expected)
