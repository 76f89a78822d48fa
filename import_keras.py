"""Import a Keras model: ``python import_keras.py keras_path=model.keras class_names=[...]``."""

import hydra
from omegaconf import DictConfig

from product_cnn.cli import run
from product_cnn.tasks import import_keras


@hydra.main(version_base="1.3", config_path="conf", config_name="import_keras")
def main(cfg: DictConfig) -> None:
    """Write a project checkpoint of the Keras network and weights."""
    run(import_keras, cfg)


if __name__ == "__main__":
    main()
