"""A quantized model's state dict: the configuration it records and what loading one checks.

``QuantizedModel.state_dict()`` carries, as the model's extra state (``_extra_state``), the format
of every quantizer: ``{"formats": {path: FixedPoint.to_dict()}}`` as UTF-8 JSON in a uint8 tensor,
so that every value of the state dict stays a tensor (moved, broadcast and compared as usual).
``load_state_dict`` checks the incoming entries against the model before anything is copied, so a
failed load leaves the model as it was:

* the formats are the model's own (a dict saved from an 8-bit model does not load into a 2-bit
  one, nor one from a weight-only model into a model that quantizes activations);
* every step is a positive exact ratio ``step_num / step_den`` of integers (``0 / 0``: not
  calibrated yet), the format's own step where the format fixes it; zero points lie in the code
  range (and equal the format's unless it is affine);
* frozen integer weights lie on their format's grid, integer biases are integers; float
  parameters and learned steps are finite.

Each violation raises :class:`~torchqv.formats.QuantizationError` naming the entry and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .fake_quant import FakeQuantize
from .formats import FixedPoint, QuantizationError

FIX = "quantize the float model with the QConfig (and overrides) the state dict was saved with"
SHOWN = 5  # differences listed in one message


def formats(model: nn.Module) -> dict[str, Any]:
    """The format of every quantizer of ``model``, by module path (plain dicts)."""
    return {name: q.fmt.to_dict() for name, q in _quantizers(model)}


def formats_record(model: nn.Module) -> torch.Tensor:
    """The extra state of a quantized model (see the module docstring)."""
    text = json.dumps({"formats": formats(model)}, sort_keys=True)
    return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8).clone()


def _read_record(record: Any, key: str) -> Mapping[str, Any]:
    try:
        saved = json.loads(record.cpu().numpy().tobytes().decode())["formats"]
        if isinstance(saved, Mapping):
            return saved
    except (AttributeError, TypeError, ValueError, KeyError, UnicodeDecodeError):
        pass
    raise CheckpointError(
        f"load_state_dict: {key} is not a torchqv format record; the state dict does not come from a "
        "torchqv QuantizedModel (or is corrupt)"
    )


def check_state_dict(model: nn.Module, state: Mapping[str, Any], prefix: str) -> None:
    """Raise if the entries of ``state`` under ``prefix`` do not fit ``model``'s configuration."""
    record = state.get(prefix + "_extra_state")
    if record is not None:
        _check_formats(model, record, prefix)
    for name, q in _quantizers(model):
        _check_steps(q, state, f"{prefix}{name}.")
    for name, m in model.named_modules():
        where = f"{prefix}{name}." if name else prefix
        weight_quant = getattr(m, "weight_quant", None)
        if isinstance(weight_quant, FakeQuantize):
            _check_codes(weight_quant.fmt, state.get(where + "weight_int"), where + "weight_int")
            _integer_tensor(state.get(where + "bias_int"), where + "bias_int")
        for pname, _ in m.named_parameters(recurse=False):
            value = state.get(where + pname)
            if (
                isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and not bool(value.isfinite().all())
            ):
                raise CheckpointError(
                    f"load_state_dict: {where + pname} contains NaN or inf; the state dict is corrupt "
                    "(save it again from a model that trained without diverging)"
                )


def _quantizers(model: nn.Module) -> Iterator[tuple[str, FakeQuantize]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantize))


def _check_formats(model: nn.Module, record: Any, prefix: str) -> None:
    saved = _read_record(record, prefix + "_extra_state")
    own = formats(model)
    diffs = []
    for name in sorted(set(saved) | set(own)):
        if saved.get(name) == own.get(name):
            continue
        diffs.append(
            f"{prefix}{name}: saved {_describe(saved.get(name))}, this model {_describe(own.get(name))}"
        )
    if diffs:
        more = f" (and {len(diffs) - SHOWN} more)" if len(diffs) > SHOWN else ""
        raise CheckpointError(
            "load_state_dict: the state dict comes from another quantization configuration: "
            + "; ".join(diffs[:SHOWN])
            + more
            + f"; {FIX}"
        )


def _describe(fmt: Any) -> str:
    if fmt is None:
        return "no quantizer (real values)"
    try:
        return FixedPoint.from_dict(dict(fmt)).describe()
    except (QuantizationError, TypeError, ValueError):
        return repr(fmt)


def _integer_tensor(value: Any, key: str) -> torch.Tensor | None:
    """``value`` if it is an integer tensor (``None`` if absent); anything else is an error."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.is_complex():
        kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(
            f"load_state_dict: {key} must be an integer tensor, got {kind}; the state dict is corrupt or "
            "not from torchqv"
        )
    return value


def _check_steps(q: FakeQuantize, state: Mapping[str, Any], where: str) -> None:
    nums = _integer_tensor(state.get(where + "step_num"), where + "step_num")
    dens = _integer_tensor(state.get(where + "step_den"), where + "step_den")
    if nums is not None and dens is not None and nums.shape == dens.shape:
        fixed = q.fmt.fixed_steps()
        for c, (n, d) in enumerate(zip(nums.flatten().tolist(), dens.flatten().tolist(), strict=True)):
            if n == 0 and d == 0 and fixed is None:
                continue  # not calibrated yet
            if n <= 0 or d <= 0:
                raise CheckpointError(
                    f"load_state_dict: {where}step_num/step_den holds the step {n}/{d} (channel {c}); steps "
                    "are positive (0/0 marks one not calibrated yet): the state dict is corrupt"
                )
            want = fixed[c if len(fixed) > 1 else 0] if fixed is not None else None
            if want is not None and Fraction(n, d) != want:
                raise CheckpointError(
                    f"load_state_dict: {where}step_num/step_den holds the step {Fraction(n, d)} (channel "
                    f"{c}) but the format {q.fmt.describe()} fixes it to {want}; {FIX}"
                )
    zero_point = _integer_tensor(state.get(where + "zero_point"), where + "zero_point")
    for z in zero_point.flatten().tolist() if zero_point is not None else []:
        if not q.fmt.qmin <= z <= q.fmt.qmax or (not q.fmt.affine and z != q.fmt.zero_point):
            allowed = f"in [{q.fmt.qmin}, {q.fmt.qmax}]" if q.fmt.affine else f"{q.fmt.zero_point}"
            raise CheckpointError(
                f"load_state_dict: {where}zero_point is {z}, but {q.fmt.describe()} needs {allowed}; {FIX}"
            )
    learned = state.get(where + "step_param")
    if isinstance(learned, torch.Tensor) and not bool(((learned > 0) & learned.isfinite()).all()):
        raise CheckpointError(
            f"load_state_dict: {where}step_param holds a non-positive or non-finite learned step; the state "
            "dict is corrupt (lower the learning rate of the run that saved it)"
        )


def _check_codes(fmt: FixedPoint, value: Any, key: str) -> None:
    codes = _integer_tensor(value, key)
    if codes is None or codes.numel() == 0:
        return
    lo, hi = int(codes.min()), int(codes.max())
    zero = fmt.binary and bool((codes == 0).any())
    if lo < fmt.qmin or hi > fmt.qmax or zero:
        levels = "{-1, +1}" if fmt.binary else f"[{fmt.qmin}, {fmt.qmax}]"
        among = " (0 among them)" if zero else ""
        raise CheckpointError(
            f"load_state_dict: {key} holds integer weights from {lo} to {hi}{among}, off the grid {levels} "
            f"of {fmt.describe()}: the state dict is corrupt or from another configuration ({FIX})"
        )
