"""Progress bars only where work is long and stderr is a terminal, or when asked (issue 16 g)."""

import pytest
import torch
from torch import nn

import torchqv as tq
import torchqv.progress as P


def _model() -> nn.Module:
    torch.manual_seed(0)
    config = tq.QConfig(activation=tq.FixedPoint(bits=8))
    return tq.quantize(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), config)


@pytest.mark.parametrize("batches", [1, 3, 20])
def test_calibrate_prints_no_bar_when_stderr_is_captured(capsys, batches):
    tq.calibrate(_model(), [torch.rand(8, 4) for _ in range(batches)])
    tq.calibrate(_model(), (torch.rand(8, 4) for _ in range(batches)))  # unknown length
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""  # used to print "calibrate: 1it ..." for every call


def test_calibrate_bar_when_asked_or_long_on_a_terminal(capsys, monkeypatch):
    tq.calibrate(_model(), [torch.rand(8, 4)], progress=True)
    assert "calibrate" in capsys.readouterr().err
    monkeypatch.setattr(P, "on_terminal", lambda: True)
    tq.calibrate(_model(), [torch.rand(8, 4)] * P.FEW)  # a few batches: no bar
    assert capsys.readouterr().err == ""
    tq.calibrate(_model(), [torch.rand(8, 4)] * (P.FEW + 1))
    assert "calibrate" in capsys.readouterr().err
    tq.calibrate(_model(), [torch.rand(8, 4)] * 20, progress=False)
    assert capsys.readouterr().err == ""


def test_show_progress_rules(monkeypatch):
    monkeypatch.setattr(P, "on_terminal", lambda: False)
    assert not P.show_progress(None, 100) and not P.show_progress(None)
    assert P.show_progress(True, 1) and not P.show_progress(False, 100)
    monkeypatch.setattr(P, "on_terminal", lambda: True)
    assert P.show_progress(None, 100) and P.show_progress(None) and not P.show_progress(None, 2)
