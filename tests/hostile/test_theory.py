"""Hostile input to the theory entry points (issue 17, item 6): train_exact's timeout covers building
the formula (d=1000 took 38 s with timeout=2, d=10**6 never returned), build_representing_network
refuses sizes it cannot build before enumerating them."""

from __future__ import annotations

import random
import time
from fractions import Fraction

import pytest

import torchqv as tq
from torchqv.theory import Architecture, Status, representability, train_exact
from torchqv.theory.construction import MAX_INPUTS, build_representing_network

XOR = [((0, 0), (0,)), ((0, 1), (1,)), ((1, 0), (1,)), ((1, 1), (0,))]
ARCH = Architecture.fully_connected([2, 2, 1])
# the clock is read between z3 calls while the formula is built, and a watchdog interrupts the
# search: the overrun is one z3 call plus the watchdog's reaction
SLACK_S = 3.0


@pytest.mark.parametrize(
    ("d", "encoding", "minimize"),
    [
        (1000, "pb", False),
        (1000, "pb", True),
        (10**6, "pb", False),
        (10**6, "int", False),
        (1000, "int", True),
    ],
)
def test_the_timeout_covers_building_the_formula(d, encoding, minimize):
    timeout = 2.0
    start = time.perf_counter()
    r = train_exact(
        ARCH, XOR, d, None if minimize else 0, minimize=minimize, timeout=timeout, encoding=encoding
    )
    assert time.perf_counter() - start < timeout + SLACK_S
    assert r.status == Status.UNKNOWN and r.stats["reason"].startswith(f"timeout after {timeout} s")
    assert r.stats["seconds"] < timeout + SLACK_S


def test_small_problems_are_still_solved():
    assert train_exact(ARCH, XOR, 3, max_error=0, timeout=30).status == Status.FOUND
    assert train_exact(ARCH, XOR, 2, max_error=0, timeout=30).status == Status.INFEASIBLE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d": 0}, r"d must be an integer >= 1"),
        ({"d": 2.5}, r"d must be an integer >= 1"),
        ({"timeout": -1}, r"timeout must be a positive number of seconds, got -1"),
        ({"timeout": "2"}, r"timeout must be a positive number of seconds, got '2'"),
        ({"encoding": "sat"}, r"encoding must be one of \('pb', 'bv', 'int'\), got 'sat'"),
        ({"max_error": -1}, r"max_error must be >= 0"),
        ({"data": [((0, 5), (0,))]}, r"data point 0 input 1 is 5, outside Z_3"),
    ],
)
def test_bad_training_problems(kwargs, message):
    args = {"architecture": ARCH, "data": XOR, "d": 3, "max_error": 0} | kwargs
    with pytest.raises(tq.QuantizationError, match=message):
        train_exact(**args)


def test_the_construction_refuses_too_many_inputs_before_enumerating_them():
    """Q_{3,1}^6 has 15^6 = 11390625 inputs; d=6 used to hang."""
    calls = []

    def f(x):
        calls.append(x)
        return Fraction(0)

    with pytest.raises(
        tq.QuantizationError,
        match=rf"Q_3,1\^6 has 11390625 inputs, more than MAX_INPUTS = {MAX_INPUTS}.*smaller p or d",
    ):
        build_representing_network("relu", 3, 1, f, d=6)
    assert not calls


def test_the_construction_refuses_a_network_too_large_before_building_it():
    rng = random.Random(0)
    with pytest.raises(
        tq.QuantizationError,
        match=r"layer widths \[6, \d+, \d+, \d+, 1\]: \d+ dense weights, more than MAX_DENSE_PARAMETERS",
    ):
        build_representing_network("relu", 1, 1, lambda x: Fraction(rng.randint(-1, 1)), d=6)


def test_the_construction_still_builds_what_fits():
    qm = build_representing_network("relu", 1, 1, lambda x: Fraction(1), d=6)  # constant: one layer
    assert len(qm) == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: build_representing_network("relu", 2, 1, lambda x: Fraction(0), d=0),
            r"input dimension d, an int >= 1, got d=0",
        ),
        (
            lambda: build_representing_network("softmax", 2, 1, lambda x: Fraction(0), d=1),
            r"activation must be a torch activation module or one of",
        ),
        (lambda: build_representing_network("relu", 2, 1, lambda x: Fraction(1, 3), d=1), r"is not in Q_2,1"),
        (lambda: representability("ReLU", 0, 1), r"p must be a positive int, got 0"),
        (lambda: representability("ReLU", 2, 1.5), r"s must be a positive int, got 1.5"),
        (lambda: representability("ReLU", 40, 1), r"use p <= 20"),
    ],
)
def test_bad_theory_arguments(call, message):
    with pytest.raises(tq.QuantizationError, match=message):
        call()
