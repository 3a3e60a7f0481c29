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
_EPS32 = torch.finfo(torch.float32).eps


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


def _alpha_fair_weights(
    gram: Tensor, alpha: float, ridge: float, max_iter: int, method: str
) -> Tensor:
    """w > 0 with (K w)_i = w_i^(−1/α) for every task: Nash-MTL at α = 1, FairGrad otherwise.

    The condition is the stationary point of the strictly convex
    F(w) = ½ wᵀ K w − Σ_i φ(w_i), φ' = w^(−1/α) (φ = log w at α = 1), found by Newton's method
    with backtracking in float64. It is solved for β = w / w⁰, w⁰_i = ‖g_i‖^(−2α/(α+1)) the
    solution for orthogonal gradients (so β = 1 starts exactly there); in β the problem reads
    ½ βᵀ A β − Σ_i A_ii ψ(β_i), A = W⁰ K W⁰, ψ' = β^(−1/α), with the cosine matrix for A at
    α = 1. ``ridge`` adds ridge·diag(K) to K: it keeps F bounded when 0 is in the hull of the
    gradients (e.g. g_2 = −g_1, where no solution exists) and perturbs the condition by about
    ``ridge`` relative otherwise. Zero gradients get weight 0 (w_i would be ∞).
    """
    if alpha <= 0:
        raise ValueError(f"{method}: alpha must be positive, got {alpha}")
    K = _float64_cpu(gram)
    if not bool(torch.isfinite(K).all()):
        raise SolverError(f"{method}: the Gram matrix is not finite")
    T = K.shape[0]
    active = _nonzero(K)
    w = torch.zeros(T, dtype=torch.float64)
    if not active.any():
        return w.to(gram)
    start = K.diagonal()[active].pow(-alpha / (alpha + 1))  # w⁰ = ‖g‖^(−2α/(α+1))
    A = K[active][:, active] * torch.outer(start, start)
    d = A.diagonal().clone()
    A += ridge * torch.diag(d)
    power = 1 - 1 / alpha

    def objective(b: Tensor) -> Tensor:
        potential = b.log() if alpha == 1 else b.pow(power) / power
        return 0.5 * b @ A @ b - d @ potential

    b = torch.ones(len(d), dtype=torch.float64)
    for _ in range(max_iter):
        target = d * b.pow(-1 / alpha)
        grad = A @ b - target
        residual = float((grad / target).abs().max())  # relative, of the condition
        hessian = A + torch.diag(d / alpha * b.pow(-1 / alpha - 1))
        step = -torch.linalg.solve(hessian, grad)
        decrement = float(-(grad @ step))  # squared Newton decrement λ²
        t = 1.0
        while (b + t * step <= 0).any():
            t *= 0.5
        if decrement > 1 / 16:  # damped phase; for λ ≤ 1/4 the full step converges quadratically
            value = objective(b)
            while objective(b + t * step) > value - t * decrement / 4:
                t *= 0.5
        b = b + t * step
        if not bool(torch.isfinite(b).all()):
            raise SolverError(f"{method}: Newton's iterate became non-finite")
        # after this full step the error is O(λ²), at rounding level; the residual keeps a tiny
        # weight (α large, norms far apart), which hardly moves F, solving its own condition
        if decrement <= 1e-14 and residual <= 1e-6:
            break
    else:
        raise SolverError(f"{method}: Newton did not converge in {max_iter} iterations")
    w[active] = start * b
    return w.to(gram)


def nash_mtl_weights(gram: Tensor, ridge: float = 1e-8, max_iter: int = 100) -> Tensor:
    """Nash-MTL (Navon et al. 2022, Eq. 3 / Claim 3.1): α > 0 with α_i (K α)_i = 1 for all i.

    Then d = Σ α_i g_i has d · g_i = 1 / α_i: the stationary point of the convex
    ½ αᵀ K α − Σ log α_i, solved as ``_alpha_fair_weights`` at α = 1 (Newton on the cosine
    matrix; ``ridge`` for the case where 0 is in the hull; zero gradients get weight 0).

    Scale: G → sG gives α → α/s and leaves d unchanged, so the step size is set by the learning
    rate alone (there is no ``max_norm`` clipping here; clip outside if wanted).
    """
    return _alpha_fair_weights(gram, 1.0, ridge, max_iter, "Nash-MTL")


def nash_mtl(G: Tensor, ridge: float = 1e-8, max_iter: int = 100) -> Tensor:
    """Nash-MTL update d = Σ α_i g_i (P,), with d · g_i = 1 / α_i."""
    return _apply(nash_mtl_weights(gram_matrix(G), ridge, max_iter), G)


