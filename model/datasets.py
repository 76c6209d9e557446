"""Dataset versions in the object store: write one, list them, resolve a reference, read one's files.

A dataset version is ``datasets/<name>/<version>/`` with ``shards/<split>-NNNNN.parquet``
(sha256, label, source, generator and the raw image bytes, so training reads a few large
objects instead of one per image), ``manifest.parquet`` (one row per image, written last:
a version exists once its manifest does) and ``version.json`` (counts and lineage).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage import NotFound, ObjectStore
from storage.layout import DATASETS, dataset_prefix, new_version_id, utcnow

LABELS = ("ai", "real")
SPLITS = ("train", "val", "test")
SHARD_ROWS = 4096

Progress = Callable[[str], None]


def split_of(sha256: str, val_share: float = 0.1, test_share: float = 0.1) -> str:
    """Deterministic split from the content hash: an image keeps its split in every version."""
    bucket = int(sha256[:8], 16) / 0xFFFFFFFF
    if bucket < test_share:
        return "test"
    if bucket < test_share + val_share:
        return "val"
    return "train"


def check_dataset_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"invalid dataset name {name!r}: use letters, digits, '-', '_' and '.'")
    return name


def dataset_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
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
        "counts": dataset_counts(rows),
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
