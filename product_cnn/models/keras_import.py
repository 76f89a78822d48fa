"""Bring a trained Keras model of the original network over: ``.keras``, ``.h5`` or ``.weights.h5``.

Files are read with h5py and json only (a ``.keras`` file is a zip of ``config.json`` and
``model.weights.h5``): TensorFlow is not needed and nothing in the file is executed. The
network in the file must be the original one (:class:`~product_cnn.models.mirror.KerasCNN`), layer for
layer; the first difference is refused in one line. Weights are mapped exactly: convolution
kernels HWIO -> OIHW, dense kernels transposed (the first one's rows reordered, since Keras
flattens NHWC and we flatten NCHW), BatchNorm gamma, beta, moving mean and variance.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from product_cnn.data.images import ImageSize, image_hw
from product_cnn.errors import ProductCNNError
from product_cnn.models.mirror import KERAS_BN_EPS, feature_map_size


class KerasImportError(ProductCNNError):
    """The Keras file cannot be read or is not the original network."""


@dataclass
class KerasLayer:
    """One layer of the file: its class, its config (empty for weights-only files), its weights."""

    name: str
    kind: str  # Keras class name: Conv2D, BatchNormalization, ...
    config: dict[str, Any] = field(default_factory=dict)
    weights: list[np.ndarray] = field(default_factory=list)


# The original network, layer for layer: (Keras class, what must hold). The second Flatten of the
# original code block (a no-op on a flat tensor) may be there or not.
ORIGINAL = [
    ("Conv2D", {"filters": 64, "kernel_size": [6, 6], "activation": "relu"}),
    ("BatchNormalization", {}),
    ("MaxPooling2D", {"pool_size": [2, 2]}),
    ("Conv2D", {"filters": 16, "kernel_size": [3, 3], "activation": "relu"}),
    ("BatchNormalization", {}),
    ("MaxPooling2D", {"pool_size": [2, 2]}),
    ("Flatten", {}),
    ("Dense", {"units": 64, "activation": "relu"}),
    ("BatchNormalization", {}),
    ("Dropout", {}),
    ("Flatten?", {}),
    ("Dense", {"units": 16, "activation": "relu"}),
    ("BatchNormalization", {}),
    ("Dropout", {}),
    ("Dense", {"activation": "softmax"}),
]
# Keras names of the weights of each layer kind, in the order Keras builds them
WEIGHT_NAMES = {"Conv2D": ("kernel", "bias"), "Dense": ("kernel", "bias"),
                "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance")}


def read_keras(path: str | Path) -> tuple[list[KerasLayer], list[int] | None]:
    """The layers (with weights) of a Keras file, and its input shape ``[H, W, C]`` when recorded."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise KerasImportError(f"keras_path={path} does not exist")
    head = path.read_bytes()[:8]
    try:
        if head.startswith(b"PK"):
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
                weights = io.BytesIO(archive.read("model.weights.h5"))
            return _read_keras3(config, weights, path)
        if head.startswith(b"\x89HDF"):
            import h5py

            with h5py.File(path, "r") as h5:
                if "model_config" in h5.attrs:
                    return _read_legacy_h5(h5, path)
                if "layer_names" in h5.attrs:  # Keras 2's save_weights("x.h5")
                    return _weights_only(_legacy_weights(h5, [_text(n) for n in h5.attrs["layer_names"]]),
                                         path), None
                if "layers" in h5:
                    return _read_keras3(None, path, path)
                raise KerasImportError(f"{path} is an HDF5 file but not a Keras model or weights file")
    except KerasImportError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise KerasImportError(f"{path} cannot be read as a Keras file (truncated or damaged?): "
                               f"{first}") from None
    raise KerasImportError(f"{path} is neither a .keras (zip) nor an .h5 (HDF5) Keras file")


def _layer_configs(config: dict[str, Any], path: Path) -> tuple[list[dict[str, Any]], list[int] | None]:
    """The layer list of a Sequential model config, the InputLayer taken out as the input shape."""
    if config.get("class_name") != "Sequential":
        raise KerasImportError(f"{path} holds a Keras {config.get('class_name')!r} model, not the original "
                               "Sequential network")
    layers = list(config["config"]["layers"])
    shape = None
    if layers and layers[0].get("class_name") == "InputLayer":
        cfg = layers.pop(0)["config"]
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    elif layers:
        shape = layers[0]["config"].get("batch_input_shape")  # Keras 2 puts it on the first layer
    return layers, (list(shape[1:]) if shape else None)


