"""The main recipe: train or load a network, quantize (PTQ or QAT), round (nearest or QUBO),
check against the integer reference, verify, report (torchqv.recipes.run).

    python recipes/run.py                                  # make demo: digits, W8/4/2 A8 I8, nearest vs QUBO
    python recipes/run.py dataset=mnist dataset.root=../shared/data model.hidden=[256,128] verify.delta=0.004
    python recipes/run.py -m quant.bits=1,2,4,8           # a job per weight width (activations, input: 8)
    python recipes/run.py model=cnn                         # conv + max pool (verification skipped, said why)
    python recipes/run.py -m --config-name qubo_paper   # MNIST, Fashion-MNIST, EMNIST, CIFAR-10

The ``qubo_paper`` config follows Muñiz Subiñas et al., "Optimization of the quantization of dense neural
networks from an exact QUBO formulation".

Outputs (results.json, results.md, accuracy.png, rounding.png, verification.png) go to Hydra's
run folder, outputs/<config>/<time>/; a sweep's jobs and their combined report to multirun/<config>/<time>/.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from torchqv.recipes.run import run


@hydra.main(version_base=None, config_path="../conf", config_name="run")
def main(cfg: DictConfig) -> None:
    run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
