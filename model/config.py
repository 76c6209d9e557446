"""Architecture presets: a name -> settings registry, stored with every model version."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """What is needed to rebuild a network and to feed it (image size, normalisation)."""

    name: str
    backbone: str  # "tiny-effnet" (MBConv stack built here) or "efficientnetb0" (keras.applications)
    image_size: int
    # tiny-effnet: (output channels, stride, expand ratio) per MBConv block
    blocks: tuple[tuple[int, int, int], ...] = ()
    stem_channels: int = 16
    swin_dim: int = 64
    swin_heads: int = 2
    swin_window: int = 4
    swin_blocks: int = 2  # pairs alternate regular and shifted windows
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        data["blocks"] = tuple(tuple(b) for b in data.get("blocks", ()))
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    # For tests and CPU runs: 32x32 input (CIFAKE's size), a few MBConv blocks to stride 4,
    # then two Swin blocks (regular + shifted 4x4 windows) on the 8x8 feature map.
    "tiny": ModelConfig(
        name="tiny",
        backbone="tiny-effnet",
        image_size=32,
        blocks=((16, 1, 1), (24, 2, 4), (32, 1, 4), (48, 1, 4)),
        stem_channels=16,
        swin_dim=64,
        swin_heads=2,
        swin_window=4,
        swin_blocks=2,
    ),
    # EfficientNetB0 backbone cut at stride 16 (14x14 at 224 px), Swin blocks with 7x7 windows.
    "effnet-b0-swin": ModelConfig(
        name="effnet-b0-swin",
        backbone="efficientnetb0",
        image_size=224,
        swin_dim=192,
        swin_heads=6,
        swin_window=7,
        swin_blocks=2,
        mlp_ratio=4.0,
        dropout=0.2,
    ),
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A preset by name, optionally with some fields replaced (e.g. ``image_size``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(PRESETS))}")
    config = PRESETS[name]
    return replace(config, **overrides) if overrides else config
