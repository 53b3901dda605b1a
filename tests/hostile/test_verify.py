"""Hostile input to verify_equivalence (issue 17, items 1, 7, 8): empty regions and frozen models are
clear errors, the models' modes are as they were after any call, and Ctrl-C says so."""

from __future__ import annotations

import _thread
import threading
import time

import pytest
import torch
from torch import nn

import torchqv as tq


def networks() -> tuple[nn.Module, tq.QuantizedModel, torch.Tensor]:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.rand(64, 8)
    cfg = tq.QConfig(
        weight=tq.FixedPoint(bits=3),
        activation=tq.FixedPoint(bits=4),
        input=tq.FixedPoint(bits=8, signed=False),
    )
    fq = tq.quantize(f, cfg)
    tq.calibrate(fq, [x], progress=False)
    return f, fq, x


def test_a_frozen_model_is_a_clear_error():
    """It used to fail with ''QuantLinear' object has no attribute 'weight''."""
    f, fq, x = networks()
    tq.freeze(fq)
    with pytest.raises(
        tq.QuantizationError,
        match=r"verify_equivalence\(fq\): the model is frozen .*layer\(s\) 0, 2, 4.*before tq.freeze",
    ):
        tq.verify_equivalence(f, fq, x[:1], delta=0.05, domain=(0.0, 1.0), timeout=5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"f": "f"}, r"f must be an nn.Module, got str"),
        ({"fq": None}, r"fq must be an nn.Module, got NoneType"),
        ({"samples": -1}, r"samples must be an int >= 0"),
        ({"timeout": "5"}, r"timeout must be > 0 seconds, got '5'"),
        ({"relation": "same"}, r"relation must be one of"),
        ({"relation": "eps"}, r"relation='eps' needs eps > 0"),
        ({"delta": -0.1}, r"VerifyConfig.delta must be a finite number >= 0"),
        ({"domain": (1.0, 0.0)}, r"domain=\(1.0, 0.0\) is empty: lo > hi.*lo <= hi"),
        (
            {"delta": 1e-6},
            r"hold\(s\) no grid point of f''s input format.*such a region is empty; increase delta",
        ),
    ],
)
def test_bad_arguments_name_the_argument_and_keep_the_modes(change, message):
    f, fq, x = networks()
    f.train()
    fq.train()
    args = {
        "f": f,
        "fq": fq,
        "points": x[:1] + 1e-3,
        "delta": 0.05,
        "domain": (0.0, 1.0),
        "timeout": 5,
    } | change
    with pytest.raises(tq.QuantizationError, match=message):
        tq.verify_equivalence(**args)
    assert f.training and fq.training


def test_the_modes_are_kept_after_a_verdict():
    f, fq, x = networks()
    f.train()
    fq.train()
    (result,) = tq.verify_equivalence(f, fq, x[:1], delta=0.01, domain=(0.0, 1.0), timeout=30)
    assert result.verdict in ("EQUIVALENT", "NOT_EQUIVALENT", "UNKNOWN")
    assert f.training and fq.training and all(m.training for m in fq.modules())


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="Ctrl-C reaches the main thread"
)
def test_ctrl_c_keeps_the_modes_and_says_so():
    """A region this network cannot decide in 20 s; a real interrupt of the main thread after 1 s.
    An interrupt that lands while Python runs a finalizer (z3's ``AstRef.__del__``) is lost, as in
    any Python program ("Exception ignored in ..."): like a user, the test presses Ctrl-C again
    each second until the call stops."""
    f, fq, x = networks()
    f.train()
    fq.train()
    stop = threading.Event()

    def press() -> None:
        while not stop.wait(1.0):
            _thread.interrupt_main()

    presser = threading.Thread(target=press)
    verify = tq.verify_equivalence  # imports the engine (z3) before the first Ctrl-C
    start = time.perf_counter()
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            verify(f, fq, x[:1], delta=0.2, domain=(0.0, 1.0), timeout=20, use_bounds=False)
    finally:
        stop.set()
        presser.join()
    assert time.perf_counter() - start < 20  # interrupted, not finished
    assert fq.training and f.training
    assert info.value.__notes__ == [
        "verify_equivalence stopped (KeyboardInterrupt): the model is unchanged (its modes were restored)"
    ]
