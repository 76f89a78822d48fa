"""Serve a checkpoint over HTTP: ``python serve.py ckpt_path=...`` (conf/serve.yaml)."""

import hydra
from omegaconf import DictConfig

from product_cnn.cli import run
from product_cnn.tasks import serve


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    """Run the server until Ctrl-C."""
    run(serve, cfg)


if __name__ == "__main__":
    main()
