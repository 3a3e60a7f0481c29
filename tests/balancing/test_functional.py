"""Gradient aggregators checked against facts that follow from each method's definition."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import Tensor

from adperception.balancing import functional as F

SHAPES = [(2, 10), (3, 40), (4, 200), (5, 60)]


def random_gradients(T: int, P: int, seed: int) -> Tensor:
    """Gaussian task gradients with a shared component, so some pairs conflict and some do not."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(P, generator=g, dtype=torch.float64)
    return 0.5 * shared + torch.randn(T, P, generator=g, dtype=torch.float64)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def extra_args(name: str) -> dict:
    takes_generator = "generator" in inspect.signature(F.AGGREGATORS[name]).parameters
    return {"generator": seeded()} if takes_generator else {}


# ------------------------------------------------------------------ every aggregator


def test_gram_matrix_is_float64_inner_products() -> None:
    G = random_gradients(3, 20, seed=0).float()
    K = F.gram_matrix(G)
    assert K.dtype == torch.float64
    torch.testing.assert_close(K, G.double() @ G.double().T)


@pytest.mark.parametrize("name", sorted(F.AGGREGATORS))
@pytest.mark.parametrize("T, P", SHAPES)
def test_update_is_the_weighting_of_the_gradients(name: str, T: int, P: int) -> None:
    G = random_gradients(T, P, seed=T)
    update = getattr(F, name)(G, **extra_args(name))
    weights = F.AGGREGATORS[name](G @ G.T, **extra_args(name))
    assert update.shape == (P,) and weights.shape == (T,)
    torch.testing.assert_close(update, weights @ G, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(F.AGGREGATORS))
