"""Gradient aggregators for multi-task learning, as pure functions of the task gradients.

Each aggregator turns the T × P matrix ``G`` of task gradients (row i is task i's gradient over
the shared parameters) into one update (P,). All of them are a weighting ``w @ G`` whose weights
depend on the Gram matrix ``K = G Gᵀ`` alone, so each method comes as two functions:

- ``<name>_weights(gram, ...)``: T × T Gram matrix → weights (T,). The engine calls this one: it
  builds ``K`` once (summed over parameter chunks, from rank-averaged gradients under DDP) and
  applies the weights with one weighted backward, possibly for several steps.
- ``<name>(G, ...)``: ``<name>_weights(gram_matrix(G), ...) @ G``, for use and tests on their own.

The weights are computed in float64 on the CPU (the problems are T-dimensional, T ≤ ~10) and
returned in the Gram matrix's dtype and device. A task whose squared gradient norm is at most
float64 eps × the largest one counts as a zero gradient; what each method does with it is
stated in its docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

_EPS = torch.finfo(torch.float64).eps
_TINY = torch.finfo(torch.float64).tiny


class SolverError(RuntimeError):
    """An aggregator's solver failed (did not converge, or met non-finite values); the balancer
    reports it and falls back to equal weights for that group and step."""


def gram_matrix(G: Tensor) -> Tensor:
    """``G Gᵀ`` in float64 on ``G``'s device: ``K[i, j] = g_i · g_j``."""
    G = G.to(torch.float64)
    return G @ G.T


def _float64_cpu(gram: Tensor) -> Tensor:
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"expected a non-empty square Gram matrix, got shape {tuple(gram.shape)}")
    return gram.detach().to("cpu", torch.float64)


def _nonzero(K: Tensor) -> Tensor:
    """Mask of the tasks whose gradient is not zero (relative to the largest)."""
    diag = K.diagonal()
    return diag > _EPS * diag.max()


def _apply(weights: Tensor, G: Tensor) -> Tensor:
    return weights.to(G.dtype) @ G


def pcgrad_weights(gram: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PCGrad (Yu et al. 2020, Alg. 1) as weights on the original task gradients.

    For each task i, g_i' starts at g_i; for each other task j in a random order, if
    g_i' · g_j < 0 then g_i' ← g_i' − (g_i' · g_j / ‖g_j‖²) g_j (projection onto the normal
    plane of the *original* g_j). The update is Σ_i g_i'. Every g_i' stays a combination
    Σ_k C[i, k] g_k of the originals, so the dot products come from ``gram`` and the weights are
    the column sums of C. Without conflict every weight is 1 (the sum of the gradients).

    Random draws, identical on every process given the same generator state (DDP relies on it):
    exactly T calls ``torch.randperm(T, generator=generator, device=generator.device)``, one per
    task i = 0, …, T−1 in that order; the i-th gives the order of the j, with j = i skipped.
    ``generator=None`` draws from torch's global CPU generator. Zero gradients are never
    projected onto (their projection is undefined); they still draw their permutation.
    """
    K = _float64_cpu(gram)
    T = K.shape[0]
    nonzero = _nonzero(K).tolist()
    device = generator.device if generator is not None else "cpu"
    C = torch.eye(T, dtype=torch.float64)
    for i in range(T):
        for j in torch.randperm(T, generator=generator, device=device).tolist():
            if j == i or not nonzero[j]:
                continue
            dot = C[i] @ K[:, j]
            if dot < 0:
                C[i, j] -= dot / K[j, j]
    return C.sum(0).to(gram)


def pcgrad(G: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PCGrad update Σ_i g_i' (P,); see ``pcgrad_weights`` for the random draws."""
    return _apply(pcgrad_weights(gram_matrix(G), generator), G)


