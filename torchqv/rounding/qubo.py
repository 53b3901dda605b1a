"""The rounding objective of one layer as an exact QUBO (Muñiz Subiñas et al., "Optimization of the
quantization of dense neural networks from an exact QUBO formulation"), one per output neuron.

For output neuron ``c`` with parameters ``theta = [w_c; b_c]`` the rounded parameters are
``theta(z) = theta_low + sigma * z`` with one binary ``z_j`` per weight (round down or up; the two
levels of a binary grid) and per bias (on the accumulator grid).  With the calibration inputs
``Xh = [X, 1]`` of the quantized prefix and the float target ``t_c = Xh_f theta_f`` (the float
layer on the float inputs, before the activation), the output error is exactly

    E_c(z) = || Xh theta(z) - t_c ||^2
           = sum_j lin_j z_j + sum_{j<k} 2 sigma_j sigma_k G_jk z_j z_k + offset          (z^2 = z)

    lin_j  = sigma_j^2 G_jj + 2 sigma_j (G theta_low - C theta_f)_j
    offset = theta_low' G theta_low - 2 theta_low' C theta_f + theta_f' G_f theta_f

with the Gram matrices ``G = Xh' Xh``, ``C = Xh' Xh_f``, ``G_f = Xh_f' Xh_f``, shared by every
neuron of the layer (only ``sigma``, ``theta_low`` and ``theta_f`` differ).  No Taylor expansion
is involved (unlike AdaRound), and the layer's squared Frobenius error is the sum of the
per-neuron energies: the problem decomposes exactly.  Convolutions use unfolded patches (one
subproblem per output channel; grouped and depthwise convolutions are one problem per group, whose
neurons see that group's input channels only); a weight whose float value lies beyond the grid has
a single admissible level (``sigma_j = 0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from ..errors import RoundingError
from ..extras import require
from ..formats import fraction_to_float
from ..ops.affine import QuantAffine


@dataclass
class GramStats:
    """Sufficient statistics of the calibration data for one layer (``d + 1`` with the bias)."""

    G: torch.Tensor  # Xh' Xh
    C: torch.Tensor  # Xh' Xh_f
    Gf: torch.Tensor  # Xh_f' Xh_f
    rows: int = 0
    # the rows themselves, kept when there are fewer rows than variables: energies are then
    # ||Xh theta - Xh_f theta_f||^2 directly (rows x d x C) instead of through G (d x d x C)
    Xq: torch.Tensor | None = None
    Xf: torch.Tensor | None = None

    @classmethod
    def empty(cls, d: int) -> GramStats:
        z = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        return cls(z.clone(), z.clone(), z.clone())

    def add(self, xq: torch.Tensor, xf: torch.Tensor) -> None:
        """Accumulate rows of quantized-prefix inputs ``xq`` and float inputs ``xf``."""
        one = torch.ones(xq.shape[0], 1, dtype=torch.float64)
        xq, xf = torch.cat([xq, one], 1), torch.cat([xf, one], 1)
        self.G += xq.T @ xq
        self.C += xq.T @ xf
        self.Gf += xf.T @ xf
        self.rows += xq.shape[0]


def group_stats(xq: list[torch.Tensor], xt: list[torch.Tensor], groups: int) -> list[GramStats]:
    """The Gram statistics of every group at once: ``xq``/``xt`` are batches of patch rows over
    all groups (columns grouped by group, as the weights are); group ``g`` sees its columns only."""
    d = xq[0].shape[1] // groups
    z = torch.zeros(groups, d + 1, d + 1, dtype=torch.float64)
    G, C, Gf, rows = z.clone(), z.clone(), z.clone(), 0
    qs, fs = [], []
    for a, b in zip(xq, xt, strict=True):
        one = torch.ones(a.shape[0], groups, 1, dtype=torch.float64)
        a = torch.cat([a.reshape(a.shape[0], groups, d), one], 2)
        b = torch.cat([b.reshape(b.shape[0], groups, d), one], 2)
        G += torch.einsum("rgi,rgj->gij", a, a)
        C += torch.einsum("rgi,rgj->gij", a, b)
        Gf += torch.einsum("rgi,rgj->gij", b, b)
        rows += a.shape[0]
        qs.append(a)
        fs.append(b)
    keep = rows <= d + 1
    Xq, Xf = (torch.cat(qs), torch.cat(fs)) if keep else (None, None)
    return [
        GramStats(G[g], C[g], Gf[g], rows, Xq[:, g] if keep else None, Xf[:, g] if keep else None)  # type: ignore[index]
        for g in range(groups)
    ]


@dataclass
class LayerQUBO:
    """All per-neuron QUBOs of a layer (columns are neurons).

    ``theta_low``, ``sigma``, ``theta_f``: ``(d + 1) x C`` (the last row is the bias);
    ``lower``: the integer codes of ``theta_low`` (weights in weight steps, bias in accumulator
    steps) and ``delta``: code increment of ``z = 1`` (1, 2 for binary grids, 0 when fixed).
    """

    stats: GramStats
    theta_low: torch.Tensor
    sigma: torch.Tensor
    theta_f: torch.Tensor
    lower: torch.Tensor
    delta: torch.Tensor
    has_bias_var: bool

    @property
    def n(self) -> int:
        return self.theta_low.shape[0]

    @property
    def neurons(self) -> int:
        return self.theta_low.shape[1]

    def linear(self) -> torch.Tensor:
        """``lin_j`` for every variable and neuron (``(d + 1) x C``)."""
        G, C = self.stats.G, self.stats.C
        r0 = G @ self.theta_low - C @ self.theta_f
        return self.sigma**2 * torch.diagonal(G).unsqueeze(1) + 2 * self.sigma * r0

    def offset(self) -> torch.Tensor:
        G, C, Gf = self.stats.G, self.stats.C, self.stats.Gf
        tl, tf = self.theta_low, self.theta_f
        return (tl * (G @ tl)).sum(0) - 2 * (tl * (C @ tf)).sum(0) + (tf * (Gf @ tf)).sum(0)

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """``E_c(z)`` for a ``(d + 1) x C`` 0/1 matrix (one column per neuron)."""
        if self.stats.Xq is not None:  # few rows: the output error directly
            theta = self.theta_low + self.sigma * z
            assert self.stats.Xf is not None  # kept with Xq
            return ((self.stats.Xq @ theta - self.stats.Xf @ self.theta_f) ** 2).sum(0)
        sz = self.sigma * z
        quad = (sz * (self.stats.G @ sz)).sum(0) - (torch.diagonal(self.stats.G).unsqueeze(1) * sz**2).sum(0)
        return self.offset() + (self.linear() * z).sum(0) + quad

    def neuron(self, c: int) -> tuple[np.ndarray, float]:
        """The QUBO of neuron ``c``: upper-triangular ``Q`` (linear terms on the diagonal) and the
        offset, so that ``E_c(z) = z' Q z + offset``."""
        s = self.sigma[:, c]
        Q = 2 * torch.triu(s.unsqueeze(1) * self.stats.G * s.unsqueeze(0), 1)
        Q += torch.diag(self.linear()[:, c])
        return Q.numpy(), float(self.offset()[c])

    def bqm(self, c: int):  # -> dimod.BinaryQuadraticModel
        """Neuron ``c`` as a ``dimod.BinaryQuadraticModel`` (hand it to any dimod sampler)."""
        dimod = require("dimod", "LayerQUBO.bqm")

        Q, offset = self.neuron(c)
        return dimod.BinaryQuadraticModel(np.diag(Q).copy(), np.triu(Q, 1), offset, dimod.BINARY)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Integer codes of the rounded parameters (``(d + 1) x C``)."""
        return self.lower + self.delta * z

    def active(self) -> torch.Tensor:
        """Variables that matter: not fixed by saturation, and with an input that is not always
        zero (``G_jj > 0``); the others leave the energy unchanged whatever their value."""
        return (self.sigma != 0) & (torch.diagonal(self.stats.G) > 0).unsqueeze(1)

    def free(self, c: int) -> list[int]:
        """Active variables of neuron ``c``."""
        return self.active()[:, c].nonzero().flatten().tolist()


def build_layer_qubo(
    m: QuantAffine, stats: GramStats, bias_step: list[Fraction] | None, rows: slice | None = None
) -> LayerQUBO:
    """Per-neuron QUBOs of ``m`` (of its output channels ``rows``: one group of a grouped
    convolution) for its current float parameters and steps.

    ``bias_step``: the accumulator-grid step per channel when the bias is quantized (``None``: the
    bias stays a real number and is not a variable).
    """
    wq = m.weight_quant
    if wq is None or m.frozen:
        raise RoundingError(f"{m.qname}: QUBO rounding needs quantized, unfrozen weights")
    rows = rows if rows is not None else slice(0, m.weight.shape[0])
    fmt = wq.fmt
    w = m.weight.detach().to(torch.float64).reshape(m.weight.shape[0], -1)[rows]  # C x d
    s = m.weight_step_tensor().reshape(m.weight.shape[0], -1)[rows]  # each weight's own step (C x d)
    bias = m.bias.detach()[rows] if m.bias is not None else None
    bias_step = bias_step[rows] if bias_step is not None else None
    kmin, kmax = wq.code_range()
    t = w / s
    if fmt.binary:
        lower = torch.full_like(t, -1.0)
        delta = torch.full_like(t, 2.0)
    else:
        lower = torch.floor(t).clamp(kmin, kmax)
        delta = ((t > lower) & (lower < kmax)).to(torch.float64)  # a level above exists and is wanted
        exact_top = (lower == kmax) | (t <= kmin)
        delta = torch.where(exact_top, torch.zeros_like(delta), delta)
        # an integral t (on the grid) has no choice to make
    sigma_w = s * delta
    theta_low_w = s * lower
    n_out = w.shape[0]
    if bias is not None:
        b = bias.to(torch.float64)
        if bias_step is not None:
            sb = torch.tensor([fraction_to_float(f) for f in bias_step], dtype=torch.float64)
            lb = torch.floor(b / sb)
            db = (b / sb > lb).to(torch.float64)
            bias_rows = (sb * lb, sb * db, lb, db)
        else:  # real-valued bias: fixed at its float value
            bias_rows = (b, torch.zeros_like(b), b, torch.zeros_like(b))
    else:
        z = torch.zeros(n_out, dtype=torch.float64)
        bias_rows = (z, z, z, z)
    theta_low = torch.cat([theta_low_w, bias_rows[0].unsqueeze(1)], 1).T.contiguous()
    sigma = torch.cat([sigma_w, bias_rows[1].unsqueeze(1)], 1).T.contiguous()
    lower_c = torch.cat([lower, bias_rows[2].unsqueeze(1)], 1).T.contiguous()
    delta_c = torch.cat([delta, bias_rows[3].unsqueeze(1)], 1).T.contiguous()
    theta_f = torch.cat(
        [
            w,
            (bias.double() if bias is not None else torch.zeros(n_out, dtype=torch.float64)).unsqueeze(1),
        ],
        1,
    ).T.contiguous()
    if not math.isfinite(float(stats.G.abs().max())):
        raise RoundingError(f"{m.qname}: calibration inputs contain NaN or inf")
    return LayerQUBO(
        stats, theta_low, sigma, theta_f, lower_c, delta_c, bias is not None and bias_step is not None
    )
