"""Park, Park & Hwang, "On expressive power of quantized neural networks under fixed-point arithmetic", sec.
2.2 and 3.1-3.3: the representability decision against brute force and the paper."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torchqv import activations as A
from torchqv.formats import QuantizationError
from torchqv.theory.universality import (
    NOT_UNIVERSAL,
    PAPER_ACTIVATIONS,
    UNDETERMINED,
    UNIVERSAL,
    RoundedLattice,
    condition1,
    main,
    paper_activation,
    q_format,
    representability,
    representability_table,
    rounded_codes,
    rounding_cell,
    scaled_hardtanh,
)

TRANSCENDENTAL = ["ELU", "SiLU", "Mish", "GELU", "Sigmoid", "SoftPlus", "Tanh"]


def paper_round(x: Fraction, p: int, s: int) -> Fraction:
    """Sec. 2.2 literally: the nearest element of Q_{p,s}, ties to the larger absolute value."""
    grid = [Fraction(q, s) for q in range(-(2**p) + 1, 2**p)]
    best = min(abs(x - y) for y in grid)
    return max((y for y in grid if abs(x - y) == best), key=abs)


# ------------------------------------------------------------------- format
@given(st.integers(1, 3), st.integers(1, 9), st.fractions(-20, 20, max_denominator=200))
def test_q_format_is_the_papers_rounding(p, s, x):
    fmt = q_format(p, s)
    assert [Fraction(k, s) for k in fmt.levels()] == [Fraction(q, s) for q in range(-(2**p) + 1, 2**p)]
    assert fmt.quantize_exact(x, Fraction(1, s)) * Fraction(1, s) == paper_round(x, p, s)


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 8, 9])
def test_rounding_cells_partition_the_fine_grid(p, s):
    """Step 2 of the reduction: the cell of j is exactly {u : [u / s^2] = j / s}."""
    kmax = 2**p - 1
    cells = {j: rounding_cell(j, p, s) for j in range(-kmax, kmax + 1)}
    for u in range(-(kmax + 2) * s * s, (kmax + 2) * s * s + 1):
        j = int(paper_round(Fraction(u, s * s), p, s) * s)
        inside = [k for k, (lo, hi) in cells.items() if (lo is None or lo <= u) and (hi is None or u <= hi)]
        assert inside == [j]


# ------------------------------------------------------- the rounded image
@pytest.mark.parametrize("name", TRANSCENDENTAL)
def test_certified_image_equals_mpmath(name):
    for p, s in [(2, 1), (2, 3), (3, 1), (3, 2), (3, 5), (3, 7), (4, 3), (4, 10), (4, 15)]:
        act = paper_activation(name, s)
        assert rounded_codes(act, p, s) == rounded_codes(act, p, s, exact=True)


def test_certified_image_equals_mpmath_at_p8():
    for name, s in [("Sigmoid", 3), ("GELU", 255), ("SoftPlus", 100)]:
        act = paper_activation(name, s)
        assert rounded_codes(act, 8, s) == rounded_codes(act, 8, s, exact=True)


def test_image_values_in_the_proof_of_lemma_8():
    """Sigmoid, s = 1: [sigma](0) = [1/2] = 1 and [sigma](-1) = 0, as the proof says.  s = 2: the proof
    says [sigma](-1) = [1/(1+e)] = 0, but 1/(1+e) = 0.2689 is nearer to 1/2 than to 0, so it is 1/2;
    the gap 1/s is still in V through [sigma](-3/2) = [0.1824] = 0, and the lemma stands."""
    codes = rounded_codes(A.sigmoid(), 3, 1)
    assert codes[7] == 1 and codes[7 - 1] == 0
    codes = rounded_codes(A.sigmoid(), 3, 2)
    assert codes[7] == 1 and codes[7 - 2] == 1 and codes[7 - 3] == 0  # x = 0, -1, -3/2 (codes of 1/2)
    res = representability("Sigmoid", 3, 1)
    assert res.image == (0, 1) and res.gaps == (-1, 0, 1)


# ------------------------------------------------------------- Condition 1
def condition1_brute(codes: tuple[int, ...], s: int) -> bool:
    """Condition 1 as stated: alpha, beta in {-1, 1}, z != min Q with [rho] = max exactly for x >= z."""
    kmax = (len(codes) - 1) // 2
    for alpha, beta, z in itertools.product((1, -1), (1, -1), range(-kmax + 1, kmax + 1)):
        rho = {k: alpha * codes[beta * k + kmax] for k in range(-kmax, kmax + 1)}
        top = max(rho.values())
        if all((rho[k] == top) == (k >= z) for k in rho):
            return True
    return False


@pytest.mark.parametrize("kmax", [1, 3])
def test_condition1_against_its_definition(kmax):
    for codes in itertools.product(range(-1, 2), repeat=2 * kmax + 1):
        found = condition1(codes, 2)
        assert (found is not None) == condition1_brute(codes, 2)
        if found is not None:  # the witness itself satisfies the definition
            rho = [found.alpha * codes[found.beta * k + kmax] for k in range(-kmax, kmax + 1)]
            zc = int(found.z * 2)
            ks = range(-kmax, kmax + 1)
            assert zc > -kmax and all((r == max(rho)) == (k >= zc) for k, r in zip(ks, rho, strict=True))


# --------------------------------------------------- the lattice reduction
def bounded_sums(weights: list[Fraction], xs: list[Fraction], n: int) -> set[Fraction]:
    """All sums sum_{i <= n} w_i x_i, by brute-force enumeration."""
    terms = {w * x for w in weights for x in xs}
    sums, frontier = {Fraction(0)}, {Fraction(0)}
    for _ in range(n):
        frontier = {a + t for a in frontier for t in terms} - sums
        sums |= frontier
    return sums


CASES = [("ReLU", 1, 1), ("ReLU", 2, 3), ("Sigmoid", 2, 2), ("Tanh", 2, 1), ("5s*Hardtanh", 2, 1),
         ("5s*Hardtanh", 3, 1), ("GELU", 2, 3), ("SoftPlus", 2, 2), ("Identity", 2, 2)]  # fmt: skip


@pytest.mark.parametrize(("name", "p", "s"), CASES)
@pytest.mark.parametrize("binary", [False, True])
def test_lattice_reduction_against_bounded_sums(name, p, s, binary):
    """Step 1: bounded sums lie on the lattice and fill it; steps 2-3: the rounded sets per b, the
    existence of a universal b, and N_b = S_b for every b agree with the brute-force sets."""
    res = representability(name, p, s, binary)
    fmt, step, qmax = q_format(p, s), Fraction(1, s), Fraction(2**p - 1, s)
    weights = [Fraction(-1), Fraction(1)] if binary else [k * step for k in fmt.levels()]
    period = math.lcm(res.sufficient.period, res.necessary.period)
    betas = range(-period - 1, period + 2)  # one period and then some: the sets repeat
    window = qmax + (period + 2) * step  # |z| that can round, with these b, to an interior value
    brute = {}
    for lat, xs in ((res.sufficient, res.gaps), (res.necessary, res.image)):
        biggest = max(abs(w * x) for w in weights for x in xs)
        sums = bounded_sums(weights, list(xs), math.ceil(window / biggest) + 2 if biggest else 1)
        if lat.m == 0:
            assert sums == {0}
        else:
            assert all((z / lat.step).denominator == 1 for z in sums)
            reach = math.floor(window / lat.step)
            assert {k * lat.step for k in range(-reach, reach + 1)} <= sums
        sets = {beta: {fmt.quantize_exact(beta * step + z, step) for z in sums} for beta in betas}
        for beta in betas:
            assert {j * step for j in sets[beta]} == lat.image(beta * step)
        full = {beta for beta in betas if len(sets[beta]) == len(fmt.levels())}
        offset = lat.universal_offset()
        assert (offset is None) == (not full)
        if offset is not None:
            assert offset * s in full and all(abs(beta) >= abs(offset * s) for beta in full)
        brute[lat is res.sufficient] = sets
    same = all(brute[True][beta] == brute[False][beta] for beta in betas)
    assert res.necessary.same_images(res.sufficient) == same


@given(st.integers(0, 30), st.integers(1, 3), st.integers(1, 9))
def test_rounded_lattice_against_direct_rounding(m, p, s):
    """Every image, the universal offset and its minimality, for lattices beyond the paper's cases."""
    lat, fmt, step = RoundedLattice(m, p, s), q_format(p, s), Fraction(1, s)
    betas = range(-lat.period - 1, lat.period + 2)
    reach = (2**p + lat.period + 2) * s // m + 2 if m else 0
    full = set()
    for beta in betas:
        brute = {
            fmt.quantize_exact(beta * step + k * lat.step, step) * step for k in range(-reach, reach + 1)
        }
        assert brute == lat.image(beta * step) == {-v for v in lat.image(-beta * step)}
        if len(brute) == len(fmt.levels()):
            full.add(beta)
    expected = min(abs(b) for b in full) * step if full else None
    assert lat.universal_offset() == expected