def test_invariant_to_parameter_order(name: str) -> None:
    G = random_gradients(4, 50, seed=1)
    perm = torch.randperm(50, generator=seeded(1))
    update = getattr(F, name)(G, **extra_args(name))
    permuted = getattr(F, name)(G[:, perm], **extra_args(name))
    torch.testing.assert_close(permuted, update[perm], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", sorted(F.AGGREGATORS))
def test_float32_input(name: str) -> None:
    G = random_gradients(3, 30, seed=2)
    update = getattr(F, name)(G.float(), **extra_args(name))
    weights = F.AGGREGATORS[name](F.gram_matrix(G).float(), **extra_args(name))
    assert update.dtype == torch.float32 and weights.dtype == torch.float32
    assert torch.isfinite(update).all()
    reference = getattr(F, name)(G, **extra_args(name))
    torch.testing.assert_close(update.double(), reference, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ PCGrad


def pcgrad_reference(G: Tensor, generator: torch.Generator) -> Tensor:
    """Alg. 1 of Yu et al. on the vectors themselves, with the documented draw sequence."""
    T = G.shape[0]
    total = torch.zeros_like(G[0])
    for i in range(T):
        g = G[i].clone()
        for j in torch.randperm(T, generator=generator).tolist():
            norm2 = G[j] @ G[j]
            if j != i and norm2 > 0 and g @ G[j] < 0:
                g = g - (g @ G[j]) / norm2 * G[j]
        total += g
    return total


def test_pcgrad_two_conflicting_gradients() -> None:
    G = torch.tensor([[1.0, 0.2, 0.0], [-0.8, 1.0, 0.3]], dtype=torch.float64)
    assert G[0] @ G[1] < 0
    update = F.pcgrad(G, seeded())
    assert (G @ update >= -1e-12).all()


def test_pcgrad_without_conflict_is_the_sum() -> None:
    G = random_gradients(4, 30, seed=3).abs()  # positive orthant: every pair agrees
    torch.testing.assert_close(F.pcgrad_weights(G @ G.T, seeded()), torch.ones(4).double())
    torch.testing.assert_close(F.pcgrad(G, seeded()), G.sum(0))


@pytest.mark.parametrize("T, P", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcgrad_matches_loop_on_vectors(T: int, P: int, seed: int) -> None:
    G = random_gradients(T, P, seed=seed) - 0.5  # more conflict
    expected = pcgrad_reference(G, seeded(seed))
    torch.testing.assert_close(F.pcgrad(G, seeded(seed)), expected, rtol=1e-10, atol=1e-10)


def test_pcgrad_order_comes_from_the_generator() -> None:
    G = torch.randn(4, 10, generator=seeded(4), dtype=torch.float64)
    updates = [F.pcgrad(G, seeded(seed)) for seed in range(20)]
    torch.testing.assert_close(F.pcgrad(G, seeded(0)), updates[0], rtol=0, atol=0)
    assert any(not torch.allclose(updates[0], u) for u in updates[1:])


def test_pcgrad_draws_one_permutation_per_task() -> None:
    generator = seeded(5)
    F.pcgrad_weights(torch.eye(3, dtype=torch.float64), generator)
    expected = seeded(5)
    for _ in range(3):
        torch.randperm(3, generator=expected)
    torch.testing.assert_close(generator.get_state(), expected.get_state())


def test_pcgrad_zero_gradient_is_finite() -> None:
    G = random_gradients(3, 20, seed=6) - 0.5
    G[1] = 0
    update = F.pcgrad(G, seeded())
    assert torch.isfinite(update).all()
    torch.testing.assert_close(update, pcgrad_reference(G, seeded()))


# ------------------------------------------------------------------ CAGrad


def cagrad_objective(w: Tensor, K: Tensor, c: float) -> Tensor:
    """g_wᵀ g0 + c ‖g0‖ ‖g_w‖ from the Gram matrix, g0 the mean gradient."""
    mean = torch.full((K.shape[0],), 1.0 / K.shape[0], dtype=K.dtype)
    return w @ K @ mean + c * (mean @ K @ mean).sqrt() * (w @ K @ w).sqrt()


def test_cagrad_c0_is_the_mean() -> None:
    G = random_gradients(4, 30, seed=7)
    torch.testing.assert_close(F.cagrad_weights(G @ G.T, c=0.0), torch.full((4,), 0.25).double())
    torch.testing.assert_close(F.cagrad(G, c=0.0), G.mean(0))


@pytest.mark.parametrize("T, P", SHAPES)
@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
def test_cagrad_is_the_conflict_averse_optimum(T: int, P: int, c: float) -> None:
    G = random_gradients(T, P, seed=8 + T) - 0.3
    K = G @ G.T
    g0 = G.mean(0)
    weights = F.cagrad_weights(K, c=c)
    # d = g0 + s g_w with s ≥ 0 and w on the simplex
    excess = weights - 1.0 / T
    assert (excess >= -1e-12).all()
    w = excess / excess.sum()
    d = weights @ G
    # d lies on the sphere ‖d − g0‖ = c ‖g0‖
    torch.testing.assert_close((d - g0).norm(), c * g0.norm())
    # w beats random points of the simplex
    value = cagrad_objective(w, K, c)
    others = torch.distributions.Dirichlet(torch.ones(T).double()).sample((500,))
    assert all(value <= cagrad_objective(o, K, c) + 1e-12 for o in others)
    # Strong duality: min_i g_i·d ≤ max over the ball = min over the simplex ≤ objective at w, so
    # equality certifies that w and d are optimal; g0 is in the ball, hence conflict aversion.
    torch.testing.assert_close((G @ d).min(), value, rtol=1e-7, atol=1e-9)
    assert (G @ d).min() >= (G @ g0).min() - 1e-9


# ------------------------------------------------------------------ IMTL-G


@pytest.mark.parametrize("T, P", SHAPES)
def test_imtl_g_equal_projections(T: int, P: int) -> None:
    G = random_gradients(T, P, seed=9) * torch.logspace(-1, 1, T).double()[:, None]
    alpha = F.imtl_g_weights(G @ G.T)
    torch.testing.assert_close(alpha.sum(), torch.tensor(1.0).double())
    projections = G @ (alpha @ G) / G.norm(dim=1)
    torch.testing.assert_close(projections, projections[0].expand(T), rtol=1e-9, atol=1e-12)


def test_imtl_g_duplicate_and_zero_gradients() -> None:
    G = random_gradients(3, 20, seed=10)
    G = torch.cat([G, G[:1], torch.zeros(1, 20, dtype=torch.float64)])
    alpha = F.imtl_g_weights(G @ G.T)
    assert torch.isfinite(alpha).all() and alpha[4] == 0
    torch.testing.assert_close(alpha.sum(), torch.tensor(1.0).double())
    projections = G[:4] @ (alpha @ G) / G[:4].norm(dim=1)
    torch.testing.assert_close(projections, projections[0].expand(4), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ MGDA


def assert_mgda_kkt(w: Tensor, K: Tensor) -> None:
    scale = K.diagonal().max()
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(), torch.tensor(1.0).double())
    Kw, value = K @ w, w @ K @ w
    assert (Kw >= value - 1e-8 * scale).all()
    assert ((Kw - value)[w > 1e-12].abs() <= 1e-8 * scale).all()


def mgda_reference(K: Tensor) -> Tensor:
    T = K.shape[0]
    Kn = K.numpy()
    result = minimize(
        lambda w: (w @ Kn @ w, 2 * Kn @ w),
        np.full(T, 1.0 / T),
        jac=True,
        method="SLSQP",
        bounds=[(0, 1)] * T,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
        options={"ftol": 1e-15, "maxiter": 500},
    )
    return torch.from_numpy(result.x)


@pytest.mark.parametrize("T, P", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mgda_kkt_and_reference(T: int, P: int, seed: int) -> None:
    G = random_gradients(T, P, seed=seed)
    K = G @ G.T
    w = F.mgda_weights(K)
    assert_mgda_kkt(w, K)
    reference = mgda_reference(K)
    assert w @ K @ w <= reference @ K @ reference + 1e-12
    torch.testing.assert_close(w, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "G",
    [
        torch.randn(6, 4, generator=seeded(11), dtype=torch.float64),  # T > P: K singular
        torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, -1.0]], dtype=torch.float64),  # duplicates
        torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64),  # 0 in hull
        torch.tensor([[1.0, 0.0], [1.0, 5.0], [2.0, 3.0]], dtype=torch.float64),  # a vertex
    ],
)
def test_mgda_kkt_degenerate(G: Tensor) -> None:
    assert_mgda_kkt(F.mgda_weights(G @ G.T), G @ G.T)


