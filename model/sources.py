"""Labelled images from a folder or an archive (``ai/`` and ``real/``), imported as a dataset version."""

from __future__ import annotations

import csv
import io
import tarfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from model.datasets import LABELS, Progress, check_dataset_name, dataset_counts, write_dataset_version
from model.preprocess import InvalidImage, decode_image
from storage import ObjectStore
from storage.layout import image_extension, put_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


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


@dataclass
class _Taken:
    """The images an import keeps, by content: a duplicate is skipped, and an image found with
    both labels is dropped altogether."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seen: dict[str, str] = field(default_factory=dict)  # sha256 -> label, or "conflict"
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))

    def add(self, item: SourceImage, sha: str | None, key_or_reason: str, source: str) -> None:
        if sha is None:
            self.skipped.append((item.path, key_or_reason))
        elif sha not in self.seen:
            self.seen[sha] = item.label
            self.counts[item.label] += 1
            self.rows.append(
                {
                    "sha256": sha,
                    "key": key_or_reason,
                    "label": item.label,
                    "source": item.source or source,
                    "generator": item.generator,
                    "path": item.path,
                }
            )
        elif self.seen[sha] == "conflict":
            self.skipped.append((item.path, "same image appears with both labels"))
        elif self.seen[sha] != item.label:
            self.skipped.append((item.path, f"same image is also labelled {self.seen[sha]}"))
            self.rows[:] = [r for r in self.rows if r["sha256"] != sha]
            self.counts[self.seen[sha]] -= 1
            self.seen[sha] = "conflict"
        else:
            self.skipped.append((item.path, "duplicate of an image already taken"))


def _limited(
    items: Iterable[SourceImage | tuple[str, str]], limit_per_class: int | None, skipped: list[tuple[str, str]]
) -> Iterator[SourceImage]:
    """The source's images, at most ``limit_per_class`` of each label; what cannot be taken goes to ``skipped``."""
    pending: dict[str, int] = dict.fromkeys(LABELS, 0)
    for item in items:
        if isinstance(item, tuple):
            skipped.append(item)
            continue
        if limit_per_class is not None and pending[item.label] >= limit_per_class:
            if all(n >= limit_per_class for n in pending.values()):
                return
            continue
        pending[item.label] += 1
        yield item


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
    taken = _Taken()

    def validate(item: SourceImage) -> tuple[SourceImage, str | None, str]:
        try:
            image = decode_image(item.data)
        except InvalidImage as exc:
            return item, None, str(exc)
        sha, key = put_image(store, item.data, image_extension(image.format))
        return item, sha, key

    with ThreadPoolExecutor(max_workers=workers) as pool:
        items = _limited(iter_source(path), limit_per_class, taken.skipped)
        for n, (item, sha, key_or_reason) in enumerate(pool.map(validate, items), 1):
            taken.add(item, sha, key_or_reason, str(path.name))
            if progress and n % 5000 == 0:
                progress(f"import {name}: {n} files read, {sum(taken.counts.values())} taken")
    if not taken.rows:
        raise ValueError(f"{path}: no usable images found under ai/ and real/")
    version = write_dataset_version(
        store, name, taken.rows, parents=[], progress=progress, extra={"imported_from": str(path)}
    )
    return ImportReport(name, version, len(taken.rows), taken.skipped, dataset_counts(taken.rows))
