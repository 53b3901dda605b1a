"""Matos Júnior, "An automated method for neural network quantization refinement" (PhD thesis, UFAM, 2025)
(CEG4N): the cheapest per-layer bit widths proved equivalent, on the Iris, Seeds and MNIST networks of the
thesis' tables (torchqv.recipes.ceg4n).

    python recipes/ceg4n.py data_root=../shared/data                     # weights and biases (the thesis)
    python recipes/ceg4n.py -m search.mode=weights,full data_root=../shared/data
    python recipes/ceg4n.py networks=[iris_4x2] deltas=[0.05] search.time_limit=60
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from torchqv.recipes.ceg4n import run_ceg4n


@hydra.main(version_base=None, config_path="../conf", config_name="ceg4n")
def main(cfg: DictConfig) -> None:
    run_ceg4n(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