def _read_keras3(config: dict[str, Any] | None, weights: Any,
                 path: Path) -> tuple[list[KerasLayer], list[int] | None]:
    """Keras 3 weights layout (``layers/<name>/vars/<i>``), with or without the model config."""
    import h5py

    with h5py.File(weights, "r") as h5:
        groups = h5["layers"]
        stored = {name: [np.asarray(groups[name]["vars"][str(i)]) for i in range(len(groups[name]["vars"]))]
                  for name in groups if "vars" in groups[name]}
    if config is not None:
        layer_configs, shape = _layer_configs(config, path)
        layers = [KerasLayer(c["config"]["name"], c["class_name"], c["config"],
                             stored.get(c["config"]["name"], [])) for c in layer_configs]
        return layers, shape
    return _weights_only(stored, path), None


def _weights_only(stored: dict[str, list[np.ndarray]], path: Path) -> list[KerasLayer]:
    """The 9 weighted layers of a file without a model config: kinds and order from the layer
    names Keras gives (``conv2d``, ``conv2d_1``, ... in creation order, also ``conv2d_46``...)."""
    kinds = {"conv2d": "Conv2D", "batch_normalization": "BatchNormalization", "dense": "Dense"}
    found = []
    for name, values in stored.items():
        match = re.fullmatch(r"([a-z_0-9]+?)(?:_(\d+))?", name)
        kind = kinds.get(match.group(1)) if match else None
        if kind is None:
            if values:
                raise KerasImportError(f"{path}: layer {name!r} with weights is not part of the "
                                       "original network")
            continue
        found.append((int(match.group(2) or 0), kind, name, values))
    order = {"Conv2D": [], "BatchNormalization": [], "Dense": []}
    for _, kind, name, values in sorted(found):
        order[kind].append(KerasLayer(name, kind, {}, values))
    conv, bn, dense = order["Conv2D"], order["BatchNormalization"], order["Dense"]
    if (len(conv), len(bn), len(dense)) != (2, 4, 3):
        raise KerasImportError(f"{path} holds {len(conv)} convolution, {len(bn)} BatchNorm and {len(dense)} "
                               "dense layers; the original network has 2, 4 and 3")
    return [conv[0], bn[0], conv[1], bn[1], dense[0], bn[2], dense[1], bn[3], dense[2]]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _legacy_weights(group: Any, names: list[str]) -> dict[str, list[np.ndarray]]:
    """Layer name -> weights in Keras' build order, from the legacy HDF5 layout (``weight_names``)."""
    out = {}
    for name in names:
        values = {}
        if name in group:
            for weight_name in group[name].attrs.get("weight_names", []):
                weight_name = _text(weight_name)
                key = weight_name.rsplit("/", 1)[-1].split(":")[0]  # ".../conv2d/kernel:0" -> kernel
                values[key] = np.asarray(group[name][weight_name])
        order = next((names_ for names_ in WEIGHT_NAMES.values() if set(names_) == set(values)), ())
        out[name] = [values[k] for k in order]
    return out


def _read_legacy_h5(h5: Any, path: Path) -> tuple[list[KerasLayer], list[int] | None]:
    """The HDF5 format of ``model.save("x.h5")`` (Keras 2, and Keras 3's legacy writer)."""
    config = json.loads(h5.attrs["model_config"])
    layer_configs, shape = _layer_configs(config, path)
    names = [c["config"]["name"] for c in layer_configs]
    weights = _legacy_weights(h5["model_weights"], names)
    return [KerasLayer(c["config"]["name"], c["class_name"], c["config"], weights[c["config"]["name"]])
            for c in layer_configs], shape


