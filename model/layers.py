"""Custom Keras 3 layers: backend-agnostic (keras.ops only) and exportable by tf2onnx.

Every op here converts to plain ONNX: GELU is written with ``erf`` (Keras's ``gelu`` becomes
``Erfc``, which tf2onnx cannot convert), the cyclic shift is two slices and a concat, and the
window masks and relative-position indices are constants computed in numpy.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import layers, ops

PACKAGE = "aidetect"


def gelu(x: Any) -> Any:
    """Exact GELU via erf (exports as ONNX Erf)."""
    return 0.5 * x * (1.0 + ops.erf(x / math.sqrt(2.0)))


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImageNormalization(layers.Layer):
    """uint8 (or 0..255 float) pixels -> (x/255 - mean) / std, inside the graph."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], **kwargs: Any):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        scale = ops.convert_to_tensor([1.0 / (255.0 * s) for s in self.std], dtype=self.compute_dtype)
        offset = ops.convert_to_tensor(
            [-m / s for m, s in zip(self.mean, self.std, strict=True)], dtype=self.compute_dtype
        )
        return x * scale + offset

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ToFloat(layers.Layer):
    """Cast pixels to the compute dtype (for backbones that normalise internally)."""

    def call(self, inputs: Any) -> Any:
        return ops.cast(inputs, self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape


def _relative_position_index(window: int) -> np.ndarray:
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    relative = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    relative = relative + (window - 1)
    return (relative[0] * (2 * window - 1) + relative[1]).astype("int32")  # N, N


def _shift_attention_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """Additive mask (windows, N, N): -100 between tokens that were not neighbours before the shift."""
    regions = np.zeros((height, width), dtype=np.int32)
    label = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[hs, ws] = label
            label += 1
    blocks = regions.reshape(height // window, window, width // window, window)
    windows = blocks.transpose(0, 2, 1, 3).reshape(-1, window * window)
    same = windows[:, :, None] == windows[:, None, :]
    return np.where(same, 0.0, -100.0).astype("float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class SwinBlock(layers.Layer):
    """One Swin Transformer block on a (batch, H, W, C) map.

    Window multi-head self-attention with a learned relative position bias, optionally on
    windows shifted by ``shift`` (with the attention mask that keeps wrapped-around tokens
    apart), followed by an MLP; both with pre-LayerNorm and residual connections.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shift: int = 0,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, window), got shift={shift}, window={window}")
        self.dim = dim
        self.num_heads = num_heads
        self.window = window
        self.shift = shift
        self.mlp_ratio = mlp_ratio
        self.dropout = dropout
        self.norm1 = layers.LayerNormalization(epsilon=1e-5, name="norm1")
        self.qkv = layers.Dense(3 * dim, name="qkv")
        self.proj = layers.Dense(dim, name="proj")
        self.norm2 = layers.LayerNormalization(epsilon=1e-5, name="norm2")
        self.fc1 = layers.Dense(int(dim * mlp_ratio), name="fc1")
        self.fc2 = layers.Dense(dim, name="fc2")
        self.drop = layers.Dropout(dropout)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _, height, width, channels = input_shape
        if height is None or width is None or height % self.window or width % self.window:
            raise ValueError(f"feature map {height}x{width} is not a multiple of window {self.window}")
        if channels != self.dim:
            raise ValueError(f"input has {channels} channels, block expects {self.dim}")
        self.height, self.width = height, width
        self.norm1.build(input_shape)
        self.qkv.build((None, self.dim))
        self.proj.build((None, self.dim))
        self.norm2.build(input_shape)
        self.fc1.build((None, self.dim))
        self.fc2.build((None, int(self.dim * self.mlp_ratio)))
        self.relative_bias_table = self.add_weight(
            name="relative_bias_table",
            shape=((2 * self.window - 1) ** 2, self.num_heads),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self.relative_index = _relative_position_index(self.window).reshape(-1)
        self.attention_mask = _shift_attention_mask(height, width, self.window, self.shift) if self.shift else None
        super().build(input_shape)

    def _roll(self, x: Any, shift: int) -> Any:
        """Cyclic shift on H and W by ``shift`` (negative = towards the origin), via slices."""
        h, w = self.height, self.width
        sh, sw = shift % h, shift % w
        x = ops.concatenate([x[:, h - sh :], x[:, : h - sh]], axis=1)
        return ops.concatenate([x[:, :, w - sw :], x[:, :, : w - sw]], axis=2)

    def _attention(self, windows: Any) -> Any:
        tokens = self.window * self.window
        head_dim = self.dim // self.num_heads
        qkv = ops.reshape(self.qkv(windows), (-1, tokens, 3, self.num_heads, head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B*, heads, N, hd)
        attn = ops.matmul(q * (head_dim**-0.5), ops.transpose(k, (0, 1, 3, 2)))
        bias = ops.take(self.relative_bias_table, self.relative_index, axis=0)
        bias = ops.transpose(ops.reshape(bias, (tokens, tokens, self.num_heads)), (2, 0, 1))
        attn = attn + ops.cast(bias, attn.dtype)[None]
        if self.attention_mask is not None:
            n_windows = self.attention_mask.shape[0]
            attn = ops.reshape(attn, (-1, n_windows, self.num_heads, tokens, tokens))
            attn = attn + ops.cast(self.attention_mask, attn.dtype)[None, :, None]
            attn = ops.reshape(attn, (-1, self.num_heads, tokens, tokens))
        attn = ops.softmax(attn, axis=-1)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))
        return self.proj(ops.reshape(out, (-1, tokens, self.dim)))

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        h, w, win, c = self.height, self.width, self.window, self.dim
        x = self.norm1(inputs)
        if self.shift:
            x = self._roll(x, -self.shift)
        windows = ops.reshape(x, (-1, h // win, win, w // win, win, c))
        windows = ops.reshape(ops.transpose(windows, (0, 1, 3, 2, 4, 5)), (-1, win * win, c))
        attended = self._attention(windows)
        x = ops.reshape(attended, (-1, h // win, w // win, win, win, c))
        x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, h, w, c))
        if self.shift:
            x = self._roll(x, self.shift)
        x = inputs + self.drop(x, training=training)
        y = self.fc2(self.drop(gelu(self.fc1(self.norm2(x))), training=training))
        return x + self.drop(y, training=training)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "window": self.window,
            "shift": self.shift,
            "mlp_ratio": self.mlp_ratio,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchMerging(layers.Layer):
    """Swin's downsampling between stages: concatenate 2x2 neighbours, LayerNorm, project to 2C."""

    def __init__(self, dim: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.dim = dim
        self.norm = layers.LayerNormalization(epsilon=1e-5, name="norm")
        self.reduction = layers.Dense(2 * dim, use_bias=False, name="reduction")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _, height, width, channels = input_shape
        if height is None or width is None or height % 2 or width % 2:
            raise ValueError(f"patch merging needs an even feature map, got {height}x{width}")
        self.height, self.width = height, width
        self.norm.build((None, 4 * self.dim))
        self.reduction.build((None, 4 * self.dim))
        super().build(input_shape)

    def call(self, inputs: Any) -> Any:
        h, w, c = self.height, self.width, self.dim
        x = ops.reshape(inputs, (-1, h // 2, 2, w // 2, 2, c))
        x = ops.reshape(ops.transpose(x, (0, 1, 3, 4, 2, 5)), (-1, h // 2, w // 2, 4 * c))
        return self.reduction(self.norm(x))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, height, width, _ = input_shape
        return (batch, None if height is None else height // 2, None if width is None else width // 2, 2 * self.dim)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim}


@keras.saving.register_keras_serializable(package=PACKAGE)
class NoiseResidual(layers.Layer):
    """0..255 pixels -> their high-pass residual on the same scale: 128 + gain * (x - mean3x3(x)).

    What forensic detectors read: the generator's pixel-level traces, without the picture's
    content. The 3x3 mean pads by reflection (exports as ONNX Pad mode "reflect").
    """

    def __init__(self, gain: float = 4.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.gain = float(gain)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        kernel = ops.convert_to_tensor(np.full((3, 3, 3, 1), 1.0 / 9.0, "float32"), dtype=self.compute_dtype)
        mean = ops.depthwise_conv(padded, kernel, strides=1, padding="valid")
        return ops.clip(128.0 + self.gain * (x - mean), 0.0, 255.0)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gain": self.gain}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MosaicTiles(layers.Layer):
    """(batch, g*t, g*t, C) mosaic -> (batch*g*g, t, t, C) tiles, row by row (model.preprocess's order)."""

    def __init__(self, grid: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.grid = grid

    def call(self, inputs: Any) -> Any:
        g = self.grid
        _, height, width, channels = inputs.shape
        t = height // g
        x = ops.reshape(inputs, (-1, g, t, g, t, channels))
        return ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, t, t, channels))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        _, height, width, channels = input_shape
        t = None if height is None else height // self.grid
        return (None, t, t, channels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "grid": self.grid}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TileMean(layers.Layer):
    """(batch*tiles, d) per-tile values -> (batch, d), their mean over each image's tiles."""

    def __init__(self, tiles: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.tiles = tiles

    def call(self, inputs: Any) -> Any:
        return ops.mean(ops.reshape(inputs, (-1, self.tiles, inputs.shape[-1])), axis=1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (None, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "tiles": self.tiles}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ExpertMix(layers.Layer):
    """[gate, expert, base] probabilities -> gate * expert + (1 - gate) * base."""

    def call(self, inputs: Any) -> Any:
        gate, expert, base = inputs
        return gate * expert + (1.0 - gate) * base

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]


# Standardize's floor on a column's std, as a share of the median column's (see set_statistics).
STD_FLOOR = 0.1


@keras.saving.register_keras_serializable(package=PACKAGE)
class Standardize(layers.Layer):
    """(x - mean) * scale with non-trainable statistics, set by ``set_statistics`` from data.

    Not Keras's ``Normalization``: its ``adapt`` leaves the statistics in tensors that a
    predict function traced earlier keeps seeing; these are variables, read at every call.
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        dims = input_shape[-1]
        self.mean = self.add_weight(name="mean", shape=(dims,), initializer="zeros", trainable=False)
        self.scale = self.add_weight(name="scale", shape=(dims,), initializer="ones", trainable=False)
        super().build(input_shape)

    def set_statistics(self, x: np.ndarray, floor: float = STD_FLOOR, epsilon: float = 1e-6) -> None:
        """The mean of each column of ``x``, and 1 / its std, the std floored at ``floor`` times
        the median std of the columns.

        Without the floor a column that barely varies in ``x`` (a residual feature on 32-px
        thumbnails) is scaled up a thousandfold, and any small change of it on other images,
        or its INT8 rounding, swings the unit's output.
        """
        x = np.asarray(x, np.float64)
        std = x.std(axis=0)
        lowest = max(floor * float(np.median(std)), float(np.sqrt(epsilon)))
        self.mean.assign(x.mean(axis=0).astype("float32"))
        self.scale.assign((1.0 / np.maximum(std, lowest)).astype("float32"))

    def call(self, inputs: Any) -> Any:
        return (ops.cast(inputs, self.compute_dtype) - self.mean) * self.scale

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape
