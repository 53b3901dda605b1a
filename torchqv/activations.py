"""Activation functions as the quantized network sees them: ``[sigma](x) = round(sigma(x))``.

The semantics is the rounding of the *exact* real function (Park, Park & Hwang, "On expressive power of
quantized neural networks under fixed-point arithmetic", Eq. 5 and 7), so the result does not depend on a math
library.  Each :class:`Activation` has

* ``f64``: a float64 torch evaluation, accurate to a small relative error (``REL_ERR``), used by
  the fast path, which certifies every rounding decision against that error;
* ``rational``: the exact value where it is rational (everywhere for piecewise-linear
  functions; ``x >= 0`` for ELU; rational points such as sigmoid(0) = 1/2), else ``None``;
* ``mp``: an arbitrary-precision evaluation (mpmath) elsewhere, used when the float64 value is
  too close to a rounding boundary to decide.

``round_activation`` is the one exact implementation shared by the integer reference and the
fast path's fall-back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UnsupportedModelError
from .formats import FixedPoint, round_approx


class _LazyMpmath:
    """``mpmath``, imported on first use: it takes about as long to import as the rest of
    torchqv, and only transcendental activations near a rounding boundary need it."""

    def __getattr__(self, name: str) -> Any:
        import mpmath

        globals()["mpmath"] = mpmath  # from now on the module itself
        return getattr(mpmath, name)


mpmath: Any = _LazyMpmath()

# Relative error bound of the float64 formulas below (they are accurate to a few ulps; the
# bound keeps a margin of about 2^14).
REL_ERR = 2.0**-36
ABS_ERR = 2.0**-1000


def _mp_of(x: Fraction) -> mpmath.mpf:
    return mpmath.mpf(x.numerator) / x.denominator


def _frac_of(y: mpmath.mpf) -> Fraction:
    """The exact value of a binary mpf (mpmath's man_exp drops the sign)."""
    y = mpmath.mpf(y)
    man, exp = y.man_exp
    value = Fraction(int(man)) * (Fraction(2) ** int(exp))
    return -value if y < 0 else value


def _softplus64(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp_min(x, 0) + torch.log1p(torch.exp(-x.abs()))


@dataclass(frozen=True)
class Activation:
    """A pointwise activation with its exact and float64 forms."""

    name: str
    params: tuple[tuple[str, float], ...] = ()
    train_fn: Callable[[torch.Tensor], torch.Tensor] = field(compare=False, default=torch.relu)
    f64: Callable[[torch.Tensor], torch.Tensor] = field(compare=False, default=torch.relu)
    rational: Callable[[Fraction], Fraction | None] = field(compare=False, default=lambda x: None)
    mp: Callable[[mpmath.mpf], mpmath.mpf] | None = field(compare=False, default=None)
    lipschitz: float = 1.0
    piecewise_linear: bool = False
    rational_everywhere: bool = False  # ``rational`` never returns None (piecewise rational)
    # ``sigma(x) = min(max(x, lo), hi)`` (``None``: unbounded on that side), for ReLU, ReLU6,
    # Hardtanh and the identity; ``None`` for every other activation
    clamp: tuple[Fraction | None, Fraction | None] | None = None

    def __reduce__(self) -> tuple:
        """Pickle by name and parameters (the functions are rebuilt by the factory)."""
        return (build, (self.name, self.params))

    def param(self, key: str) -> float:
        return dict(self.params)[key]

    def exact(self, x: Fraction) -> Fraction:
        """sigma(x) for a piecewise-linear activation (always rational)."""
        value = self.rational(x)
        if value is None:
            raise ValueError(f"{self.name}({x}) is not rational")
        return value

    def approx(self, x: Fraction, prec: int) -> Fraction:
        """sigma(x) with relative error below 2^-prec (mpmath at ``prec + 96`` bits)."""
        assert self.mp is not None  # an activation that is not rational everywhere has its mpmath form
        with mpmath.workprec(prec + 96):
            return _frac_of(self.mp(_mp_of(x)))


def round_activation(act: Activation, fmt: FixedPoint, x: Fraction, step: Fraction) -> int:
    """Unsaturated centered code of ``round(sigma(x) / step)``, decided exactly."""
    value = act.rational(x)
    if value is not None:
        return fmt.round_exact(value / step)
    return round_approx(fmt, lambda prec: act.approx(x, prec) / step, where=act.name)


def _pwl(
    name: str,
    exact: Callable[[Fraction], Fraction],
    f: Callable,
    lip: float = 1.0,
    params: tuple = (),
    clamp: tuple[Fraction | None, Fraction | None] | None = None,
) -> Activation:
    return Activation(
        name,
        params,
        train_fn=f,
        f64=f,
        rational=exact,
        lipschitz=lip,
        piecewise_linear=True,
        rational_everywhere=True,
        clamp=clamp,
    )


def _zero_at_zero(x: Fraction) -> Fraction | None:
    return Fraction(0) if x == 0 else None


def relu() -> Activation:
    return _pwl("relu", lambda x: max(x, Fraction(0)), torch.relu, clamp=(Fraction(0), None))


def identity() -> Activation:
    return _pwl("identity", lambda x: x, lambda x: x, clamp=(None, None))


def leaky_relu(negative_slope: float = 0.01) -> Activation:
    a = Fraction(negative_slope)
    return _pwl(
        "leaky_relu",
        lambda x: x if x >= 0 else a * x,
        lambda x: F.leaky_relu(x, negative_slope),
        max(1.0, abs(negative_slope)),
        (("negative_slope", negative_slope),),
    )


def hardtanh(min_val: float = -1.0, max_val: float = 1.0) -> Activation:
    lo, hi = Fraction(min_val), Fraction(max_val)
    if lo > hi:
        raise UnsupportedModelError(f"hardtanh needs min_val <= max_val, got {min_val}, {max_val}")
    return _pwl(
        "hardtanh",
        lambda x: min(max(x, lo), hi),
        lambda x: F.hardtanh(x, min_val, max_val),
        1.0,
        (("min_val", min_val), ("max_val", max_val)),
        (lo, hi),
    )


def hardsigmoid() -> Activation:
    """``relu6(x + 3) / 6`` (MobileNetV3)."""
    return _pwl("hardsigmoid", lambda x: min(max(x + 3, Fraction(0)), Fraction(6)) / 6, F.hardsigmoid, 1 / 6)


def hardswish() -> Activation:
    """``x * relu6(x + 3) / 6`` (MobileNetV3): piecewise quadratic, rational everywhere."""
    return Activation(
        "hardswish",
        (),
        F.hardswish,
        lambda x: x * torch.clamp(x + 3, 0, 6) / 6,
        lambda x: x * min(max(x + 3, Fraction(0)), Fraction(6)) / 6,
        None,
        1.5,
        rational_everywhere=True,
    )


def sigmoid() -> Activation:
    return Activation(
        "sigmoid",
        (),
        torch.sigmoid,
        torch.sigmoid,
        lambda x: Fraction(1, 2) if x == 0 else None,
        lambda x: 1 / (1 + mpmath.exp(-x)),
        0.25,
    )


def tanh() -> Activation:
    return Activation("tanh", (), torch.tanh, torch.tanh, _zero_at_zero, mpmath.tanh, 1.0)


def elu(alpha: float = 1.0) -> Activation:
    a = mpmath.mpf(Fraction(alpha).numerator) / Fraction(alpha).denominator

    def f64(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, alpha * torch.expm1(torch.clamp_max(x, 0)))

    return Activation(
        "elu",
        (("alpha", alpha),),
        lambda x: F.elu(x, alpha),
        f64,
        lambda x: x if x >= 0 else None,
        lambda x: a * mpmath.expm1(x),
        max(1.0, abs(alpha)),
    )


def silu() -> Activation:
    return Activation(
        "silu",
        (),
        F.silu,
        lambda x: x * torch.sigmoid(x),
        _zero_at_zero,
        lambda x: x / (1 + mpmath.exp(-x)),
        1.1,
    )


def gelu() -> Activation:
    r2 = math.sqrt(2.0)
    return Activation(
        "gelu",
        (),
        F.gelu,
        lambda x: 0.5 * x * torch.special.erfc(-x / r2),
        _zero_at_zero,
        lambda x: x / 2 * mpmath.erfc(-x / mpmath.sqrt(2)),
        1.13,
    )


def mish() -> Activation:
    return Activation(
        "mish",
        (),
        F.mish,
        lambda x: x * torch.tanh(_softplus64(x)),
        _zero_at_zero,
        lambda x: x * mpmath.tanh(mpmath.log1p(mpmath.exp(x))),
        1.1,
    )


def softplus(beta: float = 1.0) -> Activation:
    """``log(1 + exp(beta x)) / beta`` exactly (torch's linear cut-off above ``threshold`` is
    an approximation of this function and is used only on the training path)."""
    b = mpmath.mpf(Fraction(beta).numerator) / Fraction(beta).denominator
    return Activation(
        "softplus",
        (("beta", beta),),
        lambda x: F.softplus(x, beta),
        lambda x: _softplus64(beta * x) / beta,
        lambda x: None,
        lambda x: mpmath.log1p(mpmath.exp(b * x)) / b,
        1.0,
    )


def from_module(module: nn.Module) -> Activation | None:
    """The activation a module computes, or ``None`` if it is not a supported activation."""
    if isinstance(module, nn.ReLU):
        return relu()
    if isinstance(module, nn.LeakyReLU):
        return leaky_relu(module.negative_slope)
    if isinstance(module, nn.Hardtanh):  # includes ReLU6
        return hardtanh(module.min_val, module.max_val)
    if isinstance(module, nn.Sigmoid):
        return sigmoid()
    if isinstance(module, nn.Tanh):
        return tanh()
    if isinstance(module, nn.ELU):
        return elu(module.alpha)
    if isinstance(module, nn.SiLU):
        return silu()
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            raise UnsupportedModelError("GELU(approximate='tanh') is not supported; use approximate='none'")
        return gelu()
    if isinstance(module, nn.Mish):
        return mish()
    if isinstance(module, nn.Softplus):
        return softplus(module.beta)
    if isinstance(module, nn.Identity):  # (a quantized graph treats nn.Identity as a no-op)
        return identity()
    if isinstance(module, nn.Hardsigmoid):
        return hardsigmoid()
    if isinstance(module, nn.Hardswish):
        return hardswish()
    return None


def build(name: str, params: tuple[tuple[str, float], ...] = ()) -> Activation:
    """The activation called ``name`` with these parameters (the inverse of pickling)."""
    every = (relu, identity, leaky_relu, hardtanh, hardsigmoid, hardswish, sigmoid, tanh, elu, silu, gelu)
    factories: dict[str, Callable[..., Activation]] = {f.__name__: f for f in (*every, mish, softplus)}
    if name not in factories:
        raise UnsupportedModelError(f"unknown activation {name!r}")
    return factories[name](**dict(params))


def _arg(args: tuple, kwargs: dict, pos: int, key: str, default: Any) -> Any:
    if key in kwargs:
        return kwargs[key]
    return args[pos] if len(args) > pos else default


# Functional and method forms that ``torch.fx`` exposes (target -> builder(args, kwargs)).
FUNCTIONAL: dict[Any, Callable[[tuple, dict], Activation | None]] = {  # None: an unsupported variant
    F.relu: lambda a, k: relu(),
    torch.relu: lambda a, k: relu(),
    F.relu6: lambda a, k: hardtanh(0.0, 6.0),
    F.leaky_relu: lambda a, k: leaky_relu(_arg(a, k, 1, "negative_slope", 0.01)),
    F.hardtanh: lambda a, k: hardtanh(_arg(a, k, 1, "min_val", -1.0), _arg(a, k, 2, "max_val", 1.0)),
    torch.sigmoid: lambda a, k: sigmoid(),
    F.sigmoid: lambda a, k: sigmoid(),
    torch.tanh: lambda a, k: tanh(),
    F.tanh: lambda a, k: tanh(),
    F.elu: lambda a, k: elu(_arg(a, k, 1, "alpha", 1.0)),
    F.silu: lambda a, k: silu(),
    F.mish: lambda a, k: mish(),
    F.softplus: lambda a, k: softplus(_arg(a, k, 1, "beta", 1.0)),
    F.gelu: lambda a, k: gelu() if _arg(a, k, 1, "approximate", "none") == "none" else None,
    F.hardsigmoid: lambda a, k: hardsigmoid(),
    F.hardswish: lambda a, k: hardswish(),
}
METHODS: dict[str, Callable[[tuple, dict], Activation]] = {
    "relu": lambda a, k: relu(),
    "sigmoid": lambda a, k: sigmoid(),
    "tanh": lambda a, k: tanh(),
    "relu_": lambda a, k: relu(),
}