def cagrad_weights(gram: Tensor, c: float = 0.4) -> Tensor:
    """CAGrad (Liu et al. 2021, Eq. 2–3) weights on the task gradients.

    With g0 the *mean* task gradient (not the sum) and g_w = Σ w_i g_i, solve
    min over the simplex of g_wᵀ g0 + c ‖g0‖ ‖g_w‖ (the dual of max_d min_i g_i · d over the
    ball ‖d − g0‖ ≤ c ‖g0‖) and return the weights of d = g0 + (c ‖g0‖ / ‖g_w‖) g_w, the paper's
    update without rescaling. ``c = 0`` (or g0 = 0) gives exactly the mean gradient. The
    T-dimensional problem is solved with SLSQP in float64 on the scale-free ``K / max K_ii``;
    if its minimiser has g_w = 0 the update falls back to g0.
    """
    if c < 0:
        raise ValueError(f"c must be non-negative, got {c}")
    K = _float64_cpu(gram)
    T = K.shape[0]
    mean = torch.full((T,), 1.0 / T, dtype=torch.float64)
    K = (K / K.diagonal().max().clamp_min(_TINY)).numpy()
    b = K @ mean.numpy()  # b_i = g_i · g0
    radius = c * float(np.sqrt(max(mean.numpy() @ b, 0.0)))  # c ‖g0‖
    if radius == 0.0:
        return mean.to(gram)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        norm = np.sqrt(max(w @ K @ w, _TINY))
        return w @ b + radius * norm, b + radius * (K @ w) / norm

    result = minimize(
        objective,
        mean.numpy(),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * T,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(T)},
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    w = np.clip(result.x, 0.0, None)
    w /= w.sum()
    norm = float(np.sqrt(max(w @ K @ w, 0.0)))
    if norm <= _EPS * radius:
        return mean.to(gram)
    return (mean + torch.from_numpy(w) * (radius / norm)).to(gram)


def cagrad(G: Tensor, c: float = 0.4) -> Tensor:
    """CAGrad update d = g0 + (c ‖g0‖ / ‖g_w‖) g_w (P,), with g0 the mean task gradient."""
    return _apply(cagrad_weights(gram_matrix(G), c), G)


def imtl_g_weights(gram: Tensor) -> Tensor:
    """IMTL-G (Liu et al. 2021, ICLR, Eq. 4–5): weights α, Σ α = 1, with equal projections.

    The update g = Σ α_i g_i has the same projection on every unit gradient u_i = g_i / ‖g_i‖:
    g · (u_1 − u_k) = 0 for k = 2..T. With α_1 = 1 − Σ_{k≥2} α_k this is the paper's
    (T−1)-dimensional system α_{2:T} D Uᵀ = g_1 Uᵀ (rows of D: g_1 − g_k, of U: u_1 − u_k),
    built from the Gram matrix and solved by least squares (SVD), so duplicate or dependent
    gradients give the minimum-norm solution instead of failing. Zero gradients have no
    direction: they get weight 0 and the system is solved among the others (all zero: 1/T each).
    """
    K = _float64_cpu(gram)
    T = K.shape[0]
    active = _nonzero(K)
    if not active.any():
        return torch.full((T,), 1.0 / T, dtype=gram.dtype, device=gram.device)
    Ka = K[active][:, active]
    M = Ka / Ka.diagonal().sqrt()  # M[i, k] = g_i · u_k
    rhs = M[0, 0] - M[0, 1:]  # (g_1 Uᵀ)_k
    DU = M[0, 0] - M[0, 1:][None, :] - M[1:, 0][:, None] + M[1:, 1:]  # (g_1 − g_a) · (u_1 − u_b)
    rest = torch.linalg.lstsq(DU.T, rhs[:, None], driver="gelsd").solution[:, 0]
    alpha = torch.zeros(T, dtype=torch.float64)
    alpha[active] = torch.cat([1 - rest.sum().reshape(1), rest])
    return alpha.to(gram)


def imtl_g(G: Tensor) -> Tensor:
    """IMTL-G update Σ α_i g_i (P,) with equal projections onto every unit task gradient."""
    return _apply(imtl_g_weights(gram_matrix(G)), G)


def mgda_weights(gram: Tensor) -> Tensor:
    """MGDA (Désidéri 2012; Sener & Koltun 2018, Eq. 3): argmin over the simplex of wᵀ K w.

    Solved exactly by enumerating supports S (2^T − 1 of them, batched by size): on each, the
    equality-constrained minimiser solves [[K_S, 1], [1ᵀ, 0]] [w_S; −μ] = [0; 1]. Supports
    whose solution is finite and non-negative give feasible points, and the one with the least
    wᵀ K w is returned. The optimum is always among them (the min-norm point lies in the hull of
    an affinely independent subset of its support, where this system is non-singular), so
    singular K (duplicate or dependent gradients) needs no special case. A zero gradient is in
    the hull, so it takes all the weight and the update is zero (Pareto-stationary).
    """
    K = _float64_cpu(gram)
    T = K.shape[0]
    K = K / K.diagonal().max().clamp_min(_TINY)
    best, best_value = torch.full((T,), 1.0 / T, dtype=torch.float64), float("inf")
    for size in range(1, T + 1):
        support = torch.tensor(list(combinations(range(T), size)))
        n = support.shape[0]
        kkt = torch.ones(n, size + 1, size + 1, dtype=torch.float64)
        kkt[:, :size, :size] = K[support[:, :, None], support[:, None, :]]
        kkt[:, size, size] = 0
        rhs = torch.zeros(n, size + 1, 1, dtype=torch.float64)
        rhs[:, size] = 1
        solution, info = torch.linalg.solve_ex(kkt, rhs)
        w_s = solution[:, :size, 0]
        feasible = (info == 0) & torch.isfinite(w_s).all(1) & (w_s >= -1e-12).all(1)
        if not feasible.any():
            continue
        w = torch.zeros(n, T, dtype=torch.float64).scatter_(1, support, w_s.clamp_min(0))[feasible]
        w /= w.sum(1, keepdim=True)
        values = torch.einsum("ni,ij,nj->n", w, K, w)
        value, index = values.min(0)
        if value < best_value:
            best, best_value = w[index], float(value)
    return best.to(gram)


