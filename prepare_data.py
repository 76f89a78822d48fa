"""Make litdata shards of a photo folder (or a path,label CSV) for data=streaming:
``python prepare_data.py data.root=/photos output=/shards`` (conf/prepare_data.yaml, docs/scaling.md)."""

import hydra
from omegaconf import DictConfig

from product_cnn.cli import run
from product_cnn.tasks import prepare_data


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    """Write the shards and their manifest; a run interrupted and started again resumes."""
    run(prepare_data, cfg)


if __name__ == "__main__":
    main()
