"""Hydra recipes (``recipes/*.py`` with the YAML configs in ``conf/``): the job functions and their
structured configs, importable without Hydra's command line.

``run.run`` (train or load, quantize, round, verify, report; also the ``qubo_paper`` config),
``ceg4n.run_ceg4n`` (the bit-width search of Matos Júnior, "An automated method for neural network
quantization refinement", PhD thesis, 2025), ``theory.run_degradation`` (Anonymous, "On the expressive power
of weight quantization in deep neural networks" (ICLR submission)) and ``theory.run_representability``
(Park, Park & Hwang, "On expressive power of quantized neural networks under fixed-point arithmetic");
``report.aggregate`` combines a sweep's jobs. Every job takes its config (a dataclass of
:mod:`torchqv.recipes.config` or a composed
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
