"""EfficientNet backbone + Swin head, built from a ModelConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
from keras import layers

from model.config import ModelConfig
from model.layers import ImageNormalization, SwinBlock, ToFloat

EMBEDDING_LAYER = "embedding"
OUTPUT_NAME = "p_ai"
# Short CPU runs take a few hundred steps: a slower average would leave inference statistics stale.
BN_MOMENTUM = 0.9


def _swish(x: Any) -> Any:
    return layers.Activation("swish")(x)


def _mbconv(x: Any, out_channels: int, stride: int, expand: int, name: str) -> Any:
    """EfficientNet's inverted residual block with squeeze-and-excitation."""
    in_channels = x.shape[-1]
    h = x
    if expand != 1:
        h = layers.Conv2D(in_channels * expand, 1, use_bias=False, name=f"{name}_expand")(h)
        h = _swish(layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_expand_bn")(h))
    h = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(h)
    h = _swish(layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(h))
    squeeze = max(1, in_channels // 4)
    se = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(h)
    se = layers.Conv2D(squeeze, 1, activation="swish", name=f"{name}_se_reduce")(se)
    se = layers.Conv2D(h.shape[-1], 1, activation="sigmoid", name=f"{name}_se_expand")(se)
    h = layers.Multiply(name=f"{name}_se")([h, se])
    h = layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_project")(h)
    h = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_project_bn")(h)
    if stride == 1 and in_channels == out_channels:
        h = layers.Add(name=f"{name}_add")([x, h])
    return h


def _tiny_effnet(pixels: Any, config: ModelConfig) -> Any:
    x = ImageNormalization(config.mean, config.std, name="normalize")(pixels)
    x = layers.Conv2D(config.stem_channels, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = _swish(layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x))
    for i, (channels, stride, expand) in enumerate(config.blocks):
        x = _mbconv(x, channels, stride, expand, name=f"block{i}")
    return x


def _efficientnetb0(pixels: Any, config: ModelConfig, weights: str | None) -> Any:
    # keras.applications' EfficientNet rescales and normalises 0..255 input itself.
    x = ToFloat(name="to_float")(pixels)
    backbone = keras.applications.EfficientNetB0(
        include_top=False,
        weights=weights,
        input_shape=(config.image_size, config.image_size, 3),
    )
    features = keras.Model(backbone.input, backbone.get_layer("block5c_add").output, name="efficientnetb0")
    return features(x)


def build_model(config: ModelConfig, weights: str | Path | None = None) -> keras.Model:
    """The detector: uint8 ``(size, size, 3)`` pixels -> P(ai).

    ``weights``: None (random init), ``"imagenet"`` (backbone, where keras can download it),
    or a path to a ``.weights.h5`` / ``.keras`` file of this architecture.
    """
    size = config.image_size
    pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    backbone_weights = "imagenet" if weights == "imagenet" else None
    if config.backbone == "tiny-effnet":
        features = _tiny_effnet(pixels, config)
    elif config.backbone == "efficientnetb0":
        features = _efficientnetb0(pixels, config, backbone_weights)
    else:
        raise ValueError(f"unknown backbone {config.backbone!r}")

    x = layers.Conv2D(config.swin_dim, 1, name="swin_embed")(features)
    window = min(config.swin_window, x.shape[1], x.shape[2])
    for i in range(config.swin_blocks):
        shift = window // 2 if (i % 2 == 1 and window < x.shape[1]) else 0
        x = SwinBlock(
            config.swin_dim,
            config.swin_heads,
            window,
            shift=shift,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
            name=f"swin{i}",
        )(x)
    x = layers.LayerNormalization(epsilon=1e-5, name="swin_norm")(x)
    embedding = layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(config.dropout, name="head_dropout")(embedding)
    output = layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(x)
    model = keras.Model(pixels, output, name=config.name)
    if weights is not None and weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        if path.suffix == ".keras":
            model.set_weights(keras.saving.load_model(path, compile=False).get_weights())
        else:
            model.load_weights(path)
    return model


def with_embedding(model: keras.Model) -> keras.Model:
    """The same network with its pooled embedding as a second output (for export/drift)."""
    return keras.Model(
        model.input,
        [model.output, model.get_layer(EMBEDDING_LAYER).output],
        name=f"{model.name}_export",
    )
