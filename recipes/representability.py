"""Park, Park & Hwang, "On expressive power of quantized neural networks under fixed-point arithmetic", sec.
3: can Q_{p,s}-quantized networks represent every function? (torchqv.theory.universality)

python recipes/representability.py                       # p = 2..8, the paper's activations
python recipes/representability.py ps=[2,3,4] activations=[ReLU,Sigmoid] exact=true
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from torchqv.recipes.theory import run_representability


@hydra.main(version_base=None, config_path="../conf", config_name="representability")
def main(cfg: DictConfig) -> None:
    run_representability(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
