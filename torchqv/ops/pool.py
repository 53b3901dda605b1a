"""Pooling and reductions: max pooling keeps the grid; averages and sums are rounded once.

* ``MaxPool1d/2d`` (any padding, dilation, ``ceil_mode``): the maximum of values on one grid is
  a value of that grid (codes are monotone in the value), so the output stays on the input's
  grid, exactly, with no rounding;
* ``AvgPool1d/2d``, ``AdaptiveAvgPool1d/2d`` (any output size), ``mean`` and ``sum`` over
  dimensions (global pooling): the exact average ``t = (sum of codes) * s_in / (n * s_out)`` with
  ``n`` the window's divisor (torch's rule: padding counted or not, ``divisor_override``) is
  rounded once to the node's output format.  Sums of codes are exact integers (float64 below
  ``2^53``, int64 cumulative sums for adaptive windows).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..fake_quant import FakeQuantize
from ..grid import QTensor, requantize_quotient
from ..rational import RTensor, as_ints, pool_windows, round_fractions, round_ratio, saturate
from .base import Call, Kind, NodeIO, OnGrid, Operation, Real, Unsupported, register


def _tuple(v: Any, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _module_or_call(call: Call, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    """The pooling parameters, from the module's attributes or from the call's arguments."""
    if call.module is not None:
        return {k: getattr(call.module, k, defaults.get(k)) for k in names}
    return {k: call.arg(i + 1, k, defaults.get(k)) for i, k in enumerate(names)}


def _dims_of(call: Call, one: tuple) -> int:
    target = type(call.module) if call.module is not None else call.target
    return 1 if target in one else 2


def _out_quant(cfg: Any, name: str) -> FakeQuantize | None:
    if cfg.activation is None:
        return None
    return FakeQuantize(cfg.activation, 1, 0, cfg.activation_observer, cfg.learn_step, f"{name}.out")


def _check_grid_input(call: Call, out: FakeQuantize | None) -> None:
    if out is not None and isinstance(call.kind(call.args[0]), Real):
        src = call.args[0].node
        raise Unsupported(
            f"{call.name}: averages the real-valued (unquantized) output of {src}; give {src} an output "
            f"format (QConfig.activation), or keep {call.name} real with an override {{'{call.name}': None}}"
        )


# ---------------------------------------------------------------------------- max pooling
@register(modules=(nn.MaxPool1d, nn.MaxPool2d), functions=(F.max_pool1d, F.max_pool2d))
class MaxPool(Operation):
    """Max pooling (stateless): the output stays on the input's grid."""

    NAMES = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")

    def __init__(self, dims: int, params: dict[str, Any], name: str):
        self.qname, self.dims = name, dims
        self.kernel = _tuple(params["kernel_size"], dims)
        self.stride = _tuple(params["stride"] or params["kernel_size"], dims)
        self.padding = _tuple(params["padding"], dims)
        self.dilation = _tuple(params["dilation"], dims)
        self.ceil_mode = bool(params["ceil_mode"])

    @classmethod
    def build(cls, call: Call) -> Operation:
        defaults = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}
        params = _module_or_call(call, cls.NAMES, defaults)
        if params["return_indices"]:
            raise Unsupported(f"{call.name}: max pooling with return_indices is not supported")
        return cls(_dims_of(call, (nn.MaxPool1d, F.max_pool1d)), params, call.name)

    def out_kind(self, call: Call) -> Kind:
        return call.kind(call.args[0])  # type: ignore[return-value]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        fn = F.max_pool1d if self.dims == 1 else F.max_pool2d
        return fn(x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)

    def describe(self) -> str:
        return f"MaxPool{self.dims}d(kernel={self.kernel}, stride={self.stride}, padding={self.padding})"

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return self.pool(args[0])

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if isinstance(x, QTensor):  # float codes are exact whole numbers; the maximum is exact
            if x.codes.is_floating_point():
                return x.with_codes(self.pool(x.codes))
            return x.with_codes(self.pool(x.codes.to(torch.float64)).to(torch.int64))
        return self.pool(x)

    def _onnx(self, em: Any, x: Any, io: NodeIO) -> Any:
        attrs = {
            "kernel_shape": list(self.kernel),
            "strides": list(self.stride),
            "pads": list(self.padding) * 2,
            "dilations": list(self.dilation),
            "ceil_mode": int(self.ceil_mode),
        }
        return em.value(io, em.g.op("MaxPool", [x.name], **attrs), x.grid)

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        return self._onnx(em, args[0], io)

    onnx_qdq = onnx_integer

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        """Each output is the maximum of its window's elements (the padding is -inf: left out)."""
        x = cb.consume(args[0], self.qname)
        spatial = x.shape[len(x.shape) - self.dims :]
        per_axis = [
            [[i for i in w if 0 <= i < size] for w in pool_windows(size, k, st, p, d, self.ceil_mode)]
            for size, k, st, p, d in zip(
                spatial, self.kernel, self.stride, self.padding, self.dilation, strict=True
            )
        ]
        lead = int(np.prod(x.shape[: len(x.shape) - self.dims]))
        strides = [int(np.prod(spatial[a + 1 :])) for a in range(self.dims)]
        windows = []
        for outer in range(lead):
            for cells in itertools.product(*per_axis):
                windows.append(
                    [
                        outer * int(np.prod(spatial))
                        + sum(i * st for i, st in zip(pos, strides, strict=True))
                        for pos in itertools.product(*cells)
                    ]
                )
        shape = (*x.shape[: len(x.shape) - self.dims], *(len(w) for w in per_axis))
        return cb.maximum(x, windows, shape)

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        data = x.data
        sentinel = min(data.flat, default=0) - 1  # below every value: stands for the -inf padding
        for axis in range(self.dims):
            dim = data.ndim - self.dims + axis
            windows = pool_windows(
                data.shape[dim],
                self.kernel[axis],
                self.stride[axis],
                self.padding[axis],
                self.dilation[axis],
                self.ceil_mode,
            )
            data = _window_reduce(data, dim, windows, max, sentinel)
        return x.with_data(data)