def check_original(layers: Sequence[KerasLayer], path: str | Path) -> list[KerasLayer]:
    """The layers with weights, after checking they make the original network; else the first difference."""
    if layers and not layers[0].config:  # weights-only file: read_keras already checked kinds and count
        return list(layers)
    expected = list(ORIGINAL)
    index = 0
    for layer in layers:
        while expected and expected[0][0] == "Flatten?" and layer.kind != "Flatten":
            expected.pop(0)
        if not expected:
            raise KerasImportError(f"{path}: layer {index + 1} {layer.name} ({layer.kind}) is one more "
                                   "than the original network has")
        kind, must = expected.pop(0)
        kind = kind.rstrip("?")
        where = f"{path}: layer {index + 1} {layer.name}"
        if layer.kind != kind:
            raise KerasImportError(f"{where} is a {layer.kind}; the original network has a {kind} there")
        for key, value in must.items():
            got = layer.config.get(key)
            got = list(got) if isinstance(got, (list, tuple)) else got
            if got != value:
                raise KerasImportError(f"{where} has {key}={got}; the original network has {key}={value}")
        if kind in ("Conv2D", "MaxPooling2D") and layer.config.get("padding", "valid") != "valid":
            raise KerasImportError(f"{where} has padding={layer.config.get('padding')}; "
                                   "the original has 'valid'")
        if kind == "Conv2D" and list(layer.config.get("strides", [1, 1])) != [1, 1]:
            raise KerasImportError(f"{where} has strides={layer.config.get('strides')}; "
                                   "the original has [1, 1]")
        epsilon = layer.config.get("epsilon", KERAS_BN_EPS)
        if kind == "BatchNormalization" and not np.isclose(epsilon, KERAS_BN_EPS):
            raise KerasImportError(f"{where} has epsilon={layer.config.get('epsilon')}; "
                                   f"the original has {KERAS_BN_EPS}")
        index += 1
    missing = [k.rstrip("?") for k, _ in expected if not k.endswith("?")]
    if missing:
        raise KerasImportError(f"{path} ends after {index} layers; the original network goes on with "
                               f"{missing[0]}")
    return [layer for layer in layers if layer.kind in WEIGHT_NAMES]


def to_state_dict(layers: Sequence[KerasLayer], image_size: ImageSize,
                  path: str | Path) -> dict[str, torch.Tensor]:
    """``KerasCNN``'s state dict from the weighted layers: conv, bn, conv, bn, dense, bn, dense, bn, dense."""
    targets = ["features.0", "features.2", "features.4", "features.6", "classifier.0", "classifier.2",
               "classifier.4", "classifier.6", "classifier.8"]
    fh, fw = feature_map_size(image_size)
    state: dict[str, torch.Tensor] = {}
    for number, (layer, target) in enumerate(zip(layers, targets, strict=True)):
        names = WEIGHT_NAMES[layer.kind]
        if len(layer.weights) != len(names):
            raise KerasImportError(f"{path}: layer {layer.name} has {len(layer.weights)} weight arrays, "
                                   f"expected {len(names)} ({', '.join(names)})")
        values = dict(zip(names, (np.asarray(w, dtype=np.float32) for w in layer.weights), strict=True))
        if layer.kind == "Conv2D":
            state[f"{target}.weight"] = torch.from_numpy(values["kernel"].transpose(3, 2, 0, 1).copy())
            state[f"{target}.bias"] = torch.from_numpy(values["bias"])
        elif layer.kind == "Dense":
            kernel = values["kernel"]
            if number == 4:  # rows in Keras' NHWC flatten order -> our NCHW order
                channels = kernel.shape[0] // (fh * fw)
                if channels * fh * fw != kernel.shape[0]:
                    raise KerasImportError(f"{path}: the first dense layer takes {kernel.shape[0]} inputs; "
                                           f"at image_size {image_hw(image_size)} this network flattens "
                                           f"{16 * fh * fw} (another input size?)")
                kernel = kernel.reshape(fh, fw, channels, -1).transpose(2, 0, 1, 3)
                kernel = kernel.reshape(channels * fh * fw, -1)
            state[f"{target}.weight"] = torch.from_numpy(kernel.T.copy())
            state[f"{target}.bias"] = torch.from_numpy(values["bias"])
        else:
            state[f"{target}.weight"] = torch.from_numpy(values["gamma"])
            state[f"{target}.bias"] = torch.from_numpy(values["beta"])
            state[f"{target}.running_mean"] = torch.from_numpy(values["moving_mean"])
            state[f"{target}.running_var"] = torch.from_numpy(values["moving_variance"])
            state[f"{target}.num_batches_tracked"] = torch.tensor(0)
    return state


def infer_image_size(layers: Sequence[KerasLayer]) -> int | None:
    """The square input size whose flatten matches the first dense layer's inputs, if there is one."""
    inputs = layers[4].weights[0].shape[0] if len(layers) > 4 and layers[4].weights else None
    for side in range(14, 4097):
        fh, fw = feature_map_size(side)
        if 16 * fh * fw == inputs:
            return side
        if 16 * fh * fw > (inputs or 0):
            return None
    return None
