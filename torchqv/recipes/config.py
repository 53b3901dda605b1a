"""Structured configs of the Hydra recipes: plain dataclasses, registered in Hydra's ConfigStore.

Each recipe's root schema (``run_schema``, ``ceg4n_schema``, ``degradation_schema``,
``representability_schema``) is the first entry of its YAML file's defaults list (``conf/``), so
every value Hydra composes is checked against these dataclasses: a key that is not a field (a
typo in an override) is an error naming the key and the dataclass, and a value of the wrong type
is an error naming the field.  ``OmegaConf.to_object`` then builds the dataclasses, whose
``__post_init__`` checks the values (:func:`as_config`).

Groups of ``run`` (and ``qubo_paper``): ``dataset``, ``model``, ``quant``, ``rounding``,
``verify``, ``trainer``.  ``quant.bits`` and ``rounding.method`` take one value or a list: a single
run loops over the list, a sweep (``-m quant.bits=1,2,4,8``) runs one value per job.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..data.tabular import TABULAR
from ..data.tabular import TABULAR_IMAGES as IMAGES
from ..data.torchvision_sets import VISION_SETS
from ..errors import ConfigError
from ..formats import MAX_BITS
from ..observers import OBSERVERS
from ..rounding.config import Method
from ..rounding.config import RoundingConfig as CoreRoundingConfig
from ..theory.degradation import DegradationConfig
from ..theory.degradation_mnist import MnistDegradationConfig
from ..theory.universality import PAPER_ACTIVATIONS
from ..verify.ceg4n import BitSearchConfig
from ..verify.config import VerifyConfig as CoreVerifyConfig
from ..verify.config import exact_or_none

# The activations a recipe's model can use, by name (also what ``model.activation`` accepts).
FLOAT_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "identity": nn.Identity,
    "leaky_relu": nn.LeakyReLU,
    "hardtanh": nn.Hardtanh,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
}

DATASETS = (*TABULAR, *sorted(VISION_SETS))
MODELS = ("mlp", "cnn")
MODES = ("ptq", "qat")


def _choice(owner: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{owner}.{name} must be one of {list(allowed)}, got {value!r}")


def _positive(owner: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ConfigError(f"{owner}.{name} must be a positive number, got {value!r}")


def as_list(value: Any, what: str) -> list:
    """One value or a list of values (as ``quant.bits`` and ``rounding.method`` take them)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ConfigError(f"{what} must not be empty")
    return items


