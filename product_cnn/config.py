"""Composing the Hydra configs from Python (benchmarks, tests, notebooks) as a command would."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(config_name: str, overrides: list[str], output_dir: str | Path,
                   cache_dir: str | Path | None = None) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, writing under ``output_dir``.

    Equivalent to ``python <config_name>.py <overrides> hydra.run.dir=<output_dir>`` up to the
    point where the task function is called; ``cache_dir`` replaces ``paths.cache_dir``.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
    GlobalHydra.instance().clear()
    return cfg