@given(st.integers(0, 12), st.integers(1, 3), st.integers(1, 6), st.integers(-40, 40), st.integers(-7, 7))
def test_offset_to_is_the_smallest_preimage(m, p, s, beta, j):
    lat, kmax = RoundedLattice(m, p, s), 2**p - 1
    j = max(-kmax, min(kmax, j))
    fmt, step = q_format(p, s), Fraction(1, s)
    gamma = lat.offset_to(beta * step, j * step)
    reach = (kmax + abs(beta) + 2) * s // m + 2 if m else 0
    hits = [
        k * lat.step
        for k in range(-reach, reach + 1)
        if fmt.quantize_exact(beta * step + k * lat.step, step) == j
    ]
    if not hits:
        assert gamma is None
    else:
        assert gamma is not None and fmt.quantize_exact(beta * step + gamma, step) == j
        assert abs(gamma) == min(abs(h) for h in hits)


# ------------------------------------------------------------ paper claims
def universal_for_every_b(res) -> bool:
    return res.verdict == UNIVERSAL and all(res.sufficient.is_full(k) for k in range(res.sufficient.period))


def lemma8_cases(ps_all, ps_sampled):
    cases = [(p, s) for p in ps_all for s in range(1, 2**p)]
    return cases + [(p, s) for p in ps_sampled for s in (1, 2, 3, 7, 2 ** (p - 1), 2**p - 1)]


