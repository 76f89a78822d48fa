"""Classify photos: ``python predict.py ckpt_path=... inputs=<file|folder|glob>`` (conf/predict.yaml)."""

import sys

import hydra
from omegaconf import DictConfig

from product_cnn.cli import run
from product_cnn.tasks import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Write predictions; exit status 1 when some inputs could not be read."""
    failed = run(predict, cfg)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
