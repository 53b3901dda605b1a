"""Hydra recipes (``recipes/*.py`` with the YAML configs in ``conf/``): the job functions and their
structured configs, importable without Hydra's command line.

``run.run`` (train or load, quantize, round, verify, report; also the ``qubo_paper`` config),
``ceg4n.run_ceg4n`` (paper 003's bit-width search), ``theory.run_degradation`` (paper 000) and
``theory.run_representability`` (paper 001); ``report.aggregate`` combines a sweep's jobs.
Every job takes its config (a dataclass of :mod:`torchqv.recipes.config` or a composed
DictConfig) and an output folder.
"""

from ..extras import require

# everything the recipes use comes with the [recipes] extra (it includes verify, qubo, onnx, lightning)
for _module in (
    "hydra",
    "omegaconf",
    "matplotlib",
    "torchvision",
    "sklearn",
    "pytorch_lightning",
    "z3",
    "scipy",
    "onnx",
):
    require(_module, "torchqv.recipes", "recipes")
del _module

from . import report  # noqa: E402, F401  (registers the torchqv.unique_folder resolver of conf/outputs.yaml)
from .config import (  # noqa: E402
    Ceg4nRecipeConfig,
    DatasetConfig,
    DegradationRecipeConfig,
    ModelConfig,
    QuantConfig,
    RepresentabilityRecipeConfig,
    RoundingConfig,
    RunConfig,
    TrainerConfig,
    VerifyConfig,
)

__all__ = [
    "Ceg4nRecipeConfig",
    "DatasetConfig",
    "DegradationRecipeConfig",
    "ModelConfig",
    "QuantConfig",
    "RepresentabilityRecipeConfig",
    "RoundingConfig",
    "RunConfig",
    "TrainerConfig",
    "VerifyConfig",
]
