"""Solvers for a layer's per-neuron QUBOs.  Each returns a ``(d + 1) x C`` 0/1 matrix.

* ``nearest``: the format's own rounding (the baseline every other result is compared with);
* ``exact``: exhaustive search, for subproblems of at most ``EXACT_MAX`` free variables;
* ``neal``: dwave-neal simulated annealing, one BQM per neuron;
* ``solve_auto`` (what ``"auto"`` uses): all neurons of the layer at once, sharing the Gram
  matrix.  It starts from Babai's nearest-plane point of the lattice problem
  ``min (theta - theta*)' G (theta - theta*)`` (the sequential error-feedback rounding of
  OBQ/GPTQ, on the Cholesky factor of ``G``), descends by single flips, then anneals from there
  at low temperature (every neuron and a few replicas in one vectorised sweep, the field
  ``h = G (sigma z)`` updated by one matrix product per block of variables) and descends again.
* ``lower_bound``: a certified lower bound from the continuous relaxation (the box QP solved by
  projected gradient; the Frank-Wolfe gap turns any iterate into a valid bound).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from ..errors import RoundingError
from ..extras import require
from .qubo import LayerQUBO

EXACT_MAX = 24


class TimeUp(Exception):
    """The deadline passed before a solver that works on all neurons at once had a result."""


def _spent(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


NeuronSolver = Callable[[LayerQUBO, int], np.ndarray]


def by_neuron(
    problem: LayerQUBO, solve: NeuronSolver, start: torch.Tensor | None = None, deadline: float | None = None
) -> tuple[torch.Tensor, int]:
    """Solve neuron by neuron (``solve(problem, c)``: the values of ``problem.free(c)``) until the
    ``deadline`` (``time.perf_counter()``); the neurons not reached keep ``start`` (zeros if not
    given).  Returns the solution and how many neurons were not reached."""
    z = torch.zeros(problem.n, problem.neurons, dtype=torch.float64) if start is None else start.clone()
    for c in range(problem.neurons):
        if _spent(deadline):
            return z, problem.neurons - c
        free = problem.free(c)
        if free:
            z[free, c] = torch.from_numpy(np.asarray(solve(problem, c), dtype=np.float64))
    return z, 0


def exact_neuron(problem: LayerQUBO, c: int) -> np.ndarray:
    """Exhaustive minimisation of neuron ``c`` (at most ``EXACT_MAX`` free variables)."""
    free = problem.free(c)
    if len(free) > EXACT_MAX:
        raise RoundingError(
            f"solver='exact': neuron {c} has {len(free)} free variables, more than EXACT_MAX = {EXACT_MAX} "
            "(exhaustive search); use solver='auto' or 'neal' for this layer"
        )
    Q, _ = problem.neuron(c)
    return _enumerate(Q[np.ix_(free, free)])


def exact(problem: LayerQUBO) -> torch.Tensor:
    """Exhaustive minimisation per neuron (at most ``EXACT_MAX`` free variables each)."""
    return by_neuron(problem, exact_neuron)[0]


def _enumerate(Q: np.ndarray) -> np.ndarray:
    """argmin of z' Q z over {0,1}^n (Q upper triangular: each pair once, linear terms on the
    diagonal), the low 16 variables enumerated at once for each assignment of the others."""
    n = Q.shape[0]
    lo = min(n, 16)
    hi = n - lo
    lin = np.diag(Q)
    bits_lo = ((np.arange(2**lo)[:, None] >> np.arange(lo)) & 1).astype(np.float64)
    e_lo = bits_lo @ lin[:lo] + np.einsum("ai,ij,aj->a", bits_lo, np.triu(Q[:lo, :lo], 1), bits_lo)
    best_e, best = math.inf, None
    for h in range(2**hi):
        zh = np.array([(h >> i) & 1 for i in range(hi)], dtype=np.float64)
        e_hi = zh @ lin[lo:] + zh @ np.triu(Q[lo:, lo:], 1) @ zh if hi else 0.0
        cross = bits_lo @ (Q[:lo, lo:] @ zh) if hi else 0.0
        e = e_lo + e_hi + cross
        a = int(np.argmin(e))
        if e[a] < best_e:
            best_e, best = e[a], np.concatenate([bits_lo[a], zh])
    assert best is not None  # the energies are finite
    return best


def neal_neuron(
    problem: LayerQUBO, c: int, num_sweeps: int = 1000, num_reads: int = 1, seed: int = 0
) -> np.ndarray:
    """dwave-neal's SimulatedAnnealingSampler on neuron ``c``'s BQM (seed ``seed + c``)."""
    dwave_neal = require("neal", "the neal rounding solver")
    free = problem.free(c)
    bqm = problem.bqm(c)
    bqm.fix_variables({j: 0 for j in range(problem.n) if j not in set(free)})
    sampler = dwave_neal.SimulatedAnnealingSampler()
    best = sampler.sample(bqm, num_reads=num_reads, num_sweeps=num_sweeps, seed=seed + c).first.sample
    return np.array([float(best[j]) for j in free])


def neal(problem: LayerQUBO, num_sweeps: int = 1000, num_reads: int = 1, seed: int = 0) -> torch.Tensor:
    """dwave-neal's SimulatedAnnealingSampler on each neuron's BQM."""
    return by_neuron(
        problem, functools.partial(neal_neuron, num_sweeps=num_sweeps, num_reads=num_reads, seed=seed)
    )[0]


def _cholesky_upper(G: torch.Tensor) -> torch.Tensor:
    ridge = 1e-9 * float(torch.diagonal(G).mean()) + 1e-300
    eye = torch.eye(G.shape[0], dtype=G.dtype)
    for _ in range(8):
        try:
            return torch.linalg.cholesky(G + ridge * eye, upper=True)
        except RuntimeError:
            ridge *= 100
    raise RuntimeError("Gram matrix could not be factorised")


def nearest_plane(problem: LayerQUBO, deadline: float | None = None) -> torch.Tensor:
    """Babai's nearest-plane rounding of the least-squares optimum, all neurons at once
    (:class:`TimeUp` if the ``deadline`` passes first)."""
    G, C = problem.stats.G, problem.stats.C
    U = _cholesky_upper(G)
    target = C @ problem.theta_f  # normal equations: G theta* = C theta_f
    theta_star = torch.cholesky_solve(target, U, upper=True)
    n = problem.n
    err = torch.zeros_like(theta_star)  # theta - theta* for decided variables
    z = torch.zeros_like(theta_star)
    sig, low = problem.sigma, problem.theta_low
    for j in range(n - 1, -1, -1):
        if _spent(deadline):
            raise TimeUp
        corr = (U[j, j + 1 :] @ err[j + 1 :]) / U[j, j] if j + 1 < n else 0.0
        want = theta_star[j] - corr
        up = (want - low[j]) * 2 > sig[j]  # closer to theta_low + sigma than to theta_low
        z[j] = (up & (sig[j] != 0)).to(z.dtype)  # inactive variables are set by the caller
        err[j] = low[j] + sig[j] * z[j] - theta_star[j]
    return z


def descent(
    problem: LayerQUBO, z: torch.Tensor, max_iters: int = 10_000, deadline: float | None = None
) -> torch.Tensor:
    """Steepest single-flip descent to a local minimum, all neurons at once (stopped where it
    is when the ``deadline`` passes: every step lowers the energy)."""
    G, sig = problem.stats.G, problem.sigma
    lin = problem.linear()
    gdiag = torch.diagonal(G).unsqueeze(1)
    active = problem.active()
    z = z.clone()
    h = G @ (sig * z)
    cols = torch.arange(sig.shape[1])
    for _ in range(max_iters):
        if _spent(deadline):
            break
        d = 1 - 2 * z
        delta_e = torch.where(active, d * (lin + 2 * sig * (h - gdiag * sig * z)), 0.0)
        j = delta_e.argmin(0)
        step = delta_e[j, cols]
        move = step < -1e-12 * (1 + step.abs())
        if not bool(move.any()):
            break
        dj = d[j, cols] * move
        h += G[:, j] * (sig[j, cols] * dj)
        z[j, cols] += dj
    return z


def anneal(
    problem: LayerQUBO,
    start: torch.Tensor,
    sweeps: int = 50,
    replicas: int = 4,
    t_hot: float = 0.3,
    t_cold: float = 0.02,
    block: int = 64,
    seed: int = 0,
    deadline: float | None = None,
) -> torch.Tensor:
    """Simulated annealing from ``start``, every neuron and ``replicas`` copies at once (the
    sweeps stop when the ``deadline`` passes).

    Sweeps visit the active variables in a random order; the field ``h = G (sigma z)`` of a block
    of variables is corrected exactly for the flips made earlier in the block and the whole field
    is updated by one matrix product per block.  Temperatures fall geometrically from ``t_hot``
    to ``t_cold`` times each neuron's mean flip cost at the start.  Returns each neuron's best
    state over replicas and time.
    """
    G = problem.stats.G.numpy()
    n, cn = problem.sigma.shape
    sig = np.tile(problem.sigma.numpy(), (1, replicas))
    lin = np.tile(problem.linear().numpy(), (1, replicas))
    active = np.tile(problem.active().numpy(), (1, replicas))
    gs2 = 2 * np.diag(G)[:, None] * sig**2
    z = np.tile(start.numpy(), (1, replicas))
    h = G @ (sig * z)
    rng = np.random.default_rng(seed)
    d = 1 - 2 * z
    cost = np.abs(d * (lin + 2 * sig * h) + gs2 * z) * active
    scale = cost.sum(0) / np.maximum(active.sum(0), 1) + 1e-300
    rows = np.nonzero(active.any(1))[0]
    cur = np.zeros(z.shape[1])
    best, best_z = cur.copy(), z.copy()
    for s in range(sweeps):
        if _spent(deadline):
            break
        temp = scale * (t_hot * (t_cold / t_hot) ** (s / max(1, sweeps - 1)))
        order = rng.permutation(rows)
        # flip iff delta_e < -T log u (Metropolis); inactive variables never flip
        thresh = np.where(active[order], -np.log(rng.random((len(order), z.shape[1]))) * temp, -np.inf)
        for b0 in range(0, len(order), block):
            idx = order[b0 : b0 + block]
            gbb = G[np.ix_(idx, idx)]
            hb = h[idx]
            ch = np.zeros((len(idx), z.shape[1]))
            for k, j in enumerate(idx):
                hj = hb[k] + gbb[k, :k] @ ch[:k] if k else hb[k]
                zj = z[j]
                dj = 1 - 2 * zj
                de = dj * (lin[j] + 2 * sig[j] * hj) + gs2[j] * zj
                step = dj * (de < thresh[b0 + k])
                ch[k] = sig[j] * step
                z[j] = zj + step
                cur += de * step * dj
            h += G[:, idx] @ ch
        better = cur < best
        if better.any():
            best = np.where(better, cur, best)
            best_z[:, better] = z[:, better]
    by_replica = (best + 0.0).reshape(replicas, cn)
    pick = by_replica.argmin(0)
    out = best_z.reshape(n, replicas, cn)[:, pick, np.arange(cn)]
    return torch.from_numpy(np.ascontiguousarray(out))


AUTO_EXACT_MAX = 12


def enumerable(problem: LayerQUBO, exact_max: int = AUTO_EXACT_MAX) -> bool:
    """Does every neuron have at most ``exact_max`` free variables (``solve_auto`` enumerates)?"""
    return problem.neurons == 0 or int(problem.active().sum(0).max()) <= exact_max


def solve_auto(
    problem: LayerQUBO,
    sweeps: int = 50,
    replicas: int = 4,
    seed: int = 0,
    exact_max: int = AUTO_EXACT_MAX,
    deadline: float | None = None,
) -> torch.Tensor:
    """The default solver: exhaustive search when every neuron has at most ``exact_max`` free
    variables (depthwise convolutions, small layers), else nearest-plane warm start, descent,
    annealing, descent.  With a ``deadline`` the search stops where it is when it passes
    (:class:`TimeUp` if that is before the warm start exists)."""
    if enumerable(problem, exact_max):
        return exact(problem)
    start = descent(problem, nearest_plane(problem, deadline), deadline=deadline)
    if sweeps > 0:
        start = descent(
            problem, anneal(problem, start, sweeps, replicas, seed=seed, deadline=deadline), deadline=deadline
        )
    return start


def lower_bound(problem: LayerQUBO, steps: int = 300, deadline: float | None = None) -> torch.Tensor:
    """Certified lower bound per neuron: the continuous relaxation ``0 <= z <= 1``.

    Projected gradient on the convex box QP; for the final iterate ``u`` the bound
    ``E(u) + sum_j min(g_j (0 - u_j), g_j (1 - u_j))`` (convexity, Frank-Wolfe gap) is valid
    whatever the number of steps (so the ``deadline`` may end them early).
    """
    G, sig = problem.stats.G, problem.sigma
    # with z_j^2 = z_j, E(z) = offset + a.z + (sig z)' G (sig z): convex, and equal to E on {0,1}^n
    a = problem.linear() - torch.diagonal(G).unsqueeze(1) * sig**2
    free = problem.active().to(torch.float64)
    lip = 2 * float(torch.linalg.matrix_norm(G, ord=2)) * float(sig.abs().max()) ** 2 + 1e-300
    u = torch.full_like(sig, 0.5) * free
    offset = problem.offset()

    def grad(u: torch.Tensor) -> torch.Tensor:
        return (a + 2 * sig * (G @ (sig * u))) * free

    def value(u: torch.Tensor) -> torch.Tensor:
        su = sig * u
        return offset + (a * u).sum(0) + (su * (G @ su)).sum(0)

    for _ in range(steps):
        if _spent(deadline):
            break
        u = (u - grad(u) / lip).clamp(0, 1) * free
    g = grad(u)
    return value(u) + torch.minimum(-g * u, g * (1 - u)).sum(0)