def _bits(value: Any, what: str, lo: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= MAX_BITS:
        raise ConfigError(f"{what} must be an int in [{lo}, {MAX_BITS}], got {value!r}")


# ------------------------------------------------------------------------------ run groups
_STEPS = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*steps?\s*$")


def delta_steps(value: Any) -> float | None:
    """``k`` of a radius ``"<k> steps"`` (``None`` for anything else)."""
    match = _STEPS.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    k = float(match.group(1))
    if not (k > 0 and math.isfinite(k)):
        raise ConfigError(f"verify.delta: the number of steps must be > 0, got {value!r}")
    return k


@dataclass
class DatasetConfig:
    """``name``: an embedded tabular set (``digits``, ``iris``, ``seeds``: no download) or a
    torchvision set (``mnist``, ``fashion_mnist``, ``emnist``, ``cifar10``) read from ``root``
    (``None``: ``$TORCHQV_DATA``, else ``./data``; archives are unpacked into ``cache_dir``;
    ``verify_md5``: check them against torchvision's checksums).
    ``test_size``: the test fraction of a tabular set.  ``train_subset`` / ``test_subset``: keep
    the first N examples of the split (``None``: all; the training split is in seeded random
    order, so the first N are a deterministic sample); more than the split holds is an error."""

    name: str = "digits"
    root: str | None = None
    cache_dir: str | None = None
    download: bool = False
    verify_md5: bool = True
    test_size: float = 0.25
    train_subset: int | None = None
    test_subset: int | None = None

    def __post_init__(self) -> None:
        _choice("dataset", "name", self.name, DATASETS)
        if not 0 < self.test_size < 1:
            raise ConfigError(f"dataset.test_size must be a fraction in (0, 1), got {self.test_size}")
        for name in ("train_subset", "test_subset"):
            n = getattr(self, name)
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ConfigError(f"dataset.{name} must be a positive int or null (all), got {n!r}")


@dataclass
class ModelConfig:
    """``mlp``: Linear layers of widths ``hidden`` (input flattened); ``cnn``: per entry of
    ``channels`` a 3x3 convolution (padding 1), the activation and a 2x2 max pool, then one
    Linear layer.  ``target``: any ``nn.Module`` class or factory by its dotted path instead
    (``torchqv.models.resnet20``, ``torchvision.models.resnet18``, ``mypkg.nets.MyNet``; built by
    Hydra's ``instantiate`` with ``kwargs``, plus ``num_classes`` and ``in_channels`` when it takes
    them; ``kind`` is then ignored).  ``load``: no training; a ``.pt`` state dict of this
    architecture or an ``.onnx`` network (read by ``tq.from_onnx``)."""

    kind: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [64, 32])
    channels: list[int] = field(default_factory=lambda: [16, 32])
    activation: str = "relu"
    load: str | None = None
    target: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice("model", "kind", self.kind, MODELS)
        _choice("model", "activation", self.activation, tuple(FLOAT_ACTIVATIONS))
        for name in ("hidden", "channels"):
            if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in getattr(self, name)):
                raise ConfigError(f"model.{name} must be a list of positive ints, got {getattr(self, name)}")
        if self.target is not None and (not isinstance(self.target, str) or "." not in self.target):
            raise ConfigError(
                f"model.target must be a dotted path such as 'pkg.module.Class', got {self.target!r}"
            )
        if self.load is not None and not self.load.endswith((".pt", ".onnx")):
            raise ConfigError(f"model.load must name a .pt state dict or an .onnx file, got {self.load!r}")


@dataclass
class QuantConfig:
    """``mode``: ``ptq`` (quantize the trained network and calibrate) or ``qat`` (then
    ``qat_epochs`` of quantization-aware training with the ``QuantizationAwareTraining``
    callback).  ``bits``: weight bits, an int or a list (1 = ``tq.Binary``).
    ``activation_bits``: an int (default 8), ``"same"`` (as the weights: they move together in a
    sweep of ``quant.bits``) or ``None`` (float activations: weight-only).  ``input_bits``: the
    network input's own width: ``"activation"`` (default: as the activations), an int,
    ``"same"`` (as the weights) or ``None`` (float input); the input grid is unsigned (features
    lie in [0, 1]).  ``weight_observer``: an observer, or ``"auto"``: MSE steps before nearest rounding
    and min-max steps before QUBO rounding, whose wider grid it exploits (BENCHMARKS, QUBO
    section); min-max with QAT.  ``calibration_samples``: training examples that set the steps."""

    mode: str = "ptq"
    bits: Any = field(default_factory=lambda: [8, 4, 2])
    activation_bits: Any = 8
    input_bits: Any = "activation"
    per_channel: bool = True
    weight_observer: str = "auto"
    activation_observer: str = "mse"
    power_of_two: bool = False
    calibration_samples: int = 2048
    qat_epochs: int = 2
    qat_lr: float = 1e-4
    freeze_observers_epoch: int | None = None

    def __post_init__(self) -> None:
        _choice("quant", "mode", self.mode, MODES)
        self.bits = as_list(self.bits, "quant.bits")
        for b in self.bits:
            _bits(b, "quant.bits")
        if self.activation_bits not in ("same", None):
            _bits(self.activation_bits, "quant.activation_bits (or 'same' or null)", 2)
        if self.input_bits not in ("same", "activation", None):
            _bits(self.input_bits, "quant.input_bits (or 'activation', 'same' or null)", 1)
        if self.activation_bits == "same" and 1 in self.bits:
            raise ConfigError(
                "quant.bits includes 1 (binary weights) but quant.activation_bits='same' would make "
                "1-bit activations; set quant.activation_bits to an int >= 2 or null (float activations)"
            )
        _choice("quant", "weight_observer", self.weight_observer, ("auto", *OBSERVERS))
        _choice("quant", "activation_observer", self.activation_observer, OBSERVERS)
        _positive("quant", calibration_samples=self.calibration_samples, qat_lr=self.qat_lr)
        if self.qat_epochs < 1:
            raise ConfigError(f"quant.qat_epochs must be >= 1, got {self.qat_epochs}")