def mgda(G: Tensor) -> Tensor:
    """MGDA update: the minimum-norm point of the convex hull of the task gradients (P,)."""
    return _apply(mgda_weights(gram_matrix(G)), G)


def nash_mtl_weights(gram: Tensor, ridge: float = 1e-8, max_iter: int = 100) -> Tensor:
    """Nash-MTL (Navon et al. 2022, Eq. 3 / Claim 3.1): α > 0 with α_i (K α)_i = 1 for all i.

    Then d = Σ α_i g_i has d · g_i = 1 / α_i. This is the stationary point of the convex
    ½ αᵀ K α − Σ log α_i, found by Newton's method with backtracking (float64). It is solved for
    β_i = α_i ‖g_i‖ on the cosine matrix C = K_ij / (‖g_i‖ ‖g_j‖) plus ridge·I, which is
    K + ridge·diag(K): the ridge keeps the problem bounded when 0 is in the hull of the gradients
    (e.g. g_2 = −g_1, where no solution exists) and perturbs each α_i (K α)_i by about ``ridge``
    relative otherwise. Zero gradients get weight 0 (α_i would be ∞).

    Scale: G → sG gives α → α/s and leaves d unchanged, so the step size is set by the learning
    rate alone (there is no ``max_norm`` clipping here; clip outside if wanted).
    """
    K = _float64_cpu(gram)
    if not bool(torch.isfinite(K).all()):
        raise SolverError("Nash-MTL: the Gram matrix is not finite")
    T = K.shape[0]
    active = _nonzero(K)
    alpha = torch.zeros(T, dtype=torch.float64)
    if not active.any():
        return alpha.to(gram)
    norms = K.diagonal()[active].sqrt()
    C = K[active][:, active] / torch.outer(norms, norms)
    C += ridge * torch.eye(len(norms), dtype=torch.float64)

    def objective(b: Tensor) -> Tensor:
        return 0.5 * b @ C @ b - b.log().sum()

    b = torch.ones(len(norms), dtype=torch.float64)  # exact for orthogonal gradients
    for _ in range(max_iter):
        grad = C @ b - 1 / b
        step = -torch.linalg.solve(C + torch.diag(b.pow(-2)), grad)
        decrement = float(-(grad @ step))  # squared Newton decrement λ²
        t = 1.0
        if decrement > 1 / 16:  # damped phase; for λ ≤ 1/4 the full step converges quadratically
            value = objective(b)
            while (b + t * step <= 0).any() or objective(b + t * step) > value - t * decrement / 4:
                t *= 0.5
        b = b + t * step
        if not bool(torch.isfinite(b).all()):
            raise SolverError("Nash-MTL: Newton's iterate became non-finite")
        if decrement <= 1e-14:  # after this full step the error is O(λ²), at rounding level
            break
    else:
        raise SolverError(f"Nash-MTL: Newton did not converge in {max_iter} iterations")
    alpha[active] = b / norms
    return alpha.to(gram)


def nash_mtl(G: Tensor, ridge: float = 1e-8, max_iter: int = 100) -> Tensor:
    """Nash-MTL update d = Σ α_i g_i (P,), with d · g_i = 1 / α_i."""
    return _apply(nash_mtl_weights(gram_matrix(G), ridge, max_iter), G)


AGGREGATORS: dict[str, Callable[..., Tensor]] = {
    "pcgrad": pcgrad_weights,
    "cagrad": cagrad_weights,
    "imtl_g": imtl_g_weights,
    "mgda": mgda_weights,
    "nash_mtl": nash_mtl_weights,
}
