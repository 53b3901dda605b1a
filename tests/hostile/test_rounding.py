"""Hostile input to round_weights (issue 17, items 6, 7, 8): options are checked before any work,
the time limit holds within its stated slack and says how many neurons it left at nearest
rounding, and the call is atomic (an error or Ctrl-C leaves the weights as they were, and says so)."""

from __future__ import annotations

import _thread
import itertools
import math
import threading
import time

import pytest
import torch
from torch import nn

import torchqv as tq

# the limit is checked between solver steps; the overrun is at most one step, one pass of the
# calibration batches and one layer's Gram matrices: well under this on these tiny layers
SLACK_S = 5.0


def model(*widths: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def calibrated(*widths: int) -> tuple[tq.QuantizedModel, torch.Tensor]:
    qm = tq.quantize(
        model(*widths), tq.QConfig(weight=tq.FixedPoint(bits=2), activation=tq.FixedPoint(bits=8))
    )
    x = torch.randn(256, widths[0])
    tq.calibrate(qm, [x], progress=False)
    return qm, x


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"replicas": 0}, r"replicas must be an int >= 1, got 0"),
        ({"sweeps": -1}, r"sweeps must be an int >= 0, got -1"),
        ({"num_sweeps": 0}, r"num_sweeps must be an int >= 1, got 0"),
        ({"num_reads": 2.5}, r"num_reads must be an int >= 1, got 2.5"),
        ({"seed": "a"}, r"seed must be an int, got 'a'"),
        ({"bound": "yes"}, r"bound must be True or False, got 'yes'"),
        ({"time_limit": 0}, r"time_limit must be a positive number of seconds or None, got 0"),
        ({"time_limit": math.nan}, r"time_limit must be a positive number of seconds or None, got nan"),
        ({"time_limit": True}, r"time_limit must be a positive number of seconds or None, got True"),
        ({"solver": "gurobi"}, r"solver must be one of"),
        ({"target": "int"}, r"target must be one of"),
        ({"method": "adaround"}, r"RoundingConfig.method must be one of \('qubo', 'nearest'\), got 'ada"),
    ],
)
def test_options_are_checked_before_any_work(options, message):
    """``replicas=0`` used to fail inside the annealer with 'argmin of an empty sequence'."""
    qm, x = calibrated(4, 3)
    with pytest.raises(tq.QuantizationError, match=message):
        tq.round_weights(qm, [x], progress=False, **options)


def test_bad_calibration_data():
    qm, _ = calibrated(4, 3)
    with pytest.raises(tq.QuantizationError, match=r"batches must be an iterable of batches"):
        tq.round_weights(qm, None, progress=False)
    with pytest.raises(tq.QuantizationError, match=r"round_weights needs calibration data"):
        tq.round_weights(qm, [], progress=False)
    with pytest.raises(
        tq.QuantizationError, match=r"round_weights expects a model returned by torchqv.quantize"
    ):
        tq.round_weights(model(4, 3), [torch.randn(2, 4)], progress=False)


def test_the_exact_solver_names_the_fix_and_leaves_the_model_unchanged():
    """The first layer (4 inputs) is rounded exactly, then the second (30 free variables) is refused:
    the first layer's new weights are taken back."""
    qm, x = calibrated(4, 30, 3)
    before = [p.clone() for p in qm.parameters()]
    with pytest.raises(
        tq.QuantizationError,
        match=r"neuron 0 has \d+ free variables, more than EXACT_MAX = 24.*solver='auto' or 'neal'",
    ) as info:
        tq.round_weights(qm, [x], solver="exact", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, qm.parameters(), strict=True))
    assert "round_weights stopped (QuantizationError): the model is unchanged" in "\n".join(
        getattr(info.value, "__notes__", [])
    )


@pytest.mark.parametrize(
    ("solver", "options"), [("auto", {"sweeps": 10**6}), ("neal", {"num_sweeps": 10**5})]
)
def test_the_time_limit_holds_and_the_report_says_what_it_left(solver, options):
    qm, x = calibrated(64, 64, 64, 3)
    limit = 0.5
    start = time.perf_counter()
    report = tq.round_weights(qm, [x], solver=solver, time_limit=limit, progress=False, **options)
    assert time.perf_counter() - start < limit + SLACK_S
    assert report.time_limit == limit and report.time_limited > 0
    assert report.time_limited == sum(r.time_limited for r in report.layers)
    assert report.layers[-1].solver == "nearest: time limit" and report.layers[-1].time_limited == 3
    assert f"kept nearest rounding: the time limit of {limit:g} s was spent" in report.table()
    x_test = torch.randn(16, 64)
    assert torch.equal(qm.eval()(x_test), tq.reference_forward(qm, x_test))  # still exact, on the grid
    for layer in report.layers:  # every layer is at least as good as nearest rounding
        assert math.isnan(layer.objective) or layer.objective <= layer.nearest + 1e-9


def test_without_a_time_limit_nothing_is_left():
    qm, x = calibrated(8, 6, 3)
    report = tq.round_weights(qm, [x], progress=False)
    assert report.time_limit is None and report.time_limited == 0


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="Ctrl-C reaches the main thread"
)
def test_ctrl_c_leaves_the_weights_as_they_were_and_says_so():
    """A real interrupt of the main thread (as Ctrl-C) once the first layer has been rewritten (by
    enumeration: 9 variables per neuron) and the second one is being annealed."""
    qm, x = calibrated(8, 64, 64)
    before = [p.clone() for p in qm.parameters()]
    first = qm[0].weight
    version = first._version

    def interrupt_after_first_layer() -> None:
        while first._version == version:
            time.sleep(0.001)
        _thread.interrupt_main()

    watcher = threading.Thread(target=interrupt_after_first_layer, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt) as info:
        tq.round_weights(qm, [x], sweeps=10**6, time_limit=300, progress=False)
    watcher.join()
    assert first._version != version  # the first layer had been written when Ctrl-C came
    assert all(torch.equal(a, b) for a, b in zip(before, qm.parameters(), strict=True))
    assert qm.training  # the mode is restored too
    (note,) = info.value.__notes__
    assert note == (
        "round_weights stopped (KeyboardInterrupt): the model is unchanged (its weights and modes were "
        "restored)"
    )