@dataclass
class RoundingConfig(CoreRoundingConfig):
    """A :class:`torchqv.rounding.RoundingConfig` whose ``method`` may also be a list (each
    method is a job of the sweep; default both ``nearest`` and ``qubo``);
    ``calibration_samples``: training examples of the layer objectives.  :meth:`job` is the core
    config of one method."""

    method: Any = field(default_factory=lambda: ["nearest", "qubo"])
    calibration_samples: int = 2048

    def __post_init__(self) -> None:  # each method's job is validated by the core config
        methods = as_list(self.method, "rounding.method")
        self.method = [str(Method.parse(m, "rounding.method")) for m in methods]
        for m in self.method:
            self.job(m)
        _positive("rounding", calibration_samples=self.calibration_samples)

    def job(self, method: str) -> CoreRoundingConfig:
        """The ``tq.round_weights`` config of ``method``."""
        core = {f.name: getattr(self, f.name) for f in fields(CoreRoundingConfig)}
        return CoreRoundingConfig(**(core | {"method": method}))


@dataclass
class VerifyConfig(CoreVerifyConfig):
    """A :class:`torchqv.verify.VerifyConfig` for the recipes: ``tq.verify_equivalence`` of the
    float network f and each rounded f' on the L-infinity balls of radius ``delta`` (inside
    ``domain``, default [0, 1]) around the first ``points`` test inputs as f' sees them (rounded
    to its input grid when it quantizes its input, so that every ball holds grid points);
    ``timeout`` in seconds per ball (default 10).  ``delta``: a number, or ``"<k> steps"``: k
    steps of f''s input grid (a ball then holds ``2 * floor(k) + 1`` grid points per coordinate,
    at least ``floor(k) + 1`` at the domain's edges; a float input has no grid: an error).  The
    results name each ball's number of input grid points.  Networks the verifier cannot read
    (e.g. products of two tensors) are found before training: their verification is skipped with the reason,
    logged and recorded in the results.  ``workers``: the balls are decided on a local pool of
    that many processes, started once per job (1: in the job's process; the verdicts are the
    same).  Whether or not ``enabled``, the exact simulation is checked against
    ``tq.reference_forward`` on the first ``reference_points`` test inputs (when activations and
    input are quantized: bit-exact only on grids)."""

    delta: Any = 0.01
    timeout: float = 10.0
    domain: Any = field(default_factory=lambda: [0.0, 1.0])
    enabled: bool = True
    points: int = 4
    reference_points: int = 32

    @property
    def delta_steps(self) -> float | None:
        """``k`` of ``delta="<k> steps"`` (``None``: ``delta`` is a number)."""
        return delta_steps(self.delta)

    def __post_init__(self) -> None:
        steps = self.delta_steps  # "<k> steps": the core config checks a number, the radius comes later
        radius = exact_or_none(self.delta)
        if steps is None and (radius is None or radius < 0):
            raise ConfigError(
                f"verify.delta must be a finite number >= 0 or '<k> steps' (k > 0 steps of the input grid), "
                f"got {self.delta!r}"
            )
        delta = self.delta
        if steps is not None:
            self.delta = None
        try:
            super().__post_init__()
        finally:
            self.delta = delta
        _positive("verify", points=self.points)
        if self.reference_points < 0:
            raise ConfigError(f"verify.reference_points must be >= 0, got {self.reference_points}")

    def job(self, delta: Any = None) -> CoreVerifyConfig:
        """The ``tq.verify_equivalence`` config (without the recipe's own fields); ``delta``: the
        radius to use (a number: needed when ``delta`` counts input grid steps)."""
        core = {f.name: getattr(self, f.name) for f in fields(CoreVerifyConfig)}
        if delta is None and self.delta_steps is not None:
            raise ConfigError(f"verify.delta={self.delta!r}: give the radius of f''s input grid to job()")
        return CoreVerifyConfig(**(core | ({"delta": delta} if delta is not None else {})))


