"""Images in memory for training and evaluation: a split of dataset versions, encoded
(``ImageSet``) or decoded through the shared preprocessing (``ArrayData``)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pyarrow.parquet as pq

from model.datasets import SPLITS, read_version_info, resolve
from model.preprocess import preprocess
from storage import ObjectStore
from storage.layout import dataset_prefix


@dataclass
class ImageSet:
    """Encoded images of a split with their labels; decoded on demand (training) or at once."""

    images: list[bytes]
    y: np.ndarray  # float32, 1 = ai
    sha256: list[str]
    dataset: list[str]  # the dataset each image came from (for per-dataset metrics)
    generator: list[str]

    def __len__(self) -> int:
        return len(self.y)

    @property
    def ai_share(self) -> float:
        return float(self.y.mean()) if len(self.y) else 0.5

    def subset(self, index: np.ndarray) -> ImageSet:
        return ImageSet(
            [self.images[i] for i in index],
            self.y[index],
            [self.sha256[i] for i in index],
            [self.dataset[i] for i in index],
            [self.generator[i] for i in index],
        )

    def decode(self, size: int, fit: str = "resize", workers: int = 4) -> ArrayData:
        """Every image through the shared preprocessing, to ``(n, size, size, 3)`` uint8."""
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pixels = list(pool.map(lambda data: preprocess(data, size, fit), self.images))
        return ArrayData(
            np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8),
            self.y,
            self.sha256,
            self.dataset,
            self.generator,
        )


@dataclass
class ArrayData:
    """Decoded images ready for a network: x uint8 (n, size, size, 3), y float32 (1 = ai)."""

    x: np.ndarray
    y: np.ndarray
    sha256: list[str]
    dataset: list[str]
    generator: list[str]

    def __len__(self) -> int:
        return len(self.y)


def load_images(
    store: ObjectStore,
    refs: list[str],
    split: str,
    *,
    limit: int | None = None,
    seed: int = 0,
) -> ImageSet:
    """One split of several dataset versions, de-duplicated by content, still encoded.

    ``limit`` caps each dataset at a class-balanced random subset of that many images.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    seen: set[str] = set()
    chosen: list[tuple[str, float, str, str, bytes]] = []  # sha256, label, dataset, generator, bytes
    for ref in refs:
        name, version = resolve(store, ref)
        info = read_version_info(store, name, version)
        rows: list[tuple[str, float, str, str, bytes]] = []
        for shard in info["shards"]:
            if not PurePosixPath(shard).name.startswith(f"{split}-"):
                continue
            table = pq.read_table(io.BytesIO(store.get(f"{dataset_prefix(name, version)}{shard}")))
            for sha, label, generator, data in zip(
                table["sha256"].to_pylist(),
                table["label"].to_pylist(),
                table["generator"].to_pylist(),
                table["data"].to_pylist(),
                strict=True,
            ):
                if sha not in seen:
                    seen.add(sha)
                    rows.append((sha, 1.0 if label == "ai" else 0.0, name, generator or "", data))
        if limit is not None and len(rows) > limit:
            rows = [rows[i] for i in _balanced_subset(np.asarray([r[1] for r in rows]), limit, seed)]
        chosen.extend(rows)
    return ImageSet(
        [r[4] for r in chosen],
        np.asarray([r[1] for r in chosen], dtype=np.float32),
        [r[0] for r in chosen],
        [r[2] for r in chosen],
        [r[3] for r in chosen],
    )


def _balanced_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = []
    per_class = limit // 2
    for value in (1.0, 0.0):
        members = np.flatnonzero(labels == value)
        chosen.append(rng.permutation(members)[:per_class])
    index = np.concatenate(chosen)
    if len(index) < limit:  # one class was short: fill from the rest
        rest = np.setdiff1d(np.arange(len(labels)), index)
        index = np.concatenate([index, rng.permutation(rest)[: limit - len(index)]])
    return np.sort(index)


def oversample_small_datasets(data: ImageSet, min_share: float, seed: int = 0) -> ImageSet:
    """Repeat the images of any dataset below ``min_share`` of the whole until it reaches it.

    A few dozen feedback images beside tens of thousands of base images would otherwise
    barely move the model.
    """
    if not 0.0 <= min_share < 1.0:
        raise ValueError(f"min_share must be in [0, 1), got {min_share}")
    names = np.asarray(data.dataset)
    total = len(names)
    index = [np.arange(total)]
    rng = np.random.default_rng(seed)
    for name in sorted(set(data.dataset)):
        members = np.flatnonzero(names == name)
        # n extra copies so that (len + n) / (total + n) >= min_share
        needed = int(np.ceil((min_share * total - len(members)) / (1.0 - min_share)))
        if len(members) > 0 and needed > 0:
            index.append(rng.choice(members, size=needed, replace=True))
    return data.subset(np.concatenate(index)) if len(index) > 1 else data