@pytest.mark.parametrize("name", ["ReLU", "ELU"])
def test_lemma8_relu_elu_every_p_s(name):
    for p, s in lemma8_cases(range(1, 7), (7, 8)):
        assert universal_for_every_b(representability(name, p, s)), (p, s)


@pytest.mark.parametrize("name", ["SiLU", "Mish", "GELU", "Sigmoid"])
def test_lemma8_smooth_activations_p_at_least_3(name):
    for p, s in lemma8_cases(range(3, 7), (7, 8)):
        assert universal_for_every_b(representability(name, p, s)), (p, s)


def test_lemma8_softplus():
    cases = [(3, s) for s in range(1, 6)] + lemma8_cases(range(4, 7), (7, 8))
    for p, s in cases:
        assert universal_for_every_b(representability("SoftPlus", p, s)), (p, s)


def test_lemma16_binary_weights_for_the_same_activations():
    for name in ["ReLU", "ELU", "SiLU", "Mish", "GELU", "Sigmoid", "SoftPlus"]:
        for p, s in [(4, 1), (4, 6), (4, 15), (5, 9)]:
            assert representability(name, p, s, binary_weights=True).verdict == UNIVERSAL


def test_corollary3_5s_hardtanh_never_universal():
    """p >= 2 and 5s in Q_{p,s} (5 s^2 <= 2^p - 1): N_b != Q_{p,s} for every b."""
    cases = [(p, s) for p in range(2, 9) for s in range(1, 2**p) if 5 * s * s <= 2**p - 1]
    assert len(cases) == 19
    for p, s in cases:
        for binary in (False, True):
            res = representability("5s*Hardtanh", p, s, binary)
            assert res.verdict == NOT_UNIVERSAL and res.necessary.universal_offset() is None, (p, s)
            assert res.image == tuple(Fraction(5 * k) for k in range(s + 1))


def test_corollary13_5_hardtanh_binary():
    for p, s in [(3, 1), (4, 1), (4, 3), (5, 6), (6, 12)]:
        res = representability(scaled_hardtanh(5), p, s, binary_weights=True)
        assert res.verdict == NOT_UNIVERSAL and res.tight


def test_identity_universal_with_b_zero():
    """Sec. 3.2.3: S_{sigma,p,s,0} = Q_{p,s} for the identity, for all p, s."""
    for p in range(1, 9):
        for s in {1, 2 ** (p - 1), 2**p - 1, min(3, 2**p - 1)}:
            for binary in (False, True):
                res = representability("Identity", p, s, binary)
                assert res.verdict == UNIVERSAL and res.witness_b == 0 and res.tight


