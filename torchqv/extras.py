"""Optional dependencies: the extras of ``pip install "torchqv[...]"`` and a clear error when one is missing.

The core (formats, quantize, graph, ops, reference, fake quantization, observers, kernels,
state dicts, batch-norm folding) needs only torch, numpy, mpmath and tqdm.  Everything else is an
extra, and each optional part calls :func:`require` where it first needs its package, so a missing
extra is a :class:`MissingExtraError` that names the install command instead of a bare
``ModuleNotFoundError`` from deep inside an import chain.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# the import name of each optional package -> (its distribution on PyPI, the extra that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "z3": ("z3-solver", "verify"),
    "scipy": ("scipy", "verify"),
    "neal": ("dwave-neal", "qubo"),
    "dimod": ("dwave-neal", "qubo"),  # dimod is installed with dwave-neal
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "google": ("onnx", "onnx"),  # protobuf (google.protobuf) is installed with onnx
    "pytorch_lightning": ("pytorch-lightning", "lightning"),
    "hydra": ("hydra-core", "recipes"),
    "omegaconf": ("hydra-core", "recipes"),  # omegaconf is installed with hydra-core
    "matplotlib": ("matplotlib", "recipes"),
    "torchvision": ("torchvision", "recipes"),
    "sklearn": ("scikit-learn", "recipes"),
    "dask": ("dask[distributed]", "parallel"),
    "joblib": ("joblib", "parallel"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    def __init__(self, feature: str, module: str, extra: str, distribution: str):
        self.feature, self.extra, self.distribution = feature, extra, distribution
        super().__init__(
            f'{feature} needs {distribution}: pip install "torchqv[{extra}]"',
            name=module,
        )


def require(module: str, feature: str, extra: str | None = None) -> ModuleType:
    """Import and return ``module`` (e.g. ``"z3"``, ``"sklearn.model_selection"``) for ``feature``
    (what needs it, e.g. ``"torchqv.verify"``); raise :class:`MissingExtraError` if its package is
    not installed.  ``extra`` defaults to the one :data:`PACKAGES` lists for the top-level package."""
    top = module.partition(".")[0]
    distribution, default_extra = PACKAGES.get(top, (top, None))
    extra = extra or default_extra
    if extra is None:
        raise ValueError(f"no extra is known for {top!r}; pass extra=")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # only the package itself missing (or blocked) is a missing extra: an ImportError raised
        # while an installed package imports is a real error and keeps its own message
        if exc.name is not None and exc.name.partition(".")[0] != top:
            raise
        raise MissingExtraError(feature, module, extra, distribution) from exc
