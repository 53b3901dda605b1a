"""Anonymous, "On the expressive power of weight quantization in deep neural networks" (ICLR submission), sec.
4: output gap vs weight gap vs bits (torchqv.theory.degradation, torchqv.recipes.theory).

OMP_NUM_THREADS=1 python recipes/degradation.py                        # sec. 4.1 regression
OMP_NUM_THREADS=1 python recipes/degradation.py experiment=mnist mnist.data_root=../shared/data
python recipes/degradation.py -m regression.seed=0,1,2,3,4              # + combined table and plot
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from torchqv.recipes.theory import run_degradation


@hydra.main(version_base=None, config_path="../conf", config_name="degradation")
def main(cfg: DictConfig) -> None:
    run_degradation(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