@dataclass
class TrainerConfig:
    """Float training (Adam, cross entropy) with a Lightning Trainer: ``epochs``, ``lr``,
    ``lr_schedule`` (``constant`` or ``cosine`` annealing to 0 over the epochs), ``batch_size``
    (``None``: the whole training set), ``accelerator`` (``cpu``), ``seed``;
    ``threads``: torch's CPU threads (``None``: torch's default); ``progress``: progress bars
    (Lightning's and the recipe's; ``None``: only when stderr is a terminal, so logs and pipes get
    no bar text)."""

    epochs: int = 60
    lr: float = 3e-3
    lr_schedule: str = "constant"
    batch_size: int | None = 64
    accelerator: str = "cpu"
    seed: int = 0
    threads: int | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"trainer.epochs must be >= 0, got {self.epochs}")
        _choice("trainer", "lr_schedule", self.lr_schedule, ("constant", "cosine"))
        _positive("trainer", lr=self.lr, batch_size=self.batch_size, threads=self.threads)


@dataclass
class RunConfig:
    """``recipes/run.py``: train (or load) a network, quantize it (PTQ or QAT) at each of
    ``quant.bits``, round its weights with each of ``rounding.method``, check the simulation
    against the integer reference, verify, report."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    rounding: RoundingConfig = field(default_factory=RoundingConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        q, v = self.quant, self.verify
        floating = q.input_bits is None or (q.input_bits == "activation" and q.activation_bits is None)
        if v.enabled and v.delta_steps is not None and floating:
            raise ConfigError(
                f"verify.delta={v.delta!r} counts steps of the input grid, but the input is float "
                f"(quant.input_bits={q.input_bits!r}, quant.activation_bits={q.activation_bits!r}): give "
                "verify.delta as a number (e.g. 0.01), or quantize the input (quant.input_bits=8)"
            )
        name = self.dataset.name
        if self.model.kind == "cnn" and self.model.target is None and name in TABULAR and name not in IMAGES:
            raise ConfigError(f"model.kind='cnn' needs images; dataset {name!r} is tabular")


# ------------------------------------------------------------------------- other recipes
@dataclass
class Ceg4nRecipeConfig:
    """``recipes/ceg4n.py`` (Matos Júnior, "An automated method for neural network quantization
    refinement" (PhD thesis, UFAM, 2025), Tables 2, 3 and 6): CEG4N's ``search_bits`` for each of
    ``networks`` (names in :data:`torchqv.recipes.ceg4n.NETWORKS`) and each of ``deltas``, with
    ``search`` (a :class:`~torchqv.verify.ceg4n.BitSearchConfig`; sweep ``search.mode`` for the
    full fixed-point mode; ``search.verify`` says what "equivalent" means and how each region is
    verified: ``search.verify.relation``, ``.timeout``, ``.workers``...; inputs stay in [0, 1]).
    Networks of the embedded sets are trained full batch (``epochs``, ``lr``, ``seed``); critical
    points: one correctly classified test point per class (``points``: ``margin``, the largest
    logit margin, or ``first``).  ONNX networks are read from ``<data_root>/onnx`` and their points
    taken from MNIST's test split under ``data_root``
    (``None``: ``$TORCHQV_DATA``, else ``./data``); a missing file skips the network."""

    networks: list[str] = field(
        default_factory=lambda: [
            "iris_4x2", "iris_10x2", "iris_15x2", "seeds_4x1", "seeds_6x1", "seeds_10x1", "seeds_15x1",
            "mnist_256x2",
        ]
    )  # fmt: skip
    deltas: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.05])
    bits: list[int] = field(default_factory=lambda: [2, 32])
    search: BitSearchConfig = field(default_factory=BitSearchConfig)
    points: str = "margin"
    epochs: int = 2000
    lr: float = 0.01
    seed: int = 0
    data_root: str | None = None
    cache_dir: str | None = None
    calibration_samples: int = 1024
    threads: int | None = None
    progress: bool | None = None  # None: only on a terminal (torchqv.progress)

    def __post_init__(self) -> None:
        from .ceg4n import NETWORKS

        for name in self.networks:
            _choice("ceg4n", "networks", name, tuple(NETWORKS))
        _choice("ceg4n", "points", self.points, ("margin", "first"))
        if len(self.bits) != 2:
            raise ConfigError(f"ceg4n.bits must be a range [lo, hi], got {self.bits}")
        if any(not (math.isfinite(d) and d >= 0) for d in self.deltas) or not self.deltas:
            raise ConfigError(f"ceg4n.deltas must be a non-empty list of numbers >= 0, got {self.deltas}")
        _positive("ceg4n", lr=self.lr, calibration_samples=self.calibration_samples, threads=self.threads)


@dataclass
class DegradationRecipeConfig:
    """``recipes/degradation.py`` (Anonymous, "On the expressive power of weight quantization in deep neural
    networks" (ICLR submission), sec. 4): ``experiment`` ``regression`` (sec. 4.1,
    :func:`~torchqv.theory.degradation.run_regression`) or ``mnist`` (sec. 4.2,
    :func:`~torchqv.theory.degradation_mnist.run_mnist`), configured by ``regression`` / ``mnist``."""

    experiment: str = "regression"
    regression: DegradationConfig = field(default_factory=DegradationConfig)
    mnist: MnistDegradationConfig = field(default_factory=MnistDegradationConfig)

    def __post_init__(self) -> None:
        _choice("degradation", "experiment", self.experiment, ("regression", "mnist"))


@dataclass
class RepresentabilityRecipeConfig:
    """``recipes/representability.py`` (Park, Park & Hwang, "On expressive power of quantized neural networks
    under fixed-point arithmetic", sec. 3): the verdict of every activation, ``p``
    in ``ps`` and admissible ``s`` (:func:`~torchqv.theory.universality.representability_table`)."""

    activations: list[str] = field(default_factory=lambda: list(PAPER_ACTIVATIONS))
    ps: list[int] = field(default_factory=lambda: list(range(2, 9)))
    exact: bool = False
    progress: bool | None = None  # None: only on a terminal (torchqv.progress)

    def __post_init__(self) -> None:
        if not self.activations or not self.ps or any(p < 1 for p in self.ps):
            raise ConfigError(
                f"representability needs activations and ps >= 1, got {self.activations}, {self.ps}"
            )


SCHEMAS: dict[str, type] = {
    "run_schema": RunConfig,
    "ceg4n_schema": Ceg4nRecipeConfig,
    "degradation_schema": DegradationRecipeConfig,
    "representability_schema": RepresentabilityRecipeConfig,
}


def register() -> ConfigStore:
    """Store the root schemas in Hydra's ConfigStore (idempotent; done when this module loads)."""
    cs = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        cs.store(name=name, node=schema)
    return cs


T = TypeVar("T")


def _extra_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys that are not fields of the node's dataclass (Hydra's ``+key=value`` adds them anyway)."""
    schema = OmegaConf.get_type(node)
    if not is_dataclass(schema):
        return []
    names = {f.name for f in fields(schema)}
    out = []
    for key in node:
        child = node.get(key)
        if key not in names:
            out.append(f"{prefix}{key!s}")
        elif isinstance(child, DictConfig):
            out += _extra_keys(child, f"{prefix}{key}.")
    return out


def as_config(cfg: Any, schema: type[T]) -> T:
    """The dataclass ``schema`` from a composed config (a DictConfig or a dict): keys and types
    checked against the dataclasses, values by their ``__post_init__``."""
    if isinstance(cfg, schema):
        return cfg
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    node = OmegaConf.merge(OmegaConf.structured(schema), node)
    assert isinstance(node, DictConfig)  # merged into the dataclass schema
    extra = _extra_keys(node)
    if extra:
        raise ConfigError(
            f"unknown config key(s) {extra}: not fields of {schema.__name__} (a typo in an override?); "
            "list the valid keys with: python recipes/<recipe>.py --cfg job"
        )
    return OmegaConf.to_object(node)  # type: ignore[return-value]


register()
