"""Train the product classifier: ``python train.py [hydra overrides]`` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from product_cnn.cli import run
from product_cnn.tasks import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train, test the best checkpoint, and return the optimised metric (for sweeps)."""
    metrics = run(train, cfg)  # None when this job of a sweep failed
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric and metrics is not None else None


if __name__ == "__main__":
    main()
