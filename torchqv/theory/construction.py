"""Park, Park & Hwang, "On expressive power of quantized neural networks under fixed-point arithmetic",
Theorem 6 with Lemma 5 (Eq. 12-15, 23-29): a sigma-quantized network that computes a given ``f*: Q_{p,s}^d ->
Q_{p,s}`` exactly.

The network is ``f(x) = [b + sum_v gamma_v 1_{v}(x)]`` (Eq. 14 with singleton cubes, as in the proof
of Theorem 6): ``b`` is a witness of ``S_b = Q_{p,s}`` and ``gamma_v`` the element of
``S° = (d/s^2) Z`` of smallest ``|gamma|`` with ``[b + gamma_v] = f*(v)``
(:meth:`RoundedLattice.offset_to`).  Points with ``gamma_v = 0`` need no indicator, so ``b`` is the
most frequent value of ``f*`` when that is a witness.  With Condition 1's ``z`` (``[sigma] = M``
exactly on ``[z, q_max]``), each indicator ``gamma_v 1_{v}`` is (Lemma 5):

* layer 1 (Eq. 23): per coordinate ``i``: ``x_i - v_i + z``, ``q_max``, ``-x_i + v_i + z``, ``q_max``;
* layer 2 (Eq. 24-25): ``n`` copies of ``(phi + z - 1/s, q_max)`` with ``phi`` the sum of
  ``[sigma](q_max) - [sigma](.)`` over layer 1, so ``g = [sigma](q_max) - [sigma](first)`` is
  ``D = M - [sigma](z - 1/s) >= 1/s`` on ``v`` and 0 elsewhere; ``n = floor(2 / D) + 1`` is the
  smallest count with ``n q_max D > 2 q_max`` (the paper's ``m_q``; it takes ``2s + 1``);
* layer 3 (Eq. 26): ``gamma_v = sum_j w_j ([sigma](u_j) - [sigma](t_j))`` with ``w_j`` in
  ``Q_{p,s}`` (:func:`decompose`, cf. Lemma 25); per term ``f_{u,1} = [u + sum_n q_max g]``,
  ``f_{u,2} = [u]``, and the same for ``t``;
* layer 4 (Eq. 28 and 14): weights ``w_j (-1, +1, +1, -1)`` on those four, bias ``b``, rounded.

The first two layers of a point serve all its terms (the paper gives every ``F_q`` its own copy:
the same values, more parameters).  Condition 1 is used with ``alpha = beta = 1``: every torch
activation module's ``[sigma]`` peaks at the right end when it is non-constant, since its right
tail increases and saturation caps it there.

**torchqv form.**  ``nn.Sequential(Linear, sigma, Linear, sigma, Linear, sigma, Linear)`` in float64,
quantized with ``weight = activation = input = Q_{p,s}`` (``tq.FixedPoint(bits=p+1, step=1/s)``):
one rounding after every affine map and activation (Eq. 7), weights on ``Q_{p,s}``.
``QuantLinear`` keeps a bias at high precision on the accumulator grid ``s_w s_x = 1/s^2``, never
saturated; ``Q_{inf,s} = (1/s) Z`` lies on that grid, so the paper's biases are stored exactly.
The builder checks every weight and bias code after quantization (bias codes are multiples of
``s``: biases in ``Q_{inf,s}``) and the model's output on all of ``Q_{p,s}^d``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from .. import activations as A
from ..errors import TheoryInputError
from ..formats import fraction_to_float
from ..ops.affine import QuantLinear
from ..quantize import QConfig, quantize
from .universality import UNIVERSAL, q_format, representability, rounded_codes

MAX_DENSE_PARAMETERS = 20_000_000
MAX_INPUTS = 2**18  # points of Q_{p,s}^d enumerated (and checked) by the construction
Target = Mapping[tuple, Any] | Callable[[tuple[Fraction, ...]], Any]
_MODULES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "identity": nn.Identity,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "hardtanh": lambda: nn.Hardtanh(0.0, 1.0),  # the paper's Hardtanh
}


def all_inputs(p: int, s: int, d: int) -> list[tuple[Fraction, ...]]:
    """``Q_{p,s}^d`` in lexicographic order."""
    kmax = 2**p - 1
    return list(itertools.product([Fraction(k, s) for k in range(-kmax, kmax + 1)], repeat=d))


def decompose(total: int, gaps: Sequence[int], kmax: int) -> list[tuple[int, int]]:
    """Terms ``(a, g)`` with ``sum a g = total``, ``0 < |a| <= kmax`` and ``g`` in ``gaps`` (positive).

    In ``1/s^2`` units this writes ``gamma = sum w_j v_j`` with ``w_j = a/s`` in ``Q_{p,s}`` and
    ``v_j = g/s`` in ``V`` (Lemma 25): the largest gap as often as it fits, the remainder by one gap
    if it is one, else by Bezout coefficients of the gaps.  ``total`` must be a multiple of their gcd.
    """
    if total % math.gcd(*gaps):
        raise TheoryInputError(f"{total} is not a multiple of gcd{tuple(gaps)}")
    big = max(gaps)
    count, rest = divmod(abs(total), big)
    parts = [(count, big)]
    if rest in gaps:
        parts.append((1, rest))
    elif rest:
        parts += [(rest // math.gcd(*gaps) * c, g) for c, g in _bezout(gaps)]
    terms = []
    for a, g in parts:
        a = a if total > 0 else -a
        q, r = divmod(abs(a), kmax)
        terms += [(kmax if a > 0 else -kmax, g)] * q
        if r:
            terms.append((r if a > 0 else -r, g))
    return terms


def _bezout(gaps: Sequence[int]) -> list[tuple[int, int]]:
    """``(c, g)`` with ``sum c g = gcd(gaps)`` (extended Euclid over the gaps, zero terms dropped)."""
    coeffs: list[tuple[int, int]]
    acc, coeffs = 0, []
    for g in gaps:
        if acc and g % acc == 0:  # the gcd would not change
            continue
        x, y, new = _egcd(acc, g)
        coeffs = [(c * x, h) for c, h in coeffs] + [(y, g)]
        acc = new
    return [(c, g) for c, g in coeffs if c]


def _egcd(a: int, b: int) -> tuple[int, int, int]:
    """``x, y, gcd`` with ``a x + b y = gcd(a, b)``."""
    x0, y0, x1, y1 = 1, 0, 0, 1
    while b:
        q, a, b = a // b, b, a % b
        x0, x1 = x1, x0 - q * x1
        y0, y1 = y1, y0 - q * y1
    return x0, y0, a


def _module(activation: nn.Module | str) -> nn.Module:
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, str) and activation.lower() in _MODULES:
        return _MODULES[activation.lower()]()
    raise TheoryInputError(f"activation must be a torch activation module or one of {sorted(_MODULES)}")


def _target(table: Target, p: int, s: int, d: int | None) -> tuple[list[tuple[Fraction, ...]], list[int]]:
    """Every input of ``Q_{p,s}^d`` and the code ``s f*(x)`` of its value (validated)."""
    kmax = 2**p - 1

    def code(v: Any, where: str) -> int:
        t = Fraction(v) * s
        if t.denominator != 1 or abs(t) > kmax:
            raise TheoryInputError(
                f"{where} = {v!r} is not in Q_{p},{s} (multiples of 1/{s} up to {kmax}/{s})"
            )
        return int(t)

    if isinstance(table, Mapping):
        keys = {tuple(code(x, "input coordinate") for x in k): v for k, v in table.items()}
        d = len(next(iter(keys))) if keys else d
        if not keys or d is None or any(len(k) != d for k in keys):
            raise TheoryInputError("table keys must be tuples of one length d (points of Q_{p,s}^d)")
        _check_inputs(p, s, d)
        points = all_inputs(p, s, d)
        missing = [x for x in points if tuple(int(c * s) for c in x) not in keys]
        if missing:
            raise TheoryInputError(f"table misses {len(missing)} of {len(points)} inputs, e.g. {missing[0]}")
        return points, [code(keys[tuple(int(c * s) for c in x)], f"f*{x}") for x in points]
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise TheoryInputError(f"a callable f* needs the input dimension d, an int >= 1, got d={d!r}")
    _check_inputs(p, s, d)
    points = all_inputs(p, s, d)
    return points, [code(table(x), f"f*{x}") for x in points]


def _check_inputs(p: int, s: int, d: int) -> None:
    """Refuse, before enumerating them, more inputs than the construction can visit."""
    count = (2 ** (p + 1) - 1) ** d
    if count > MAX_INPUTS:
        raise TheoryInputError(
            f"Q_{p},{s}^{d} has {count} inputs, more than MAX_INPUTS = {MAX_INPUTS}: the construction visits "
            "every input (and has one indicator per input where f* differs from its most frequent value); "
            "use a smaller p or d"
        )


class _Layers:
    """Neurons of the four affine maps: sparse weights on the previous layer and a bias."""

    def __init__(self) -> None:
        self.rows: list[list[tuple[dict[int, Fraction], Fraction]]] = [[], [], [], []]

    def add(self, layer: int, weights: dict[int, Fraction], bias: Fraction) -> int:
        self.rows[layer].append((weights, bias))
        return len(self.rows[layer]) - 1


def build_representing_network(
    activation: nn.Module | str,
    p: int,
    s: int,
    table: Target,
    d: int | None = None,
) -> nn.Module:
    """A quantized model (eval mode) equal to ``f*`` on all of ``Q_{p,s}^d`` (module docstring).

    ``activation``: a torch activation module or a name (``"relu"``, ``"identity"``, ...;
    ``"hardtanh"`` is the paper's clip to [0, 1]).  ``table``: a mapping from input tuples to
    values of ``Q_{p,s}`` covering ``Q_{p,s}^d``, or a callable with ``d`` given.
    """
    module = _module(activation)
    act = A.from_module(module)
    if act is None:
        raise TheoryInputError(f"{type(module).__name__} is not a supported activation module")
    res = representability(act, p, s)
    if res.verdict != UNIVERSAL:
        raise TheoryInputError(f"{act.name} under Q_{p},{s} is {res.verdict}: {res.reason}")
    cond = res.condition1
    if cond is None or (cond.alpha, cond.beta) != (1, 1):  # never met by a torch module (docstring)
        raise TheoryInputError(
            f"Condition 1 holds only with ({cond}); the construction needs alpha = beta = 1"
        )
    points, values = _target(table, p, s, d)
    d = len(points[0])
    kmax, lattice = 2**p - 1, res.sufficient
    qmax, z, unit = Fraction(kmax, s), cond.z, Fraction(1, s)
    sig = dict(zip(range(-kmax, kmax + 1), rounded_codes(act, p, s), strict=True))  # s [sigma](k/s)
    copies = 2 * s // (sig[kmax] - sig[int(z * s) - 1]) + 1
    mode = Counter(values).most_common(1)[0][0]
    b = Fraction(mode, s) if lattice.is_full(mode) else res.witness_b
    assert b is not None  # a universal verdict comes with a witness b
    pairs: dict[int, tuple[int, int]] = {}  # positive gap code -> (u, t) with sig[u] - sig[t] = gap
    for (u, su), (t, st) in itertools.product(sig.items(), repeat=2):
        pairs.setdefault(su - st, (u, t))
    gaps = sorted(g for g in pairs if g > 0)
    indicators = []  # (point, terms of gamma_v) for every point with gamma_v != 0
    for v, fv in zip(points, values, strict=True):
        gamma = lattice.offset_to(b, Fraction(fv, s))
        if gamma is None:
            raise RuntimeError(f"b = {b} is not a witness of S_b = Q_{p},{s}")
        terms = decompose(int(gamma * s * s), gaps, kmax)
        if terms:
            indicators.append((v, terms))
    n = len(indicators)
    _check_size([d, 4 * d * n, 2 * copies * n, 4 * sum(len(t) for _, t in indicators), 1] if n else [d, 1])
    net, out = _Layers(), {}
    for v, terms in indicators:
        phi: dict[int, Fraction] = {}
        for i, vi in enumerate(v):  # Eq. 23 (alpha_i = beta_i = v_i)
            phi[net.add(0, {i: Fraction(1)}, z - vi)] = Fraction(-1)
            phi[net.add(0, {}, qmax)] = Fraction(1)
            phi[net.add(0, {i: Fraction(-1)}, vi + z)] = Fraction(-1)
            phi[net.add(0, {}, qmax)] = Fraction(1)
        g_w: dict[int, Fraction] = {}
        for _ in range(copies):  # Eq. 25, repeated for the sum of Eq. 26
            g_w[net.add(1, phi, z - unit)] = -qmax
            g_w[net.add(1, {}, qmax)] = qmax
        for a, g in terms:  # Eq. 26 and 28
            w, (u, t) = Fraction(a, s), pairs[g]
            out[net.add(2, g_w, Fraction(u, s))] = -w
            out[net.add(2, {}, Fraction(u, s))] = w
            out[net.add(2, g_w, Fraction(t, s))] = w
            out[net.add(2, {}, Fraction(t, s))] = -w
    net.add(3, out, b)
    rows = net.rows if out else [[({}, b)]]  # f* = [b] everywhere: the one-layer network [0 x + b]
    model = _assemble(rows, module, d)
    qm = quantize(
        model, QConfig(weight=q_format(p, s), activation=q_format(p, s), input=q_format(p, s))
    ).eval()
    _check(qm, rows, points, values, s)
    return qm


def _check_size(widths: list[int]) -> None:
    """Refuse, before any row is built, a network whose dense layers would be too large."""
    dense = sum(a * c for a, c in itertools.pairwise(widths))
    if dense > MAX_DENSE_PARAMETERS:
        raise TheoryInputError(
            f"the network for this f* has layer widths {widths}: {dense} dense weights, more than "
            f"MAX_DENSE_PARAMETERS = {MAX_DENSE_PARAMETERS}; use a smaller p, s or d, or an f* that differs "
            "from its most frequent value at fewer inputs (one indicator per such input)"
        )


def _assemble(rows: list, module: nn.Module, d: int) -> nn.Sequential:
    """Dense float64 ``nn.Linear`` layers from the sparse rows, ``module`` between them."""
    widths = [d] + [len(r) for r in rows]
    layers: list[nn.Module] = []
    for n_in, layer in zip(widths, rows, strict=False):
        lin = nn.Linear(n_in, len(layer), dtype=torch.float64)
        with torch.no_grad():
            lin.weight.zero_()
            for i, (w, bias) in enumerate(layer):
                for j, value in w.items():
                    lin.weight[i, j] = fraction_to_float(value)
                lin.bias[i] = fraction_to_float(bias)
        layers += [lin, copy.deepcopy(module)]
    return nn.Sequential(*layers[:-1])


def _check(qm: nn.Module, rows: list, points: list, values: list[int], s: int) -> None:
    """Re-check the quantized model: codes of every weight and bias, then ``f*`` on every input."""
    lins = [m for m in qm.modules() if isinstance(m, QuantLinear)]
    for i, (q, layer) in enumerate(zip(lins, rows, strict=True)):
        want_w = torch.zeros_like(q.weight_codes())
        for r, (w, _) in enumerate(layer):
            for c, value in w.items():
                want_w[r, c] = int(value * s)
        codes = q.bias_codes([Fraction(1, s * s)] * len(layer))
        assert codes is not None  # every layer of the construction has a bias
        got_b = codes.tolist()
        if not torch.equal(q.weight_codes(), want_w) or got_b != [float(bias * s * s) for _, bias in layer]:
            raise RuntimeError(f"affine map {i}: quantized weights or biases differ from the construction")
        if any(v % s for v in got_b):
            raise RuntimeError(f"affine map {i}: a bias is not in Q_inf,s = (1/s)Z")
    x = torch.tensor([[fraction_to_float(c) for c in pt] for pt in points], dtype=torch.float64)
    got = torch.round(qm(x).flatten() * s).tolist()
    bad = [(pt, g, v) for pt, g, v in zip(points, got, values, strict=True) if g != v]
    if bad:
        raise RuntimeError(
            f"construction is wrong at {len(bad)} inputs, e.g. {bad[0]} (output, target codes)"
        )


def parameter_count(model: nn.Module) -> int:
    """Park et al.'s ``I`` (sec. 2.3): one bias per neuron plus the nonzero weights (the index sets)."""
    lins = [m for m in model.modules() if isinstance(m, QuantLinear)]
    return sum(m.out_features + int(torch.count_nonzero(m.weight_codes())) for m in lins)


def lemma20_bound(p: int, s: int, d: int) -> int:
    """Sec. 4.2 (Lemma 20 times ``|Q_{p,s}^d|``): ``O(2^(2p) s^2 d (2^(p+1) - 1)^d)``, constant 1."""
    return 2 ** (2 * p) * s**2 * d * (2 ** (p + 1) - 1) ** d


def main(argv: Sequence[str] | None = None) -> None:
    """Build networks for random ``f*`` and print their sizes next to Lemma 20's expression."""
    parser = argparse.ArgumentParser(description="Park et al. Theorem 6 construction sizes.")
    parser.add_argument("--activations", nargs="+", default=["relu", "identity", "sigmoid"])
    parser.add_argument("--cases", nargs="+", default=["1,1,2", "2,1,1", "2,3,1", "2,1,2", "3,7,1", "3,2,1"],
                        help="p,s,d triples")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    head = [
        "activation",
        "p",
        "s",
        "d",
        "inputs",
        "neurons",
        "parameters I",
        "dense",
        "Lemma 20 E",
        "I / E",
        "build s",
    ]
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    for name in args.activations:
        for case in args.cases:
            p, s, d = (int(v) for v in case.split(","))
            kmax = 2**p - 1
            table = {x: Fraction(rng.randint(-kmax, kmax), s) for x in all_inputs(p, s, d)}
            start = time.perf_counter()
            qm = build_representing_network(name, p, s, table)
            secs = time.perf_counter() - start
            lins = [m for m in qm.modules() if isinstance(m, QuantLinear)]
            neurons = sum(m.out_features for m in lins)
            dense = sum(m.weight_codes().numel() + m.out_features for m in lins)
            count, bound = parameter_count(qm), lemma20_bound(p, s, d)
            cells = [name, p, s, d, len(table), neurons, count, dense, bound, f"{count / bound:.3f}"]
            print("| " + " | ".join(map(str, cells)) + f" | {secs:.2f} |")


if __name__ == "__main__":
    main()
