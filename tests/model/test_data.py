"""Dataset import, splits, shards and loading."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from model.datasets import list_datasets, read_manifest, resolve, split_of
from model.imagesets import load_images, oversample_small_datasets
from model.sources import import_dataset
from storage import LocalStore, NotFound, ObjectStore
from tests.helpers import image_bytes


def _folder(root: Path, n: int = 12) -> Path:
    for label in ("ai", "real"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            seed = i if label == "ai" else 1000 + i
            (root / label / f"{i}.jpg").write_bytes(image_bytes(seed=seed))
    return root


def test_import_folder_reports_bad_files_by_name_and_takes_the_rest(any_store: ObjectStore, tmp_path: Path) -> None:
    root = _folder(tmp_path / "src")
    (root / "ai" / "broken.jpg").write_bytes(b"not really a jpeg")
    (root / "real" / "notes.txt").write_text("hello")
    (root / "stray.jpg").write_bytes(image_bytes(seed=99))
    shutil.copy(root / "ai" / "0.jpg", root / "ai" / "copy.jpg")
    report = import_dataset(any_store, root, "toy")
    assert report.taken == 24
    skipped = dict(report.skipped)
    assert "not a recognised image format" in skipped["ai/broken.jpg"]
    assert "extension" in skipped["real/notes.txt"]
    assert "ai/ or real/" in skipped["stray.jpg"]
    assert "duplicate" in skipped["ai/copy.jpg"]
    manifest = read_manifest(any_store, "toy", report.version).to_pylist()
    assert len(manifest) == 24
    assert {row["split"] for row in manifest} <= {"train", "val", "test"}
    for row in manifest:
        assert row["key"] == f"images/{row['sha256']}.jpg"
        assert any_store.exists(row["key"])
        assert row["split"] == split_of(row["sha256"])


def test_import_tar_gz_with_limit_and_manifest_metadata(tmp_path: Path) -> None:
    root = _folder(tmp_path / "src" / "set")
    (root / "manifest.csv").write_text("path,label,source_repo,source_path,generator\nai/0.jpg,ai,repo/x,p,gen-x\n")
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="set")
    store = LocalStore(tmp_path / "store")
    report = import_dataset(store, archive, "set", limit_per_class=5)
    assert report.taken == 10
    assert sum(c["ai"] for c in report.counts.values()) == 5
    rows = read_manifest(store, "set", report.version).to_pylist()
    generators = {row["generator"] for row in rows}
    assert "gen-x" in generators


def test_same_image_with_both_labels_is_left_out(tmp_path: Path) -> None:
    root = _folder(tmp_path / "src", n=3)
    shutil.copy(root / "ai" / "0.jpg", root / "real" / "clash.jpg")
    report = import_dataset(LocalStore(tmp_path / "store"), root, "clash")
    assert report.taken == 5
    assert "both" in dict(report.skipped)["real/clash.jpg"] or "also labelled" in dict(report.skipped)["real/clash.jpg"]


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "src" / "ai").mkdir(parents=True)
    (tmp_path / "src" / "ai" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no usable images"):
        import_dataset(LocalStore(tmp_path / "store"), tmp_path / "src", "empty")
    with pytest.raises(FileNotFoundError):
        import_dataset(LocalStore(tmp_path / "store"), tmp_path / "missing", "x")
    with pytest.raises(ValueError, match="invalid dataset name"):
        import_dataset(LocalStore(tmp_path / "store"), tmp_path / "src", "../escape")


def test_split_is_deterministic_and_roughly_80_10_10() -> None:
    import hashlib

    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000)]
    splits = [split_of(s) for s in shas]
    assert splits == [split_of(s) for s in shas]
    assert 0.77 < splits.count("train") / 5000 < 0.83
    assert 0.08 < splits.count("test") / 5000 < 0.12


def test_versions_resolve_and_load(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    root = _folder(tmp_path / "src", n=20)
    first = import_dataset(store, root, "toy").version
    second = import_dataset(store, root, "toy").version
    assert list_datasets(store) == {"toy": sorted([first, second])}
    assert resolve(store, "toy") == ("toy", second)
    assert resolve(store, f"toy@{first}") == ("toy", first)
    with pytest.raises(NotFound):
        resolve(store, "toy@nope")
    with pytest.raises(NotFound):
        resolve(store, "other")
    data = load_images(store, ["toy", f"toy@{first}"], "train").decode(16)  # same images: de-duplicated
    counts = import_dataset(store, root, "toy").counts["train"]
    assert len(data) == counts["ai"] + counts["real"]
    assert data.x.shape[1:] == (16, 16, 3) and data.x.dtype == np.uint8
    assert set(np.unique(data.y)) <= {0.0, 1.0}
    limited = load_images(store, ["toy"], "train", limit=10).decode(16)
    assert len(limited) == 10 and limited.y.sum() == 5


def test_oversampling_lifts_a_small_dataset_to_its_share() -> None:
    from model.imagesets import ImageSet

    n_big, n_small = 900, 10
    n = n_big + n_small
    data = ImageSet(
        [b"x"] * n,
        np.zeros(n, np.float32),
        [str(i) for i in range(n)],
        ["base"] * n_big + ["feedback"] * n_small,
        [""] * n,
    )
    out = oversample_small_datasets(data, 0.1)
    share = out.dataset.count("feedback") / len(out)
    assert 0.1 <= share < 0.11
    assert out.dataset.count("base") == n_big
    assert oversample_small_datasets(data, 0.0) is data
