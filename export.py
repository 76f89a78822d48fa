"""Export a checkpoint: ``python export.py ckpt_path=... format=onnx|torchscript`` (conf/export.yaml)."""

import hydra
from omegaconf import DictConfig

from product_cnn.cli import run
from product_cnn.tasks import export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """Write the model file and its JSON sidecar."""
    run(export, cfg)


if __name__ == "__main__":
    main()
