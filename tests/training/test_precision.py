"""trainer.precision=auto: bf16-mixed only where the device computes bf16 natively; overrides win."""

import pytest

from product_cnn.models.precision import resolve_precision


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx2", "fma"}, "32-true"),  # AVX2-only EPYC
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16-mixed"),  # Zen 4
    ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "bf16-mixed"),  # Sapphire Rapids
    ({"avx512f"}, "32-true"),  # AVX-512 without bf16
])
def test_cpu_flags_decide(flags, expected):
    precision, reason = resolve_precision("auto", "cpu", flags=flags)
    assert precision == expected and reason
    if expected == "bf16-mixed":
        assert any(f in reason for f in ("avx512_bf16", "amx_bf16"))


def test_gpu_support_decides_and_overrides_win():
    assert resolve_precision("auto", "gpu", cuda_bf16=True)[0] == "bf16-mixed"
    assert resolve_precision("auto", "gpu", cuda_bf16=False)[0] == "32-true"
    assert resolve_precision("32-true", "cpu", flags={"amx_bf16"}) == ("32-true", None)
    assert resolve_precision("bf16-mixed", "cpu", flags=set()) == ("bf16-mixed", None)


def test_auto_reaches_the_trainer(train_cfg, tree_factory, monkeypatch, caplog):
    import logging

    from product_cnn.models import precision
    from product_cnn.tasks import train

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    root = tree_factory({"Bags": 6, "Cups": 6})
    with caplog.at_level(logging.INFO, logger="product_cnn.training.trainer"):
        train(train_cfg("data=folder", f"data.root={root}", "debug=fdr", "trainer.precision=auto"))
    assert "Precision 32-true: the CPU has no native bf16" in caplog.text


def test_the_default_is_auto_and_the_original_run_stays_fp32(tmp_path):
    from product_cnn.config import compose_config

    def precision(*overrides: str) -> str:
        return compose_config("train", list(overrides), tmp_path / "run").trainer.precision

    assert precision() == "auto"
    assert precision("experiment=original") == "32-true"
    assert precision("trainer.precision=32-true") == "32-true"


def test_auto_follows_a_trained_checkpoint_for_eval():
    """eval.py's trainer: a checkpoint trained in fp32 is tested in fp32 even on a CPU with native
    bf16, so its report gives the probabilities predict.py gives; a bf16 one in bf16 where native."""
    native = {"avx512_bf16"}
    assert resolve_precision("auto", "cpu", flags=native, trained="32")[0] == "32-true"
    assert resolve_precision("auto", "cpu", flags=native, trained="bf16")[0] == "bf16-mixed"
    assert resolve_precision("auto", "cpu", flags={"avx2"}, trained="bf16")[0] == "32-true"
    assert resolve_precision("bf16-mixed", "cpu", flags=native, trained="32") == ("bf16-mixed", None)
