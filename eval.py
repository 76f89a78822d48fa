"""Test a saved checkpoint: ``python eval.py ckpt_path=... [data.root=...]`` (conf/eval.yaml)."""

import hydra
from omegaconf import DictConfig

from product_cnn.cli import run
from product_cnn.tasks import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    """Evaluate ``ckpt_path`` on its test split (or another data set)."""
    run(evaluate, cfg)


if __name__ == "__main__":
    main()
