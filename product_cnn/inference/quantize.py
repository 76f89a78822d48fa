"""``precision=int8``: a checkpoint's ONNX export quantized after training (ONNX Runtime's static
quantization, QDQ, per-channel weights), calibrated on the checkpoint's own held-out photos.

Only the convolutions are quantized (where the time goes), all but the first (on the photo's
pixels); the classifier layer, the softmax and the "none of these" similarity stay fp32. Min-max
calibration (docs/performance.md has the alternatives measured). An int8 model runs on OpenVINO
where installed (its int8 kernels), else ONNX Runtime. The int8 model is compared with the fp32 export on the
same held-out photos: under ``min_agreement`` top-1 agreement it is refused in one line and no
file is written; otherwise the sidecar records the agreement it was accepted with.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from product_cnn.atomic import atomic_path, write_text
from product_cnn.errors import ProductCNNError

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99  # top-1 agreement with fp32 on the held-out photos an int8 model must reach


@dataclass
class Agreement:
    """How an int8 model answers against its fp32 export on the same photos."""

    photos: int
    top1: float  # share of photos with the same top-1 category
    max_abs_diff: float  # largest change of any probability
    bound: float  # the min_agreement it was checked against


def heldout_images(ckpt_path: str | Path) -> np.ndarray:
    """The checkpoint's held-out photos (its validation and test splits, decoded as in training) as
    a uint8 ``(N, 3, H, W)`` array, or a one-line error naming what is missing."""
    from product_cnn.data.for_checkpoint import open_test_data
    from product_cnn.models.checkpoint import checkpoint_info, read_checkpoint

    info = checkpoint_info(read_checkpoint(ckpt_path))
    try:
        datamodule = open_test_data(info.data, image_size=info.image_size, decode=info.decode,
                                    class_names=info.class_names)
    except ProductCNNError as err:
        raise ProductCNNError(f"precision=int8 calibrates on the checkpoint's held-out photos: {err}") \
            from None
    batches = [batch[0].numpy() for batch in datamodule.test_dataloader()]
    datamodule.setup("validate")
    if datamodule.counts().get("val"):
        batches += [batch[0].numpy() for batch in datamodule.val_dataloader()]
    if not batches:
        raise ProductCNNError("precision=int8 calibrates on the checkpoint's held-out photos, and its data "
                              "set has none (a test or validation split)")
    return np.concatenate(batches)


def agreement(fp32_probs: np.ndarray, int8_probs: np.ndarray, bound: float) -> Agreement:
    """Top-1 agreement and the largest probability change of two models' answers."""
    same = float((fp32_probs.argmax(1) == int8_probs.argmax(1)).mean())
    return Agreement(len(fp32_probs), same, float(np.abs(fp32_probs - int8_probs).max()), bound)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_export(ckpt_path: str | Path, output: str | Path, *,
                    min_agreement: float | None = MIN_AGREEMENT) -> tuple[Path, Agreement]:
    """Write ``output`` (an int8 ``.onnx``) and its sidecar, or refuse in one line (nothing written);
    ``min_agreement`` None: :data:`MIN_AGREEMENT`."""
    min_agreement = MIN_AGREEMENT if min_agreement is None else min_agreement
    if not 0 < float(min_agreement) <= 1:
        raise ProductCNNError(f"int8_min_agreement={min_agreement} must be in (0, 1]")
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ProductCNNError('precision=int8 needs ONNX Runtime: pip install -e ".[export]"') from None
    from product_cnn.inference.export import export
    from product_cnn.inference.exported import int8_runtime, open_session

    output = Path(output)
    images = heldout_images(ckpt_path).astype(np.float32) / np.float32(255)
    scratch = Path(tempfile.mkdtemp(prefix=".int8-", dir=output.parent if output.parent.exists() else None))
    try:
        fp32 = export(ckpt_path, "onnx", scratch / "fp32.onnx")
        prepared = scratch / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(np.array_split(images, max(1, len(images) // 16)))

            def get_next(self) -> dict | None:
                batch = next(self.batches, None)
                return None if batch is None else {"images": batch}

        int8 = scratch / "int8.onnx"
        convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
        with _quiet_root_logger():  # the quantizer's per-tensor INFO lines go to the root logger
            quantize_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv"], nodes_to_exclude=convs[:1])  # the first: fp32
        quantized = open_session(int8, runtime=int8_runtime())
        found = agreement(open_session(fp32)(images)[0], quantized(images)[0], float(min_agreement))
        if found.top1 < found.bound:
            raise ProductCNNError(
                f"int8 agrees with fp32 on {found.top1:.1%} of the checkpoint's {found.photos} held-out "
                f"photos, under int8_min_agreement={found.bound:g}: keep fp32 (precision=auto) or lower "
                "the bound")
        meta = json.loads(Path(f"{fp32}.json").read_text())
        meta.update(format="onnx", precision="int8", int8=asdict(found))
        with atomic_path(output) as tmp:
            shutil.copyfile(int8, tmp)
        write_text(Path(f"{output}.json"), json.dumps(meta, indent=2) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("int8: %s (top-1 agreement with fp32 %.1f%% on %d held-out photos, largest probability "
             "change %.3f)", output, 100 * found.top1, found.photos, found.max_abs_diff)
    return output, found


def export_at(ckpt_path: str | Path, fmt: str, output: str | Path | None = None, *, precision: str = "32",
              min_agreement: float | None = None) -> Path:
    """export.py: ``fmt`` in fp32 (:func:`~product_cnn.inference.export.export`) or, with
    ``precision="int8"``, an int8 ONNX model next to the checkpoint (``best.int8.onnx``)."""
    from product_cnn.inference.export import export

    if str(precision) not in ("32", "int8"):
        raise ProductCNNError(f"precision={precision!r} is not one of 32, int8 (exports are fp32 or int8)")
    if str(precision) == "32":
        return export(ckpt_path, fmt, output)
    if fmt != "onnx":
        raise ProductCNNError("precision=int8 writes ONNX (format=onnx); OpenVINO runs it if installed")
    output = Path(output) if output else Path(ckpt_path).with_suffix(".int8.onnx")
    return quantize_export(ckpt_path, output, min_agreement=min_agreement)[0]
