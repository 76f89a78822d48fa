"""Rank likely label errors: ``python find_label_issues.py cv_dir=<sweep>`` (conf/find_label_issues.yaml)."""

import hydra
from omegaconf import DictConfig

from product_cnn.cli import run
from product_cnn.tasks import find_label_issues


@hydra.main(version_base="1.3", config_path="conf", config_name="find_label_issues")
def main(cfg: DictConfig) -> None:
    """Write label_issues.csv and label_issues.html into the sweep folder."""
    run(find_label_issues, cfg)


if __name__ == "__main__":
    main()