# ---------------------------------------------------------------------------- averages
class _Average(Operation, nn.Module):
    """Shared parts of the averaging operations: the sums of codes and their divisors."""

    def __init__(self, cfg: Any, name: str):
        nn.Module.__init__(self)
        self.qname = name
        self.out_quant = _out_quant(cfg, name)

    def out_kind(self, call: Call) -> Kind:
        return OnGrid(call.name) if self.out_quant is not None else Real()

    def sums(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact sums of codes (int64) and their divisors (int64, broadcastable)."""
        raise NotImplementedError

    def average(self, x: torch.Tensor) -> torch.Tensor:
        """The float operation (training path, real values)."""
        raise NotImplementedError

    def qat(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        y = self.average(args[0])
        return self.out_quant(y) if self.out_quant is not None else y

    def exact(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if self.out_quant is None:
            return self.average(x.values() if isinstance(x, QTensor) else x.to(torch.float64))
        out = self.out_quant.grid()
        total, count = self.sums(x.codes)
        return QTensor(requantize_quotient(total, count, x.grid.step / out.step, out, self.qname), out)

    def reference_sums(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact window sums of ``values`` (an integer or Fraction array) and their divisors."""
        raise NotImplementedError

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        """Each output is ``(sum of its window) / divisor``: exact rows, rounded once (the sums
        are this operation's own ``reference_sums``, taken over linear forms of the input)."""
        x = cb.consume(args[0], self.qname)
        total, count = self.reference_sums(cb.forms(x)[None])
        out = self.out_quant.grid() if self.out_quant is not None else None
        return cb.averages(total[0], np.broadcast_to(np.asarray(count, dtype=object), total.shape)[0], out)

    # ------------------------------------------------------------ ONNX
    def pooling_matrix(self, spatial: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        """The 0/1 matrix ``A`` with ``sums = x_spatial @ A``, the divisors per output position
        and the output's spatial shape, read off :meth:`sums` on the unit vectors."""
        n = math.prod(spatial)
        if n * n > 2**26:
            raise Unsupported(f"{self.qname}: a {spatial} pooling matrix is too large for the ONNX export")
        basis = torch.eye(n, dtype=torch.int64).reshape(n, 1, *spatial)
        total, count = self.sums(basis)
        out_spatial = tuple(total.shape[2:])
        counts = torch.broadcast_to(count, (1, 1, *out_spatial)).reshape(-1)
        return total.reshape(n, -1).numpy(), counts.numpy(), out_spatial

    def onnx_sums(self, em: Any, x: Any) -> tuple[str, np.ndarray, int]:
        """Exact sums of codes (float64), their divisors (broadcastable) and a bound on the sums."""
        g = em.g
        shape = x.example_shape
        spatial = shape[2:]
        mat, counts, out_spatial = self.pooling_matrix(tuple(spatial))
        flat = g.op("Reshape", [x.name, g.const(np.array([0, shape[1], -1], dtype=np.int64), dtype=np.int64)])
        sums = g.op("MatMul", [flat, g.const(mat.astype(np.float64))])
        target = np.array([-1, shape[1], *out_spatial], dtype=np.int64)
        sums = g.op("Reshape", [sums, g.const(target, dtype=np.int64)])
        bound = x.grid.max_abs_code * int(mat.sum(0).max())
        return sums, counts.reshape((1, 1, *out_spatial)), bound

    def onnx_float(self, em: Any, x: Any) -> str:
        """The QDQ form's float average."""
        g = em.g
        shape = x.example_shape
        mat, counts, out_spatial = self.pooling_matrix(tuple(shape[2:]))
        avg = (mat / counts.reshape(1, -1)).astype(np.float32)
        flat = g.op("Reshape", [x.name, g.const(np.array([0, shape[1], -1], dtype=np.int64), dtype=np.int64)])
        y = g.op("MatMul", [flat, g.const(avg, dtype=np.float32)])
        return g.op(
            "Reshape", [y, g.const(np.array([-1, shape[1], *out_spatial], dtype=np.int64), dtype=np.int64)]
        )

    def onnx_integer(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = em.need_grid(args[0], self.qname)
        if self.out_quant is None:
            raise Unsupported(f"{self.qname}: the integer form needs an output format (QConfig.activation)")
        out = self.out_quant.grid()
        em.check_format(out, self.qname)
        sums, counts, bound = self.onnx_sums(em, x)
        mult = x.grid.step / out.step
        if bound * abs(mult.numerator) >= 2**53 or int(counts.max()) * mult.denominator >= 2**53:
            raise Unsupported(f"{self.qname}: the average's integers reach 2^53; use narrower formats")
        g = em.g
        num = g.op("Mul", [sums, g.const(float(mult.numerator))])
        den = g.const((counts * mult.denominator).astype(np.float64))
        return em.value(io, em.clip(em.round_ratio(num, den, out.fmt), out), out)

    def onnx_qdq(self, em: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        y = self.onnx_float(em, args[0])
        if self.out_quant is None:
            return em.value(io, y, None)
        out = self.out_quant.grid()
        return em.value(io, em.fake_quant(y, out, self.qname), out)

    def reference(self, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        x = args[0]
        if x.grid is not None and self.out_quant is not None:  # integer sums of codes
            grid = self.out_quant.grid()
            total, count = self.reference_sums(x.data.astype(object))
            mult = x.grid.step / grid.step
            num = np.asarray(total * mult.numerator, dtype=object)
            den = np.broadcast_to(np.asarray(count * mult.denominator, dtype=object), num.shape)
            return RTensor(saturate(as_ints(round_ratio(grid.fmt, num, den)), grid, self.qname), grid)
        total, count = self.reference_sums(x.exact())
        mean = total / count
        if self.out_quant is None:
            return RTensor(mean)
        grid = self.out_quant.grid()
        return RTensor(round_fractions(mean, grid, self.qname), grid)

    def extra_repr(self) -> str:
        return repr(self.qname)


@register(modules=(nn.AvgPool1d, nn.AvgPool2d), functions=(F.avg_pool1d, F.avg_pool2d))
class AvgPool(_Average):
    """Average pooling with torch's divisor rule (``count_include_pad``, ``divisor_override``)."""

    NAMES = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")

    def __init__(self, cfg: Any, name: str, dims: int, params: dict[str, Any]):
        super().__init__(cfg, name)
        self.dims = dims
        self.kernel = _tuple(params["kernel_size"], dims)
        self.stride = _tuple(params["stride"] or params["kernel_size"], dims)
        self.padding = _tuple(params["padding"], dims)
        self.ceil_mode = bool(params["ceil_mode"])
        self.count_include_pad = bool(params["count_include_pad"])
        self.divisor_override = params["divisor_override"]

    @classmethod
    def build(cls, call: Call) -> Operation:
        defaults = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True}
        params = _module_or_call(call, cls.NAMES, defaults | {"divisor_override": None})
        op = cls(call.config, call.name, _dims_of(call, (nn.AvgPool1d, F.avg_pool1d)), params)
        _check_grid_input(call, op.out_quant)
        return op

    def _params(self) -> dict[str, Any]:
        return {
            "kernel_size": self.kernel,
            "stride": self.stride,
            "padding": self.padding,
            "ceil_mode": self.ceil_mode,
            "count_include_pad": self.count_include_pad,
        }

    def _pool2d(self, x: torch.Tensor, **extra: Any) -> torch.Tensor:
        if self.dims == 2:
            return F.avg_pool2d(x, **self._params(), **extra)
        p = self._params()
        two: dict[str, Any] = {k: ((1, v[0]) if isinstance(v, tuple) else v) for k, v in p.items()}
        two["padding"] = (0, self.padding[0])
        return F.avg_pool2d(x.unsqueeze(2), **two, **extra).squeeze(2)

    def average(self, x: torch.Tensor) -> torch.Tensor:
        extra = {"divisor_override": self.divisor_override} if self.divisor_override else {}
        return self._pool2d(x, **extra)

    def sums(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bound = (int(x.abs().max()) if x.numel() else 0) * math.prod(self.kernel)
        if bound >= 2**53:
            raise Unsupported(f"{self.qname}: sums of codes reach 2^53; use narrower formats")
        total = self._pool2d(x.to(torch.float64), divisor_override=1).to(torch.int64)
        if self.divisor_override:
            return total, torch.full((), int(self.divisor_override), dtype=torch.int64)
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=torch.float64, device=x.device)
        covered = self._pool2d(ones, divisor_override=1)
        mean = self._pool2d(ones)
        count = torch.where(mean > 0, torch.round(covered / torch.where(mean > 0, mean, 1)), 1)
        return total, count.to(torch.int64)

    def reference_sums(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = values
        count = np.ones((), dtype=object)
        for axis in range(self.dims):
            dim = values.ndim - self.dims + axis
            size, pad = values.shape[dim], self.padding[axis]
            windows = pool_windows(size, self.kernel[axis], self.stride[axis], pad, 1, self.ceil_mode)
            total = _window_reduce(total, dim, windows, sum, 0)
            lo, hi = (-pad, size + pad) if self.count_include_pad else (0, size)
            n = np.array([sum(lo <= i < hi for i in w) for w in windows], dtype=object)
            shape = [1] * values.ndim
            shape[dim] = len(windows)
            count = count * n.reshape(shape)
        if self.divisor_override:
            count = np.full((), int(self.divisor_override), dtype=object)
        return total, count

    def describe(self) -> str:
        return f"AvgPool{self.dims}d(kernel={self.kernel}, stride={self.stride}, padding={self.padding})"


def _window_reduce(
    data: np.ndarray, dim: int, windows: list[tuple[int, ...]], reduce: Any, fill: Any
) -> np.ndarray:
    """Reduce ``data`` along ``dim`` over each window of positions (positions outside the axis
    are padding and count as ``fill``): one output position per window."""
    size = data.shape[dim]
    parts = []
    for window in windows:
        inside = [i for i in window if 0 <= i < size]
        cells = [np.take(data, i, axis=dim) for i in inside]
        if len(inside) < len(window):
            cells.append(np.full(np.take(data, 0, axis=dim).shape, fill, dtype=object))
        acc = cells[0]
        for c in cells[1:]:
            acc = _combine(reduce, acc, c)
        parts.append(acc)
    return np.stack(parts, axis=dim)


def _combine(reduce: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(a, b) if reduce is max else a + b


def adaptive_windows(size: int, out: int) -> tuple[list[int], list[int]]:
    """torch's adaptive pooling windows: ``[floor(i L / O), ceil((i + 1) L / O))``."""
    starts = [(i * size) // out for i in range(out)]
    ends = [-((-(i + 1) * size) // out) for i in range(out)]
    return starts, ends


@register(
    modules=(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
    functions=(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d),
)
class AdaptiveAvgPool(_Average):
    """Adaptive average pooling to any output size (windows of varying size)."""

    def __init__(self, cfg: Any, name: str, dims: int, output_size: Any):
        super().__init__(cfg, name)
        self.dims = dims
        self.output_size = _tuple(output_size, dims)

    @classmethod
    def build(cls, call: Call) -> Operation:
        size = call.module.output_size if call.module is not None else call.arg(1, "output_size")
        dims = _dims_of(call, (nn.AdaptiveAvgPool1d, F.adaptive_avg_pool1d))
        op = cls(call.config, call.name, dims, size)
        _check_grid_input(call, op.out_quant)
        return op

    def _sizes(self, x: torch.Tensor) -> list[int]:
        spatial = x.shape[-self.dims :]
        return [s if o is None else o for s, o in zip(spatial, self.output_size, strict=True)]

    def average(self, x: torch.Tensor) -> torch.Tensor:
        fn = F.adaptive_avg_pool1d if self.dims == 1 else F.adaptive_avg_pool2d
        return fn(x, self.output_size)

    def sums(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = x.to(torch.int64)
        count = torch.ones((), dtype=torch.int64, device=x.device)
        for axis, out in zip(range(x.dim() - self.dims, x.dim()), self._sizes(x), strict=True):
            starts, ends = adaptive_windows(x.shape[axis], out)
            zero = torch.zeros_like(total.narrow(axis, 0, 1))
            cum = torch.cat([zero, total.cumsum(axis)], axis)
            idx = lambda v: torch.tensor(v, dtype=torch.int64, device=x.device)  # noqa: E731
            total = cum.index_select(axis, idx(ends)) - cum.index_select(axis, idx(starts))
            shape = [1] * x.dim()
            shape[axis] = out
            count = count * (idx(ends) - idx(starts)).view(shape)
        return total, count

    def reference_sums(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = values
        count = np.ones((), dtype=object)
        for axis, out in enumerate(self.output_size):
            dim = values.ndim - self.dims + axis
            size = values.shape[dim]
            starts, ends = adaptive_windows(size, size if out is None else out)
            windows = [tuple(range(a, b)) for a, b in zip(starts, ends, strict=True)]
            total = _window_reduce(total, dim, windows, sum, 0)
            shape = [1] * values.ndim
            shape[dim] = len(windows)
            count = count * np.array([len(w) for w in windows], dtype=object).reshape(shape)
        return total, count

    def describe(self) -> str:
        return f"AdaptiveAvgPool{self.dims}d({self.output_size})"


@register(functions=(torch.mean, torch.sum), methods=("mean", "sum"))
class Reduce(_Average):
    """``mean`` or ``sum`` over dimensions (all of them by default), rounded once."""

    def __init__(self, cfg: Any, name: str, mean: bool, dim: Any, keepdim: bool):
        super().__init__(cfg, name)
        self.mean, self.dim, self.keepdim = mean, dim, keepdim

    @classmethod
    def build(cls, call: Call) -> Operation:
        mean = call.target in (torch.mean, "mean")
        dim, keepdim = call.arg(1, "dim"), call.arg(2, "keepdim", False)
        if call.kwargs.get("dtype") is not None:
            raise Unsupported(f"{call.name}: reductions with a dtype are not supported")
        if not (
            dim is None
            or isinstance(dim, int)
            or (isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim))
        ):
            raise Unsupported(f"{call.name}: the reduced dimensions must be constant ints")
        op = cls(call.config, call.name, mean, tuple(dim) if isinstance(dim, list) else dim, bool(keepdim))
        _check_grid_input(call, op.out_quant)
        return op

    def _dims(self, x: torch.Tensor | np.ndarray) -> tuple[int, ...]:
        if self.dim is None:
            return tuple(range(x.ndim))
        return (self.dim,) if isinstance(self.dim, int) else tuple(self.dim)

    def average(self, x: torch.Tensor) -> torch.Tensor:
        fn = torch.mean if self.mean else torch.sum
        return fn(x, self._dims(x), keepdim=self.keepdim)

    def sums(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = self._dims(x)
        n = math.prod(x.shape[d] for d in dims) if self.mean else 1
        return x.to(torch.int64).sum(dims, keepdim=self.keepdim), torch.full((), n, dtype=torch.int64)

    def reference_sums(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dims = tuple(
            d % values.ndim for d in (range(values.ndim) if self.dim is None else self._dims(values))
        )
        total = np.sum(values, axis=dims, keepdims=self.keepdim)
        n = math.prod(values.shape[d] for d in dims) if self.mean else 1
        return np.asarray(total, dtype=object), np.full((), n, dtype=object)

    def chain(self, cb: Any, args: tuple, kwargs: dict, io: NodeIO) -> Any:
        if 0 in self._axes(len(cb.consume(args[0], self.qname).example_shape)).tolist():
            raise Unsupported(f"{self.qname}: the verifier reads one sample; this reduction spans the batch")
        return super().chain(cb, args, kwargs, io)

    def _axes(self, ndim: int) -> np.ndarray:
        dims = range(ndim) if self.dim is None else ((self.dim,) if isinstance(self.dim, int) else self.dim)
        return np.array(sorted(d % ndim for d in dims), dtype=np.int64)

    def onnx_sums(self, em: Any, x: Any) -> tuple[str, np.ndarray, int]:
        axes = self._axes(len(x.example_shape))
        if 0 in axes:
            raise Unsupported(f"{self.qname}: a reduction over the batch dimension cannot be exported")
        g = em.g
        sums = g.op("ReduceSum", [x.name, g.const(axes, dtype=np.int64)], keepdims=int(self.keepdim))
        n = math.prod(x.example_shape[a] for a in axes)
        return sums, np.array(n if self.mean else 1), x.grid.max_abs_code * n

    def onnx_float(self, em: Any, x: Any) -> str:
        g = em.g
        axes = self._axes(len(x.example_shape))
        if self.mean:  # opset 17: ReduceMean's axes are an attribute
            return g.op("ReduceMean", [x.name], axes=axes.tolist(), keepdims=int(self.keepdim))
        return g.op("ReduceSum", [x.name, g.const(axes, dtype=np.int64)], keepdims=int(self.keepdim))

    def describe(self) -> str:
        return f"{'Mean' if self.mean else 'Sum'}(dim={self.dim})"