def test_mgda_orthogonal_equal_norms_gives_equal_weights() -> None:
    G = 3.0 * torch.eye(4, 7, dtype=torch.float64)
    torch.testing.assert_close(F.mgda_weights(G @ G.T), torch.full((4,), 0.25).double())


def test_mgda_vertex() -> None:
    G = torch.tensor([[1.0, 0.0], [1.0, 5.0]], dtype=torch.float64)  # g_1 · (g_2 − g_1) ≥ 0
    torch.testing.assert_close(F.mgda(G), G[0])


# ------------------------------------------------------------------ Nash-MTL


@pytest.mark.parametrize("T, P", SHAPES)
def test_nash_mtl_bargaining_solution(T: int, P: int) -> None:
    G = random_gradients(T, P, seed=12) * torch.logspace(-2, 2, T).double()[:, None]
    K = G @ G.T
    alpha = F.nash_mtl_weights(K)
    assert (alpha > 0).all()
    torch.testing.assert_close(alpha * (K @ alpha), torch.ones(T).double(), rtol=1e-6, atol=0)


def test_nash_mtl_orthogonal_gradients() -> None:
    norms = torch.tensor([0.1, 1.0, 3.0, 20.0], dtype=torch.float64)
    G = norms[:, None] * torch.eye(4, 9, dtype=torch.float64)
    torch.testing.assert_close(F.nash_mtl_weights(G @ G.T), 1 / norms, rtol=1e-6, atol=0)


def test_nash_mtl_update_does_not_scale_with_gradients() -> None:
    G = random_gradients(3, 40, seed=13)
    torch.testing.assert_close(F.nash_mtl(1e3 * G), F.nash_mtl(G), rtol=1e-9, atol=1e-12)


def test_nash_mtl_zero_and_opposite_gradients() -> None:
    G = random_gradients(3, 20, seed=14)
    G[1] = 0
    alpha = F.nash_mtl_weights(G @ G.T)
    assert alpha[1] == 0
    keep = [0, 2]
    K = G[keep] @ G[keep].T
    torch.testing.assert_close(alpha[keep] * (K @ alpha[keep]), torch.ones(2).double())
    opposite = torch.stack([G[0], -G[0], G[2]])  # no exact solution: the ridge keeps it finite
    assert torch.isfinite(F.nash_mtl(opposite)).all()


# ------------------------------------------------------------------ FairGrad


@pytest.mark.parametrize("T, P", SHAPES)
@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
def test_fairgrad_solves_the_alpha_fair_condition(T: int, P: int, alpha: float) -> None:
    """Ban & Ji's condition Gᵀ G w = w^(−1/α), w > 0, with task norms 100 apart."""
    G = random_gradients(T, P, seed=15) * torch.logspace(-1, 1, T).double()[:, None]
    K = G @ G.T
    w = F.fairgrad_weights(K, alpha=alpha)
    assert (w > 0).all()
    torch.testing.assert_close(K @ w, w.pow(-1 / alpha), rtol=1e-6, atol=0)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
