"""Layer normalisation, rounded exactly: ``round(LN(x) / s_out)`` of the exact real value.

For one normalised group of ``n`` inputs on a grid (codes ``k``, step ``s``; ``gamma``, ``beta``,
``eps`` taken at their exact binary values), with the integers ``S = sum k``, ``D_i = n k_i - S``
and ``V = sum D_i^2``:

    x_i - mean = D_i s / n,    var = V s^2 / n^3,
    y_i = gamma_i (x_i - mean) / sqrt(var + eps) + beta_i = gamma_i D_i / sqrt(R) + beta_i,
    R = V / n + eps n^2 / s^2    (an exact rational per group).

``y`` is irrational in general, but it compares exactly with any rational ``c``: with
``a = gamma_i D_i`` and ``e = c - beta_i``, ``y >= c`` iff ``a / sqrt(R) >= e``, decided by signs and
``a^2`` against ``e^2 R``.  So the rounding is decided like a transcendental activation's: a
float64 evaluation with an error bound settles almost every element, and
:func:`~torchqv.formats.round_by_comparison` settles the rest exactly (ties included).  An MLP with
LayerNorm is therefore exact on the simulation's path; the integer ONNX form evaluates it in
float64 (see :mod:`torchqv.export`).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..fake_quant import FakeQuantize
from ..formats import FixedPoint, round_by_comparison, round_certified
from ..grid import Grid, QTensor, as_codes
from ..rational import RTensor, as_ints, saturate
from .base import Call, Kind, NodeIO, OnGrid, Operation, Real, Unsupported, register

ERR = 2.0**-46  # relative error bound of the float64 evaluation (about 16 roundings, with margin)


def compare_normalized(a: Fraction, root: Fraction, e: Fraction) -> int:
    """``sign(a / sqrt(root) - e)`` for rationals, ``root > 0``, exactly."""
    if a >= 0:
        if e < 0:
            return 1
        lhs, rhs = a * a, e * e * root
        return (lhs > rhs) - (lhs < rhs)
    if e >= 0:
        return -1
    lhs, rhs = a * a, e * e * root
    return (rhs > lhs) - (rhs < lhs)


def round_normalized(
    fmt: FixedPoint, t_hat: float, a: Fraction, root: Fraction, beta: Fraction, so: Fraction
) -> int:
    """``round_exact((a / sqrt(root) + beta) / so)``, decided exactly."""
    return round_by_comparison(fmt, t_hat, lambda r: compare_normalized(a, root, r * so - beta))


@register(modules=(nn.LayerNorm,))
class QuantLayerNorm(Operation, nn.Module):
    """``nn.LayerNorm`` over the last dimensions, its exact value rounded to the node's format."""

    def __init__(self, mod: nn.LayerNorm, cfg: Any, name: str):
        nn.Module.__init__(self)
        self.qname = name
        self.normalized_shape = tuple(mod.normalized_shape)
        self.eps = float(mod.eps)
        n = math.prod(self.normalized_shape)
        weight = mod.weight if mod.weight is not None else torch.ones(self.normalized_shape)
        bias = getattr(mod, "bias", None)
        bias = bias if bias is not None else torch.zeros(self.normalized_shape)
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.n = n
        self.out_quant = (
            FakeQuantize(cfg.activation, 1, 0, cfg.activation_observer, cfg.learn_step, f"{name}.out")
            if cfg.activation is not None
            else None
        )

    @classmethod
    def build(cls, call: Call) -> Operation:
        op = cls(call.module, call.config, call.name)  # type: ignore[arg-type]
        if op.out_quant is not None and isinstance(call.kind(call.args[0]), Real):
            src = call.args[0].node
            raise Unsupported(
                f"{call.name}: normalises the real-valued (unquantized) output of {src}; give {src} an "
                f"output format (QConfig.activation / QConfig.input) or keep {call.name} real with an "
                f"override {{'{call.name}': None}}"
            )
        return op

    def out_kind(self, call: Call) -> Kind:
        return OnGrid(call.name) if self.out_quant is not None else Real()

    def describe(self) -> str:
        return f"QuantLayerNorm{self.normalized_shape}"

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps
        )

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        y = self._float(args[0])
        return self.out_quant(y) if self.out_quant is not None else y

    # ------------------------------------------------------------ exact path
    def _groups(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.reshape(-1, self.n)

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if self.out_quant is None:
            return self._float(x.values() if isinstance(x, QTensor) else x.to(torch.float64))
        out = self.out_quant.grid()
        k = self._groups(x.codes).to(torch.int64)
        n, s = self.n, x.grid.step
        total = k.sum(1, keepdim=True)
        d = n * k - total  # exact integers
        v = (d * d).sum(1)
        if k.numel() and (int(v.max()) >= 2**62 or int(d.abs().max()) >= 2**26):
            raise Unsupported(f"{self.qname}: layer norm of codes this wide is beyond exact int64 arithmetic")
        eps_term = Fraction(self.eps) * n * n / (s * s)
        roots = [Fraction(int(vv), n) + eps_term for vv in v.tolist()]
        gamma = self.weight.detach().double().reshape(-1).to(k.device)
        beta = self.bias.detach().double().reshape(-1).to(k.device)
        root_f = torch.tensor([float(r) for r in roots], dtype=torch.float64, device=k.device).unsqueeze(1)
        a = gamma * d.to(torch.float64)
        z = a / torch.sqrt(root_f)
        y = z + beta
        so = float(out.step)
        t_hat = y / so
        err = (z.abs() + y.abs() + beta.abs()) * ERR / so + t_hat.abs() * ERR
        gammas = [Fraction(g) for g in gamma.tolist()]
        betas = [Fraction(b) for b in beta.tolist()]
        flat_d, flat_t = d.reshape(-1), t_hat.reshape(-1)

        def exact(idx: list[int]) -> list[int]:
            out_codes = []
            for i in idx:
                row, col = divmod(i, n)
                a_exact = gammas[col] * int(flat_d[i])
                out_codes.append(
                    round_normalized(out.fmt, float(flat_t[i]), a_exact, roots[row], betas[col], out.step)
                )
            return out_codes

        codes = round_certified(out.fmt, t_hat, err, exact, self.qname)
        kmin, kmax = out.code_range
        codes = as_codes(out.fmt.saturate_tensor(codes, kmin, kmax, self.qname), out)
        return QTensor(codes.reshape(x.codes.shape), out)

    # ------------------------------------------------------------ integer reference
    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        values = x.exact().reshape(-1, self.n)
        gammas = [Fraction(g) for g in self.weight.detach().double().reshape(-1).tolist()]
        betas = [Fraction(b) for b in self.bias.detach().double().reshape(-1).tolist()]
        eps = Fraction(self.eps)
        if self.out_quant is None:
            raise Unsupported(f"reference: {self.qname} has no output format, so its value is irrational")
        grid: Grid = self.out_quant.grid()
        codes = np.empty(values.shape, dtype=object)
        for r, row in enumerate(values):
            mean = sum(row, Fraction(0)) / self.n
            var = sum(((v - mean) ** 2 for v in row), Fraction(0)) / self.n
            root = var + eps  # y = gamma (x - mean) / sqrt(root) + beta
            for c, v in enumerate(row):
                a = gammas[c] * (v - mean)
                t_hat = (float(a) / math.sqrt(float(root)) + float(betas[c])) / float(grid.step)
                codes[r, c] = round_normalized(grid.fmt, t_hat, a, root, betas[c], grid.step)
        return RTensor(saturate(as_ints(codes.reshape(x.data.shape)), grid, self.qname), grid)

    # ------------------------------------------------------------ ONNX
    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        """Float64 evaluation of ``gamma D / sqrt(R) + beta`` from the integer codes, then the
        format's rounding: equal to the simulation except for values within about 2^-46 of a
        rounding boundary (which the simulation decides exactly); ``check_onnx_parity`` reports
        any difference."""
        x = em.need_grid(args[0], self.qname)
        if self.out_quant is None:
            raise Unsupported(f"{self.qname}: the integer form needs an output format (QConfig.activation)")
        out = self.out_quant.grid()
        g = em.g
        axes = g.const(np.arange(-len(self.normalized_shape), 0, dtype=np.int64), dtype=np.int64)
        n, s = self.n, x.grid.step
        total = g.op("ReduceSum", [x.name, axes], keepdims=1)
        d = g.op("Sub", [g.op("Mul", [x.name, g.const(float(n))]), total])
        v = g.op("ReduceSum", [g.op("Mul", [d, d]), axes], keepdims=1)
        root = g.op(
            "Add", [g.op("Div", [v, g.const(float(n))]), g.const(float(Fraction(self.eps) * n * n / (s * s)))]
        )
        gamma = g.const(self.weight.detach().double().numpy())
        beta = g.const(self.bias.detach().double().numpy())
        y = g.op("Add", [g.op("Div", [g.op("Mul", [gamma, d]), g.op("Sqrt", [root])]), beta])
        t = g.op("Div", [y, g.const(float(out.step))])
        return em.value(io, em.clip(em.round_float64(t, out.fmt), out), out)

    def onnx_qdq(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        g = em.g
        f32 = np.float32
        weight = g.const(self.weight.detach().float().numpy(), dtype=f32)
        bias = g.const(self.bias.detach().float().numpy(), dtype=f32)
        y = g.op(
            "LayerNormalization",
            [args[0].name, weight, bias],
            axis=-len(self.normalized_shape),
            epsilon=self.eps,
        )
        if self.out_quant is None:
            return em.value(io, y, None)
        out = self.out_quant.grid()
        return em.value(io, em.fake_quant(y, out, self.qname), out)

    def extra_repr(self) -> str:
        return f"{self.qname!r}, {self.normalized_shape}"
