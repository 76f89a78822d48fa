import hashlib

import pytest

from product_cnn.data.demo import CLASS_NAMES, ensure_demo_dataset, generate
from product_cnn.errors import DataError


def _digest(root):
    files = sorted(p for p in root.rglob("*.jpg"))
    return [(p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]


def test_generator_is_deterministic(tmp_path):
    generate(tmp_path / "a", images_per_class=3, seed=5)
    generate(tmp_path / "b", images_per_class=3, seed=5)
    generate(tmp_path / "c", images_per_class=3, seed=6)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert len(a) == 15 and {name.split("/")[0] for name, _ in a} == set(CLASS_NAMES)
    assert [h for _, h in a] != [h for _, h in c]
    assert len({h for _, h in a}) == 15  # every picture differs


def test_demo_tree_is_written_once_then_reused(tmp_path):
    root = ensure_demo_dataset(tmp_path / "demo", images_per_class=2, seed=0)
    first = root / "Home" / "0000.jpg"
    mtime = first.stat().st_mtime_ns
    assert ensure_demo_dataset(tmp_path / "demo", images_per_class=2, seed=0) == root
    assert first.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folder left behind


def test_demo_never_writes_into_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not a demo data set"):
        ensure_demo_dataset(tmp_path / "mine", images_per_class=2)
    ensure_demo_dataset(tmp_path / "demo", images_per_class=2, seed=0)
    with pytest.raises(DataError, match="different demo data set"):
        ensure_demo_dataset(tmp_path / "demo", images_per_class=3, seed=0)


def test_empty_cache_variable_means_the_default_cache_folder(tmp_path, monkeypatch):
    from pathlib import Path

    from hydra.utils import instantiate

    from product_cnn.config import compose_config

    def demo_data():  # the data module the default config builds (it writes nothing yet)
        return instantiate(compose_config("train", [], tmp_path / "run").data, _convert_="all")

    monkeypatch.setenv("PRODUCT_CNN_CACHE", "")
    data = demo_data()
    assert data.cache_dir == str(Path("~/.cache/product-cnn").expanduser())
    assert data.hparams.root.startswith(data.cache_dir)  # not "/demo-v4" at the file system root
    monkeypatch.setenv("PRODUCT_CNN_CACHE", str(tmp_path / "c"))
    assert demo_data().cache_dir == str(tmp_path / "c")


def test_configs_compose_and_resolve_without_importing_the_package(tmp_path):
    """Another program composing conf/train.yaml needs no resolver of ours."""
    import subprocess
    import sys

    from tests.helpers import CONF_DIR

    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from omegaconf import OmegaConf\n"
        f"with initialize_config_dir(version_base='1.3', config_dir={str(CONF_DIR)!r}):\n"
        "    cfg = compose('train', overrides=['paths.output_dir=/tmp/x'])\n"
        "print(OmegaConf.to_container(cfg, resolve=True)['data']['cache_dir'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "None"