def test_fairgrad_maximises_the_alpha_fair_utility_on_its_ball(alpha: float) -> None:
    """d maximises Σ_i (g_i · d)^(1−α) / (1−α) over ‖d‖ = ‖d*‖: no nearby point of that sphere
    (with every g_i · d > 0) does better."""
    G = random_gradients(3, 12, seed=16).abs()  # a cone where all g_i · d > 0 nearby

    def utility(d: Tensor) -> Tensor:
        return ((G @ d).pow(1 - alpha) / (1 - alpha)).sum()

    d = F.fairgrad(G, alpha=alpha)
    best = utility(d)
    directions = torch.randn(500, 12, generator=seeded(16), dtype=torch.float64)
    for u in directions:
        other = d + 1e-2 * d.norm() * u / u.norm()
        other = other * d.norm() / other.norm()
        if (G @ other > 0).all():
            assert utility(other) <= best + 1e-12 * best.abs()


def test_fairgrad_at_alpha_one_is_nash_mtl() -> None:
    G = random_gradients(4, 30, seed=17)
    torch.testing.assert_close(
        F.fairgrad_weights(G @ G.T, alpha=1.0), F.nash_mtl_weights(G @ G.T), rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
def test_fairgrad_orthogonal_gradients_and_scale(alpha: float) -> None:
    """Orthogonal g_i: ‖g_i‖² w_i = w_i^(−1/α), so w_i = ‖g_i‖^(−2α/(α+1)); and G → sG scales
    the update by s^((1−α)/(1+α))."""
    norms = torch.tensor([0.1, 1.0, 3.0, 20.0], dtype=torch.float64)
    G = norms[:, None] * torch.eye(4, 9, dtype=torch.float64)
    expected = norms.pow(-2 * alpha / (alpha + 1))
    torch.testing.assert_close(
        F.fairgrad_weights(G @ G.T, alpha=alpha), expected, rtol=1e-6, atol=0
    )
    G = random_gradients(3, 20, seed=18)
    scale = 7.0 ** ((1 - alpha) / (1 + alpha))
    torch.testing.assert_close(F.fairgrad(7 * G, alpha=alpha), scale * F.fairgrad(G, alpha=alpha))


def test_fairgrad_zero_and_opposite_gradients() -> None:
    G = random_gradients(3, 20, seed=19)
    G[1] = 0
    w = F.fairgrad_weights(G @ G.T)
    assert w[1] == 0
    keep = [0, 2]
    K = G[keep] @ G[keep].T
    torch.testing.assert_close(K @ w[keep], w[keep].pow(-0.5), rtol=1e-6, atol=0)
    opposite = torch.stack([G[0], -G[0], G[2]])  # no exact solution: the ridge keeps it finite
    assert torch.isfinite(F.fairgrad(opposite)).all()
    with pytest.raises(ValueError, match="alpha must be positive"):
        F.fairgrad_weights(G @ G.T, alpha=0.0)


# ------------------------------------------------------------------ Aligned-MTL


def aligned_reference(G: Tensor) -> Tensor:
    """Senushkin et al.'s aligned matrix from the SVD of G itself: G = U S Wᵀ → σ_min U Wᵀ over
    the singular values that the float32 rank cut keeps; the update is the sum of its rows."""
    U, S, Wh = torch.linalg.svd(G, full_matrices=False)
    keep = S.square() > G.shape[0] * torch.finfo(torch.float32).eps * S.max().square()
    return S[keep].min() * (U[:, keep] @ Wh[keep]).sum(0)


@pytest.mark.parametrize("T, P", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_aligned_mtl_is_the_svd_alignment(T: int, P: int, seed: int) -> None:
    G = random_gradients(T, P, seed=seed) * torch.logspace(-1, 1, T).double()[:, None]
    torch.testing.assert_close(F.aligned_mtl(G), aligned_reference(G), rtol=1e-9, atol=1e-12)


def test_aligned_mtl_orthogonal_gradients_are_scaled_to_the_smallest_norm() -> None:
    norms = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    G = norms[:, None] * torch.eye(3, 5, dtype=torch.float64)
    torch.testing.assert_close(F.aligned_mtl_weights(G @ G.T), 0.5 / norms)


@pytest.mark.parametrize(
    "G",
    [
        torch.randn(6, 4, generator=seeded(20), dtype=torch.float64),  # T > P: K singular
        torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [3.0, -1.0, 1.0]], dtype=torch.float64),
        torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, -1.0, 1.0]], dtype=torch.float64),
    ],
    ids=["rank_deficient", "duplicate", "zero"],
)
def test_aligned_mtl_singular_gradients_align_within_their_span(G: Tensor) -> None:
    torch.testing.assert_close(F.aligned_mtl(G), aligned_reference(G), rtol=1e-9, atol=1e-12)
    if not G[1].any():
        assert F.aligned_mtl_weights(G @ G.T)[1] == 0
    assert not F.aligned_mtl_weights(torch.zeros(3, 3, dtype=torch.float64)).any()
