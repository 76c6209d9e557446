"""Datasets: import from folders/archives, versioned manifests and shards, loading for training.

A dataset version is ``datasets/<name>/<version>/`` with ``shards/<split>-NNNNN.parquet``
(sha256, label, source, generator and the raw image bytes, so training reads a few large
objects instead of one per image), ``manifest.parquet`` (one row per image, written last:
a version exists once its manifest does) and ``version.json`` (counts and lineage).
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model.preprocess import InvalidImage, decode_image, preprocess
from storage import NotFound, ObjectStore
from storage.layout import DATASETS, dataset_prefix, image_extension, new_version_id, put_image, utcnow

LABELS = ("ai", "real")
SPLITS = ("train", "val", "test")
SHARD_ROWS = 4096
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

Progress = Callable[[str], None]


def split_of(sha256: str, val_share: float = 0.1, test_share: float = 0.1) -> str:
    """Deterministic split from the content hash: an image keeps its split in every version."""
    bucket = int(sha256[:8], 16) / 0xFFFFFFFF
    if bucket < test_share:
        return "test"
    if bucket < test_share + val_share:
        return "val"
    return "train"


@dataclass
class SourceImage:
    path: str
    label: str
    data: bytes
    source: str = ""
    generator: str = ""


@dataclass
class ImportReport:
    name: str
    version: str
    taken: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> n


def _label_of(path: PurePosixPath) -> str | None:
    for part in path.parts[:-1]:
        if part in LABELS:
            return part
    return None


def _read_manifest_csv(text: str) -> dict[str, dict[str, str]]:
    return {row["path"]: row for row in csv.DictReader(io.StringIO(text)) if row.get("path")}


def iter_source(path: Path) -> Iterator[SourceImage | tuple[str, str]]:
    """Images under ``ai/`` and ``real/`` of a folder or a .tar.gz, in a deterministic order.

    Yields SourceImage, or (path, reason) for files that cannot be taken.
    """
    if path.is_dir():
        yield from _iter_folder(path)
    elif path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        yield from _iter_tar(path)
    else:
        raise FileNotFoundError(f"{path}: not a folder or a .tar.gz archive")


def _iter_folder(root: Path) -> Iterator[SourceImage | tuple[str, str]]:
    manifests = {p.parent: _read_manifest_csv(p.read_text()) for p in root.rglob("manifest.csv")}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = PurePosixPath(file.relative_to(root).as_posix())
        if file.name == "manifest.csv" or file.name.startswith("."):
            continue
        label = _label_of(rel)
        if label is None:
            yield (str(rel), "not under an ai/ or real/ folder")
            continue
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            yield (str(rel), f"not an image file extension ({file.suffix or 'none'})")
            continue
        meta = _manifest_row(manifests, root, file)
        yield SourceImage(str(rel), label, file.read_bytes(), meta.get("source_repo", ""), meta.get("generator", ""))


def _manifest_row(manifests: dict[Path, dict[str, dict[str, str]]], root: Path, file: Path) -> dict[str, str]:
    for folder, rows in manifests.items():
        try:
            rel = file.relative_to(folder).as_posix()
        except ValueError:
            continue
        if rel in rows:
            return rows[rel]
    return {}


def _iter_tar(archive: Path) -> Iterator[SourceImage | tuple[str, str]]:
    # Read the manifest first (small; the archive is streamed once more for the images).
    manifest: dict[str, dict[str, str]] = {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if member.isfile() and PurePosixPath(member.name).name == "manifest.csv":
                handle = tar.extractfile(member)
                if handle is not None:
                    top = str(PurePosixPath(member.name).parent)
                    for row_path, row in _read_manifest_csv(handle.read().decode()).items():
                        manifest[f"{top}/{row_path}" if top != "." else row_path] = row
                break
    with tarfile.open(archive, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            rel = PurePosixPath(member.name)
            if rel.name == "manifest.csv" or rel.name.startswith("."):
                continue
            label = _label_of(rel)
            if label is None:
                yield (member.name, "not under an ai/ or real/ folder")
                continue
            if rel.suffix.lower() not in IMAGE_SUFFIXES:
                yield (member.name, f"not an image file extension ({rel.suffix or 'none'})")
                continue
            handle = tar.extractfile(member)
            data = handle.read() if handle else b""
            meta = manifest.get(member.name, {})
            yield SourceImage(member.name, label, data, meta.get("source_repo", ""), meta.get("generator", ""))


def import_dataset(
    store: ObjectStore,
    path: Path,
    name: str,
    *,
    limit_per_class: int | None = None,
    progress: Progress | None = None,
    workers: int = 8,
) -> ImportReport:
    """Validate, store content-addressed, and write a new version of dataset ``name``."""
    check_dataset_name(name)
    report_skipped: list[tuple[str, str]] = []
    taken: dict[str, int] = dict.fromkeys(LABELS, 0)
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}

    def validate(item: SourceImage) -> tuple[SourceImage, str | None, str]:
        try:
            image = decode_image(item.data)
        except InvalidImage as exc:
            return item, None, str(exc)
        sha, key = put_image(store, item.data, image_extension(image.format))
        return item, sha, key

    def wanted(items: Iterable[SourceImage | tuple[str, str]]) -> Iterator[SourceImage]:
        pending: dict[str, int] = dict.fromkeys(LABELS, 0)
        for item in items:
            if isinstance(item, tuple):
                report_skipped.append(item)
                continue
            if limit_per_class is not None and pending[item.label] >= limit_per_class:
                if all(n >= limit_per_class for n in pending.values()):
                    return
                continue
            pending[item.label] += 1
            yield item

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n, (item, sha, key_or_reason) in enumerate(pool.map(validate, wanted(iter_source(path))), 1):
            if sha is None:
                report_skipped.append((item.path, key_or_reason))
            elif sha in seen:
                if seen[sha] == "conflict":
                    report_skipped.append((item.path, "same image appears with both labels"))
                elif seen[sha] != item.label:
                    report_skipped.append((item.path, f"same image is also labelled {seen[sha]}"))
                    rows[:] = [r for r in rows if r["sha256"] != sha]
                    taken[seen[sha]] -= 1
                    seen[sha] = "conflict"
                else:
                    report_skipped.append((item.path, "duplicate of an image already taken"))
            else:
                seen[sha] = item.label
                taken[item.label] += 1
                rows.append(
                    {
                        "sha256": sha,
                        "key": key_or_reason,
                        "label": item.label,
                        "source": item.source or str(path.name),
                        "generator": item.generator,
                        "path": item.path,
                    }
                )
            if progress and n % 5000 == 0:
                progress(f"import {name}: {n} files read, {sum(taken.values())} taken")
    if not rows:
        raise ValueError(f"{path}: no usable images found under ai/ and real/")
    version = write_dataset_version(
        store, name, rows, parents=[], progress=progress, extra={"imported_from": str(path)}
    )
    report = ImportReport(name, version, len(rows), report_skipped, _counts(rows))
    return report


def check_dataset_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"invalid dataset name {name!r}: use letters, digits, '-', '_' and '.'")
    return name


def _counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(LABELS, 0) for s in SPLITS}
    for row in rows:
        counts[row["split"]][row["label"]] += 1
    return counts


def write_dataset_version(
    store: ObjectStore,
    name: str,
    rows: list[dict[str, Any]],
    *,
    parents: list[str],
    progress: Progress | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write shards, version.json, then manifest.parquet (the commit point). Returns the version."""
    version = new_version_id()
    prefix = dataset_prefix(name, version)
    added_at = utcnow()
    for row in rows:
        row.setdefault("split", split_of(row["sha256"]))
        row.setdefault("added_at", added_at)
    rows.sort(key=lambda r: r["sha256"])
    shards: list[str] = []
    for split in SPLITS:
        split_rows = [r for r in rows if r["split"] == split]
        for i in range(0, len(split_rows), SHARD_ROWS):
            chunk = split_rows[i : i + SHARD_ROWS]
            with ThreadPoolExecutor(max_workers=8) as pool:
                blobs = list(pool.map(lambda r: store.get(r["key"]), chunk))
            table = pa.table(
                {
                    "sha256": [r["sha256"] for r in chunk],
                    "label": [r["label"] for r in chunk],
                    "source": [r["source"] for r in chunk],
                    "generator": [r["generator"] for r in chunk],
                    "data": pa.array(blobs, type=pa.binary()),
                }
            )
            key = f"{prefix}shards/{split}-{i // SHARD_ROWS:05d}.parquet"
            store.put(key, _parquet_bytes(table))
            shards.append(key.removeprefix(prefix))
            if progress:
                progress(f"dataset {name}@{version}: wrote {key.removeprefix(prefix)} ({len(chunk)} images)")
    info = {
        "name": name,
        "version": version,
        "created_at": added_at.isoformat(),
        "parents": parents,
        "counts": _counts(rows),
        "shards": shards,
        **(extra or {}),
    }
    store.put(f"{prefix}version.json", json.dumps(info, indent=2).encode())
    manifest = pa.Table.from_pylist(
        [{k: r[k] for k in ("sha256", "key", "label", "split", "source", "generator", "added_at")} for r in rows]
    )
    store.put(f"{prefix}manifest.parquet", _parquet_bytes(manifest), if_none_match=True)
    return version


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def list_datasets(store: ObjectStore) -> dict[str, list[str]]:
    """Dataset name -> its committed versions, oldest first."""
    found: dict[str, list[str]] = {}
    for key in store.list(DATASETS):
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == "manifest.parquet":
            found.setdefault(parts[1], []).append(parts[2])
    return {name: sorted(versions) for name, versions in sorted(found.items())}


def resolve(store: ObjectStore, ref: str) -> tuple[str, str]:
    """``name`` or ``name@version`` -> (name, version); the latest version by default."""
    name, _, version = ref.partition("@")
    versions = list_datasets(store).get(name, [])
    if not versions:
        raise NotFound(f"dataset {name!r} has no versions in {store.url}")
    if not version:
        return name, versions[-1]
    if version not in versions:
        raise NotFound(f"dataset {name}@{version} not found")
    return name, version


def read_manifest(store: ObjectStore, name: str, version: str) -> pa.Table:
    return pq.read_table(io.BytesIO(store.get(f"{dataset_prefix(name, version)}manifest.parquet")))


def read_version_info(store: ObjectStore, name: str, version: str) -> dict[str, Any]:
    return dict(json.loads(store.get(f"{dataset_prefix(name, version)}version.json")))


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


def load_split(
    store: ObjectStore,
    refs: list[str],
    split: str,
    size: int,
    *,
    limit: int | None = None,
    seed: int = 0,
) -> ArrayData:
    """``load_images`` decoded at ``size`` (for validation, testing and small training sets)."""
    return load_images(store, refs, split, limit=limit, seed=seed).decode(size)


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
