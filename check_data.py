"""Check a photo folder before training: ``python check_data.py data.root=/photos`` (conf/check_data.yaml)."""

import sys

import hydra
from omegaconf import DictConfig

from product_cnn.cli import run
from product_cnn.tasks import check_data


@hydra.main(version_base="1.3", config_path="conf", config_name="check_data")
def main(cfg: DictConfig) -> None:
    """Print the data summary; exit status 1 when some photos cannot be read."""
    if run(check_data, cfg):
        sys.exit(1)


if __name__ == "__main__":
    main()
