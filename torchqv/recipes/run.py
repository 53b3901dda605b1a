"""The ``run`` recipe (``recipes/run.py``, also ``qubo_paper``): train or load a network, quantize
it, round its weights, check and verify the result, report.

For every weight width ``b`` in ``quant.bits`` and rounding method in ``rounding.method``:

1. **quantize**: post-training (``tq.quantize`` + ``tq.calibrate`` on the first
   ``quant.calibration_samples`` training examples) or quantization-aware (one Lightning fit of
   ``quant.qat_epochs`` with the ``QuantizationAwareTraining`` callback per width, shared by the
   rounding methods); Park, Park & Hwang, "On expressive power of quantized neural networks under fixed-point
   arithmetic", Eq. 7 semantics, ``b = 1`` is ``tq.Binary``;
2. **round** the weights (``tq.round_weights``): to nearest, or by the QUBO method of Muñiz Subiñas et al.,
   "Optimization of the quantization of dense neural networks from an exact QUBO formulation" (each layer's
   output error before the activation, per neuron);
3. **measure** the test accuracy of the exact fixed-point simulation, and check it against the
   integer reference (``tq.reference_forward``) bit for bit on the first test inputs;
4. **verify** (``tq.verify_equivalence``, Matos Júnior, "An automated method for neural network quantization
   refinement" (PhD thesis, UFAM, 2025)) the float network f against f' around the first test inputs: proved,
   refuted (a replayed counterexample) or unknown; the regions' radius is a number or ``"<k> steps"`` of
   f''s input grid, and each row records how many input grid points a region holds (``grid_points``).  A
   network the verifier cannot read is found before training: its rows record why in ``verify_skipped``.

Widths: ``quant.activation_bits`` (8, ``"same"`` as the weights, or float) and
``quant.input_bits`` (``"activation"``: as the activations, by default), so a sweep of
``quant.bits`` varies the weights alone unless asked otherwise; plots and tables say what varies.

Outputs (:mod:`torchqv.recipes.report`): ``results.json`` (one row per width and method),
``results.md`` (nearest vs QUBO accuracy, then the details), ``accuracy.png`` (accuracy against
bits), ``rounding.png`` (output error of nearest vs QUBO rounding against bits) and
``verification.png`` (verdicts), and ``float_model.pt`` (the trained float network).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, VerificationInputError
from ..formats import Binary, FixedPoint, QuantizationError, dequantize_f64
from ..graph import QuantizedModel
from ..jobconfig import plain
from ..lightning.qat import QuantizationAwareTraining
from ..ops.base import Unsupported
from ..progress import progress_bar
from ..quantize import QConfig, calibrate, quantize
from ..reference import reference_forward
from ..rounding import round_weights
from ..verify import verify_equivalence
from ..verify.network import float_chain, quant_chain
from ..verify.parallel import optional_pool
from .config import QuantConfig, RunConfig, VerifyConfig, as_config
from .networks import Data, accuracy, build_model, fit, load_data, load_model, tensors
from .report import (
    Column,
    Report,
    job_label,
    line_plot,
    markdown_table,
    rows_table,
    save_figure,
    write_outputs,
)

log = logging.getLogger(__name__)
CHUNK = 512  # calibration batch size


def width(value: Any, bits: int, activation: int | None = None) -> int | None:
    """``quant.activation_bits`` / ``input_bits`` for weight width ``bits`` (``"same"``: ``bits``;
    ``"activation"``: the activations' width ``activation``)."""
    if value == "same":
        return bits
    return activation if value == "activation" else value


def widths(q: QuantConfig, bits: int) -> tuple[int | None, int | None]:
    """The activations' and the input's widths (``None``: float) for weight width ``bits``."""
    a = width(q.activation_bits, bits)
    return a, width(q.input_bits, bits, a)


def weight_observer(q: QuantConfig, method: str | None) -> str:
    if q.weight_observer != "auto":
        return q.weight_observer
    return "mse" if method == "nearest" and q.mode == "ptq" else "minmax"


def qconfig(q: QuantConfig, bits: int, method: str | None) -> QConfig:
    """The ``tq.QConfig`` for weight width ``bits`` before rounding with ``method`` (``None``: QAT)."""
    weight = (
        Binary(per_channel=q.per_channel, power_of_two=q.power_of_two)
        if bits == 1
        else FixedPoint(bits=bits, per_channel=q.per_channel, power_of_two=q.power_of_two)
    )
    a, i = widths(q, bits)
    return QConfig(
        weight=weight,
        activation=FixedPoint(bits=a, power_of_two=q.power_of_two) if a else None,
        input=FixedPoint(bits=i, signed=False, power_of_two=q.power_of_two) if i else None,
        weight_observer=weight_observer(q, method),
        activation_observer=q.activation_observer,
    )


def region_centres(qm: torch.nn.Module, x: torch.Tensor, domain: Sequence[float] | None) -> torch.Tensor:
    """The test inputs as f' sees them: rounded to its input grid (when it quantizes its input),
    one step inward where rounding left ``domain``, so that every region holds a grid point (a ball
    between grid points would be proved equivalent vacuously)."""
    quant = qm.input_quant if isinstance(qm, QuantizedModel) else None
    if quant is None:
        return x
    codes = quant.exact_codes(x)
    if domain is not None:
        values = dequantize_f64(codes, quant.steps(), quant.axis)
        codes = codes - (values > domain[1]).double() + (values < domain[0]).double()
    values = dequantize_f64(codes, quant.steps(), quant.axis)
    if not torch.equal(values.float().double(), values):
        raise ConfigError(
            "input grid values are not float32 numbers (input bits > 16?): use fewer input bits"
        )
    return values.float()


def describe(model: torch.nn.Module, cfg: RunConfig) -> str:
    m = cfg.model
    if m.load is not None and m.load.endswith(".onnx"):
        return f"onnx {Path(m.load).stem}"
    if m.target is not None:
        params = sum(p.numel() for p in model.parameters())
        return f"{m.target.rsplit('.', 1)[-1]} ({params / 1e6:.2f}M parameters)"
    layers = [x for x in model.modules() if isinstance(x, (torch.nn.Linear, torch.nn.Conv2d))]
    first = layers[0].in_features if isinstance(layers[0], torch.nn.Linear) else layers[0].in_channels
    widths = [first] + [x.out_features if isinstance(x, torch.nn.Linear) else x.out_channels for x in layers]
    return f"{m.kind} {'-'.join(map(str, widths))}"


def run(cfg: RunConfig | Any, out_dir: str | Path) -> dict[str, Any]:
    """The whole job (see the module docstring); returns the results written to ``out_dir``."""
    cfg = as_config(cfg, RunConfig)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
    data = load_data(cfg.dataset, cfg.trainer.seed)
    torch.manual_seed(cfg.trainer.seed)
    v = cfg.verify
    if cfg.model.load is not None:
        f = load_model(cfg.model, data.input_shape, data.num_classes, data.image_shape)
        skip = _unverifiable(f, None, data.input_shape) if v.enabled else None
    else:
        model = build_model(cfg.model, data.input_shape, data.num_classes, data.image_shape)
        skip = _unverifiable(model, None, data.input_shape) if v.enabled else None
        if skip:  # said before training, not found after it
            log.warning("verification will be skipped: %s", skip)
        f = fit(model, data.train, cfg.trainer, cfg.trainer.epochs, cfg.trainer.lr, root=out)
        torch.save(f.state_dict(), out / "float_model.pt")
    train_seconds = time.perf_counter() - start
    float_acc = accuracy(f, data.test)
    arch = describe(f, cfg)
    log.info("float network %s: test accuracy %.4f (%.1f s)", arch, float_acc, train_seconds)
    inputs = {
        "calibration": tensors(data.train, cfg.quant.calibration_samples)[0],
        "rounding": tensors(data.train, cfg.rounding.calibration_samples)[0],
        "reference": tensors(data.test, v.reference_points)[0] if v.reference_points else None,
        "verify": tensors(data.test, v.points)[0] if v.enabled else None,
    }
    rows = []
    jobs = len(cfg.quant.bits) * len(cfg.rounding.method)
    bar = progress_bar(desc="bits x rounding", total=jobs, progress=cfg.trainer.progress)
    with optional_pool(v.workers if v.enabled else 1) as pool:  # one pool for every verification
        for bits in cfg.quant.bits:
            trained = _qat(f, cfg, bits, data, out) if cfg.quant.mode == "qat" else None
            for method in cfg.rounding.method:
                bar.set_postfix(bits=bits, method=method)
                if trained is None:
                    assert inputs["calibration"] is not None  # always drawn
                    qm = _ptq(f, cfg, bits, method, inputs["calibration"])
                else:
                    qm = copy.deepcopy(trained)
                measured = _measure(f, qm, cfg, bits, method, data, float_acc, inputs, pool, skip)
                rows.append({"dataset": data.name, "model": arch, **measured})
                bar.update()
    bar.close()
    return write_outputs(
        out, "run", plain(cfg), rows, float_accuracy=float_acc, train_seconds=train_seconds,
        seconds=time.perf_counter() - start,
    )  # fmt: skip


def _ptq(f: torch.nn.Module, cfg: RunConfig, bits: int, method: str, x: torch.Tensor) -> torch.nn.Module:
    qm = quantize(f, qconfig(cfg.quant, bits, method))
    calibrate(qm, x.split(CHUNK), progress=False)
    return qm


def _qat(f: torch.nn.Module, cfg: RunConfig, bits: int, data: Data, out: Path) -> torch.nn.Module:
    q = cfg.quant
    batches = math.ceil(q.calibration_samples / (cfg.trainer.batch_size or len(data.train)))  # type: ignore[arg-type]  # torch's Dataset declares no __len__
    callback = QuantizationAwareTraining(
        qconfig(q, bits, None), calibration_batches=batches, freeze_observers_epoch=q.freeze_observers_epoch
    )
    return fit(copy.deepcopy(f), data.train, cfg.trainer, q.qat_epochs, q.qat_lr, [callback], root=out)


def _measure(
    f: torch.nn.Module,
    qm: torch.nn.Module,
    cfg: RunConfig,
    bits: int,
    method: str,
    data: Data,
    float_acc: float,
    inputs: dict[str, torch.Tensor | None],
    pool: Executor | None = None,
    skip: str | None = None,
) -> dict[str, Any]:
    r, v, q = cfg.rounding, cfg.verify, cfg.quant
    t0 = time.perf_counter()
    assert inputs["rounding"] is not None  # always drawn
    report = round_weights(
        qm, inputs["rounding"].split(CHUNK), r.job(method), progress=False,
    )  # fmt: skip
    a, i = widths(q, bits)
    row: dict[str, Any] = {
        "mode": q.mode,
        "bits": bits,
        "activation_bits": a,
        "input_bits": i,
        "method": method,
        "weight_observer": weight_observer(q, method),
        "float_accuracy": float_acc,
        "accuracy": accuracy(qm, data.test),
        "output_error": sum(layer.objective for layer in report.layers),
        "round_seconds": time.perf_counter() - t0,
    }
    x = inputs["reference"]
    row["reference_match"] = None  # bit-exact only on grids: needs quantized activations and input
    if x is not None and row["activation_bits"] and row["input_bits"]:
        with torch.no_grad():
            row["reference_match"] = bool(torch.equal(qm.eval()(x), reference_forward(qm, x)))
        if not row["reference_match"]:
            log.error("%d bits, %s: the simulation differs from the integer reference", bits, method)
    row |= {"proved": None, "refuted": None, "unknown": None, "verdicts": None, "verify_seconds": None}
    row |= {"delta": None, "input_step": None, "grid_points": None}
    row["verify_skipped"] = (skip or _unverifiable(f, qm, data.input_shape)) if v.enabled else None
    if row["verify_skipped"] and not skip:
        log.warning("verification skipped: %s", row["verify_skipped"])
    elif v.enabled and not skip:
        t0 = time.perf_counter()
        assert inputs["verify"] is not None  # drawn when verification is enabled
        centres = region_centres(qm, inputs["verify"], v.domain)
        try:
            delta, step = radius(qm, v)  # "<k> steps" of a float input: a reason, not a crash
            results = verify_equivalence(
                f, qm, centres, config=v.job(delta).updated(seed=cfg.trainer.seed, workers=1), executor=pool,
            )  # fmt: skip
        except (Unsupported, NoInputGrid) as exc:  # the verifier cannot encode it: recorded, not a crash
            row["verify_skipped"] = str(exc)
            log.warning("verification skipped: %s", exc)
            results = None
        if results is not None:
            verdicts = [res.verdict for res in results]
            points = [res.stats.get("grid_points") for res in results]
            row |= {
                "proved": verdicts.count("EQUIVALENT"),
                "refuted": verdicts.count("NOT_EQUIVALENT"),
                "unknown": verdicts.count("UNKNOWN"),
                "verdicts": [
                    {
                        "verdict": res.verdict,
                        "method": res.stats.get("method"),
                        "reason": res.reason,
                        "grid_points": n,
                    }
                    for res, n in zip(results, points, strict=True)
                ],
                "verify_seconds": time.perf_counter() - t0,
                "delta": float(delta),
                "input_step": float(step) if step is not None else None,
                "grid_points": min(points) if points and None not in points else None,
            }
    row["layers"] = report.to_dict()["layers"]
    return row


class NoInputGrid(VerificationInputError):
    """``verify.delta="<k> steps"`` for a network without an input grid."""


def radius(qm: torch.nn.Module, v: VerifyConfig) -> tuple[float | Fraction, Fraction | None]:
    """The regions' radius (``verify.delta``: a number, or ``"<k> steps"`` of f''s input grid)
    and that grid's step (``None``: a float input, whose regions are continuous)."""
    quant = qm.input_quant if isinstance(qm, QuantizedModel) else None
    step = min(quant.steps()) if quant is not None else None
    k = v.delta_steps
    if k is None:
        return v.delta, step
    if step is None:
        raise NoInputGrid(f"verify.delta={v.delta!r} counts input grid steps, but f' has a float input")
    return Fraction(k) * step, step


def _unverifiable(f: torch.nn.Module, qm: torch.nn.Module | None, shape: Sequence[int]) -> str | None:
    """Why the verifier cannot read these networks (``None``: it can; ``qm=None``: f alone)."""
    try:
        float_chain(f, tuple(shape))
        if qm is not None:
            quant_chain(qm, tuple(shape))
    except QuantizationError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------ report
SWEPT = ("quant.bits", "rounding.method", "dataset")  # shown by the table's own columns


def _bits_label(r: dict[str, Any]) -> str:
    w = "1 (binary)" if r["bits"] == 1 else str(r["bits"])
    return f"{w}/{r['activation_bits'] or 'float'}/{r['input_bits'] or 'float'}"


def _key(r: dict[str, Any]) -> tuple:
    return (r["dataset"], r["model"], r["mode"], job_label(r, SWEPT))


def grid_points(n: int | None) -> str:
    """A count of grid points: exact below a million, else a lower bound ``>= 10^k``."""
    if n is None:
        return "-"
    return str(n) if n < 10**6 else f">= 10^{len(str(n)) - 1}"


def _verified(r: dict[str, Any]) -> str:
    """``proved/refuted/unknown`` regions, ``skipped`` (the verifier cannot read the network) or ``-``."""
    if r.get("verify_skipped"):
        return "skipped"
    return "-" if r["proved"] is None else f"{r['proved']}/{r['refuted']}/{r['unknown']}"


def _radius(r: dict[str, Any]) -> str:
    """The regions' radius, in input steps when the input is on a grid."""
    if r.get("delta") is None:
        return "-"
    if r.get("input_step"):
        return f"{r['delta'] / r['input_step']:.3g} steps"
    return f"{r['delta']:.3g}"


DETAILS: list[Column] = [
    ("dataset", "dataset"),
    ("model", "model"),
    ("mode", "mode"),
    ("bits (w/a/in)", lambda r: _bits_label(r)),
    ("rounding", "method"),
    ("weight steps", "weight_observer"),
    ("accuracy", "accuracy"),
    ("output error", "output_error"),
    ("sim == ref", "reference_match"),
    ("verified", _verified),
    ("radius", _radius),
    ("grid points / region", lambda r: grid_points(r.get("grid_points"))),
    ("by", lambda r: _methods(r)),
    ("round (s)", "round_seconds"),
    ("verify (s)", "verify_seconds"),
]


def widths_note(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """What varies with ``bits`` on the plots' x axis (``"weight bits"``, ``"weight = activation
    bits"``, ...) and what stays fixed (``"activation 8 bits, input 8 bits"``)."""
    several = len({r["bits"] for r in rows}) > 1
    moving, fixed = ["weight"], []
    for key, name in (("activation_bits", "activation"), ("input_bits", "input")):
        values = {r.get(key) for r in rows}
        if several and all(r.get(key) == r["bits"] for r in rows):
            moving.append(name)
        elif len(values) == 1:
            (value,) = values
            fixed.append(f"{name} {value} bits" if value else f"{name} float")
        else:
            shown = ", ".join(str(b or "float") for b in sorted(values, key=str))
            fixed.append(f"{name} bits vary: {shown}")
    return " = ".join(moving) + " bits", ", ".join(fixed)


def markdown(rows: list[dict[str, Any]]) -> str:
    """Nearest vs QUBO test accuracy per width (with the verdicts and the regions' input grid
    points), then one line per width and method."""
    jobs = any(job_label(r, SWEPT) for r in rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (*_key(r), _bits_label(r), r["bits"])
        g = groups.setdefault(key, {"float": r["float_accuracy"], "rows": []})
        g[r["method"]] = r["accuracy"]
        g["rows"].append(r)
    head = ["dataset", "model", "mode", "bits (w/a/in)", "float", *methods]
    both = {"nearest", "qubo"} <= set(methods)
    head += ["qubo - nearest"] if both else []
    checked = any(r.get("verify_skipped") or r["proved"] is not None for r in rows)
    if checked:
        head += [f"verified ({', '.join(methods)})", "grid points / region"]
    summary = []
    for (ds, model, mode, job, label, _), g in sorted(groups.items(), key=lambda kv: (kv[0][:4], -kv[0][5])):
        line = [ds, model, mode, label, g["float"], *(g.get(m) for m in methods)]
        if both:
            has = g.get("qubo") is not None and g.get("nearest") is not None
            line.append(g["qubo"] - g["nearest"] if has else None)
        if checked:
            counts = [r["grid_points"] for r in g["rows"] if r.get("grid_points") is not None]
            line += [", ".join(_verified(r) for r in g["rows"]), grid_points(min(counts) if counts else None)]
        summary.append([*line, job] if jobs else line)
    details = rows_table(rows, DETAILS + ([("job", lambda r: job_label(r, SWEPT))] if jobs else []))
    varies, fixed = widths_note(rows)
    skipped = sorted({r["verify_skipped"] for r in rows if r.get("verify_skipped")})
    return "\n".join(
        [
            "### Test accuracy: nearest vs QUBO rounding",
            "",
            f"bits (w/a/in): weight / activation / input bits; across the rows the {varies} vary"
            + (f" ({fixed})" if fixed else "")
            + ". verified: proved / refuted / unknown regions (f' and the float network f satisfy "
            "verify.relation, top1: the same class, on every input of the region); grid points / "
            "region: the input grid points a region holds (the fewest over the regions; '>= 10^k': a "
            "lower bound), i.e. how many inputs one proof covers.",
            "",
            markdown_table(head + (["job"] if jobs else []), summary),
            *([""] + [f"verification skipped: {reason}" for reason in skipped] if skipped else []),
            "",
            "### Details",
            "",
            "output error: the layers' squared output errors before the activation, summed (the QUBO "
            "objective); sim == ref: the exact simulation equals tq.reference_forward on the first test "
            "inputs; verified: proved / refuted / unknown regions, decided by the methods listed; radius: "
            "the L-inf radius of the regions around the first test inputs (rounded to f''s input grid), "
            "in steps of that grid when the input is quantized.",
            "",
            details,
        ]
    )


def _methods(r: dict[str, Any]) -> str:
    """How the regions were decided, e.g. ``bounds x3, z3``."""
    counts: dict[str, int] = {}
    for v in r["verdicts"] or []:
        counts[str(v["method"])] = counts.get(str(v["method"]), 0) + 1
    return ", ".join(k + (f" x{n}" if n > 1 else "") for k, n in counts.items()) or "-"


def _series(r: dict[str, Any]) -> str:
    extra = job_label(r, SWEPT)
    return " ".join(str(p) for p in (r["dataset"], r["model"], r["mode"], r["method"], extra) if p)


def plot(rows: list[dict[str, Any]], out: Path) -> list[str]:
    from matplotlib.figure import Figure

    files = []
    bits = sorted({r["bits"] for r in rows})
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    line_plot(ax, rows, "bits", "accuracy", _series)
    for key in dict.fromkeys(_key(r) for r in rows):
        acc = next(r["float_accuracy"] for r in rows if _key(r) == key)
        ax.axhline(acc, ls="--", lw=0.8, color="gray")
    ax.set_xscale("log", base=2)
    ax.set_xticks(bits, [str(b) for b in bits])
    varies, fixed = widths_note(rows)
    note = f" ({fixed})" if fixed else ""
    ax.set_xlabel(varies)
    ax.set_title(f"test accuracy against {varies}{note}; dashed: float", fontsize=9)
    files.append(save_figure(fig, out / "accuracy.png"))
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    line_plot(ax, [r for r in rows if r["output_error"] > 0], "bits", "output_error", _series)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(bits, [str(b) for b in bits])
    ax.set_xlabel(varies)
    ax.set_title(f"nearest vs QUBO: summed squared layer output error{note}", fontsize=9)
    files.append(save_figure(fig, out / "rounding.png"))
    checked = [r for r in rows if r["proved"] is not None]
    if checked:
        fig = Figure(figsize=(max(6, 0.6 * len(checked)), 4.5))
        ax = fig.add_subplot()
        labels = [f"{r['bits']}b {r['method']} {_key(r)[0]} {job_label(r, SWEPT)}".strip() for r in checked]
        bottom = [0] * len(checked)
        for verdict, color in (("proved", "#4caf50"), ("refuted", "#e53935"), ("unknown", "#ffc107")):
            counts = [r[verdict] for r in checked]
            ax.bar(range(len(checked)), counts, bottom=bottom, color=color, label=verdict)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        ax.set_xticks(range(len(checked)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("regions")
        ax.legend(fontsize=7)
        ax.set_title("equivalence verification of f' against f")
        files.append(save_figure(fig, out / "verification.png"))
    return files


REPORTS = {"run": Report(markdown, plot)}