def fairgrad_weights(
    gram: Tensor, alpha: float = 2.0, ridge: float = 1e-8, max_iter: int = 100
) -> Tensor:
    """FairGrad (Ban & Ji 2024): the update of the α-fair utility Σ_i (g_i · d)^(1−α) / (1−α).

    d = Σ w_i g_i with (K w)_i = w_i^(−1/α), the paper's condition Gᵀ G w = w^(−1/α), has
    g_i · d = w_i^(−1/α) and maximises the utility (concave in d) over the ball of its own norm.
    Solved by ``_alpha_fair_weights``: Newton on a strictly convex potential in float64, with a
    ridge for the case where 0 is in the hull (the authors solve by least squares). α = 1 is
    Nash-MTL's proportional fairness (registered as ``NashMTL``), so the default is α = 2
    (minimum potential delay fairness, as in the authors' QM9 runs); larger α favour the task
    that gains least, towards max-min fairness. Zero gradients get weight 0. Scale: G → sG
    gives d → s^((1−α)/(1+α)) d (no ``max_norm`` clipping here).
    """
    return _alpha_fair_weights(gram, alpha, ridge, max_iter, "FairGrad")


def fairgrad(G: Tensor, alpha: float = 2.0, ridge: float = 1e-8, max_iter: int = 100) -> Tensor:
    """FairGrad update d = Σ w_i g_i (P,), with g_i · d = w_i^(−1/α)."""
    return _apply(fairgrad_weights(gram_matrix(G), alpha, ridge, max_iter), G)


def aligned_mtl_weights(gram: Tensor) -> Tensor:
    """Aligned-MTL (Senushkin et al. 2023, Alg. 1): the task gradients made orthogonal and of one
    norm, the smallest singular value of G, and summed.

    With K = V Λ Vᵀ, the aligned gradients are B G with B = σ V Λ^(−½) Vᵀ: for G = U S Wᵀ (SVD)
    that is σ U Wᵀ, the matrix of condition number 1 nearest G along its principal components.
    The update is their sum, 1ᵀ B G, so the weights on the original gradients are B 1; σ is the
    smallest kept singular value √λ_min, the paper's default scale. Eigenvalues at most
    T · float32 eps · λ_max (the gradients are float32) are dropped as the authors' code does,
    so dependent or duplicate gradients align within their span; all zero: zero weights.
    """
    K = _float64_cpu(gram)
    T = K.shape[0]
    try:
        lam, V = torch.linalg.eigh(K)
    except torch.linalg.LinAlgError as error:
        raise SolverError(f"Aligned-MTL: eigendecomposition failed ({error})") from error
    keep = lam > T * _EPS32 * lam.max().clamp_min(0)
    if not keep.any():
        return torch.zeros(T, dtype=gram.dtype, device=gram.device)
    lam, V = lam[keep], V[:, keep]
    B = lam.min().sqrt() * (V / lam.sqrt()) @ V.T
    return B.sum(1).to(gram)


def aligned_mtl(G: Tensor) -> Tensor:
    """Aligned-MTL update: the sum of the aligned task gradients (P,)."""
    return _apply(aligned_mtl_weights(gram_matrix(G)), G)


def equal_norm_weights(gram: Tensor) -> Tensor:
    """Every task gradient rescaled to the mean norm: ``a_i = mean_j ‖g_j‖ / ‖g_i‖``.

    GradNorm's target (Chen et al. 2018: equal weighted gradient norms) reached directly on the
    gradients, without learned weights: no task dominates the shared parameters, and the update
    keeps the size of a plain sum of equally large gradients. Zero gradients get weight 0.
    """
    K = _float64_cpu(gram)
    active = _nonzero(K)
    a = torch.zeros(K.shape[0], dtype=torch.float64)
    if active.any():
        norms = K.diagonal()[active].sqrt()
        a[active] = norms.mean() / norms
    return a.to(gram)


def equal_norm(G: Tensor) -> Tensor:
    """Sum of the task gradients rescaled to their mean norm (P,)."""
    return _apply(equal_norm_weights(gram_matrix(G)), G)


def pcgrad_equal_norm_weights(gram: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PCGrad on the norm-equalised gradients ``s_i g_i`` (``s = equal_norm_weights``), as
    weights on the original ones: ``a_i = s_i · pcgrad_weights(S K S)_i``."""
    s = equal_norm_weights(gram).to(torch.float64)
    K = _float64_cpu(gram)
    inner = pcgrad_weights(s[:, None] * K * s[None, :], generator).to(torch.float64)
    return (s * inner).to(gram)


def pcgrad_equal_norm(G: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PCGrad update of the norm-equalised task gradients (P,)."""
    return _apply(pcgrad_equal_norm_weights(gram_matrix(G), generator), G)


AGGREGATORS: dict[str, Callable[..., Tensor]] = {
    "pcgrad": pcgrad_weights,
    "equal_norm": equal_norm_weights,
    "pcgrad_equal_norm": pcgrad_equal_norm_weights,
    "cagrad": cagrad_weights,
    "imtl_g": imtl_g_weights,
    "mgda": mgda_weights,
    "nash_mtl": nash_mtl_weights,
    "fairgrad": fairgrad_weights,
    "aligned_mtl": aligned_mtl_weights,
}