def test_paper_hardtanh_is_clip_to_0_1():
    res = representability("Hardtanh", 3, 4)
    assert res.image == tuple(Fraction(k, 4) for k in range(5))
    assert representability(torch.nn.Hardtanh(0.0, 1.0), 3, 4).image == res.image
    assert representability(torch.nn.Hardtanh(), 3, 4).image[0] == -1  # torch's Hardtanh differs


# --------------------------------------------------- verdicts and tightness
def test_undetermined_when_condition1_fails():
    """|x|: the maximum sits at both ends, so Condition 1 fails, yet N_b = Q_{p,s} (Theorem 1 holds)."""
    res = representability(A.leaky_relu(-1.0), 2, 1)
    assert res.condition1 is None and res.verdict == UNDETERMINED and not res.tight
    assert res.necessary.universal_offset() is not None and "Condition 1 fails" in res.reason


def test_undetermined_when_s_and_n_differ():
    """[sigma](Q) = {3, 5}: N° = Z but S° = 2Z, so neither theorem decides (Corollary 9 fails)."""
    act = A.Activation(
        "three_plus_2_clip",
        rational=lambda x: 3 + 2 * min(max(x, Fraction(0)), Fraction(1)),
        f64=lambda x: 3 + 2 * torch.clamp(x, 0, 1),
        lipschitz=2.0,
        piecewise_linear=True,
    )
    res = representability(act, 3, 1)
    assert res.image == (3, 5) and res.sufficient.step == 2 and res.necessary.step == 1
    assert res.condition1 is not None and res.verdict == UNDETERMINED and not res.tight and not res.lemma10


def test_inadmissible_s():
    """s > 2^p - 1: Theorem 6 does not apply; Theorem 1 still can."""
    relu = representability("ReLU", 2, 5)
    assert not relu.admissible and relu.verdict == UNDETERMINED and "s > 2^p - 1" in relu.reason
    flat = representability("5s*Hardtanh", 2, 4, binary_weights=True)  # image {0, 3/4}: BN° = (3/4)Z
    assert flat.verdict == NOT_UNIVERSAL and flat.necessary.step == Fraction(3, 4)


@pytest.mark.parametrize("binary", [False, True])
def test_tight_verdicts_are_decided_and_lemma10_implies_equal_sets(binary):
    for name in PAPER_ACTIVATIONS:
        for p, s in [(2, 1), (2, 2), (3, 1), (3, 3), (3, 6), (4, 2), (4, 9)]:
            res = representability(name, p, s, binary)
            if res.tight:
                assert res.verdict != UNDETERMINED
            if res.lemma10:  # Lemmas 10 and 18
                assert res.necessary.same_images(res.sufficient)
            if res.verdict == UNIVERSAL:  # the witness is re-checked on the set itself
                assert res.sufficient.image(res.witness_b) == {
                    Fraction(k, s) for k in q_format(p, s).levels()
                }


# ------------------------------------------------------------ table, errors
def test_table_files_and_counts(tmp_path):
    rows = representability_table(["ReLU", "5s*Hardtanh"], [2, 3], out_dir=tmp_path, progress=False)
    assert len(rows) == 2 * (3 + 7) * 2
    md = (tmp_path / "representability.md").read_text()
    assert "| ReLU | 3/3 | 7/7 |" in md and "| 5s*Hardtanh | 1/3 N2 | 1/7 N6 |" in md
    assert "5s*Hardtanh, p=3: N at s = 1-6" in md
    data = json.loads((tmp_path / "representability.json").read_text())
    assert data["rows"] == rows and (tmp_path / "representability.png").stat().st_size > 0


def test_cli_prints_the_table(tmp_path, capsys):
    main(["--p", "2", "2", "--activations", "Identity", "--out", str(tmp_path), "--no-progress"])
    assert "| Identity | 3/3 |" in capsys.readouterr().out


def test_bad_input_is_named():
    with pytest.raises(QuantizationError, match="p must be a positive int"):
        representability("ReLU", 0, 1)
    with pytest.raises(QuantizationError, match="p <= 20"):
        q_format(21, 1)
    with pytest.raises(QuantizationError, match="unknown activation 'swish'"):
        representability("swish", 2, 1)
    with pytest.raises(QuantizationError, match=r"not in Q_inf,3"):
        representability("ReLU", 2, 3).sufficient.image(Fraction(1, 2))
    with pytest.raises(QuantizationError, match="not a supported activation module"):
        representability(torch.nn.Softmax(dim=0), 2, 1)
