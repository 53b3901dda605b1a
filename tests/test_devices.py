"""Every executor on the device of the model and its input.

CI has no GPU: these tests run wherever CUDA is present and are skipped with that reason otherwise.
On CUDA the exact simulation must give the same codes as on the CPU and as the integer reference
(which always runs on the host), and a QAT step must run with every tensor on the device."""

from __future__ import annotations

import pytest
import torch

import torchqv as tq

from .test_networks import W8, network

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")
NETS = ["resnet20", "depthwise_cnn", "conv1d", "layernorm_mlp"]


@CUDA
@pytest.mark.parametrize("name", NETS)
def test_exact_eval_on_cuda_is_the_cpu_simulation(name):
    model, shape = network(name)
    qm = tq.quantize(model, W8)
    tq.calibrate(qm, [torch.randn(4, *shape)], progress=False)
    x = torch.randn(3, *shape)
    on_cpu = qm.eval()(x)
    qm.to("cuda")
    on_gpu = qm(x.cuda())
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)
    assert torch.equal(on_gpu.cpu(), tq.reference_forward(qm.cpu(), x))


@CUDA
@pytest.mark.parametrize("name", NETS)
def test_qat_step_and_calibration_on_cuda(name):
    model, shape = network(name)
    qm = tq.quantize(model.cuda(), W8)
    tq.calibrate(qm, [torch.randn(4, *shape, device="cuda")], progress=False)
    qm.train()
    opt = torch.optim.SGD(qm.parameters(), lr=1e-3)
    loss = qm(torch.randn(4, *shape, device="cuda")).float().pow(2).mean()
    loss.backward()
    opt.step()
    assert loss.device.type == "cuda" and torch.isfinite(loss)
    x = torch.randn(2, *shape)
    assert torch.equal(qm.eval()(x.cuda()).cpu(), tq.reference_forward(qm.cpu(), x))
