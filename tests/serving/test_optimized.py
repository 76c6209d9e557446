"""Pre-optimised copies of the ONNX files (serving/optimized.py) and the hot swap that uses them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from model.inference import OnnxModel
from model.registry import Registry
from serving.hotswap import OPTIMIZED_DIR, ModelHolder, model_file
from serving.optimized import cache_key, optimized_copy, prune
from storage import LocalStore
from tests.serving.onnx_models import mean_brightness_model
from tests.serving.test_hardening import register_onnx


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plant(cache: Path, sha256: str, content: bytes) -> Path:
    """A cached copy with ``content`` under the key of the file ``sha256``, its digest recorded as if made here."""
    cache.mkdir(parents=True, exist_ok=True)
    copy = cache / cache_key(sha256)
    copy.write_bytes(content)
    copy.with_name(copy.name + ".sha256").write_text(hashlib.sha256(content).hexdigest())
    return copy


def _served_sha256(store: LocalStore, version: str) -> str:
    return model_file(Registry(store).metadata(version), "fp32")[1]


def test_the_copy_is_made_once_per_file_and_scores_as_the_original(tmp_path: Path) -> None:
    source = mean_brightness_model(tmp_path / "mean.onnx")
    sha = _sha256(source)
    copy = optimized_copy(source, sha, tmp_path / "cache")
    assert copy is not None and copy.name == cache_key(sha) and copy.name.startswith(sha)
    made = copy.stat().st_mtime_ns
    assert optimized_copy(source, sha, tmp_path / "cache") == copy
    assert copy.stat().st_mtime_ns == made  # reused, not made again
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(OnnxModel(copy, optimized=True).predict(pixels)[0], OnnxModel(source).predict(pixels)[0])


def test_another_onnxruntime_version_makes_its_own_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache_key("ab" * 32)
    monkeypatch.setattr(onnxruntime, "__version__", "0.0.1")
    assert cache_key("ab" * 32) != before and "0.0.1" in cache_key("ab" * 32)


def test_a_copy_whose_bytes_changed_is_made_again(tmp_path: Path) -> None:
    source = mean_brightness_model(tmp_path / "mean.onnx")
    copy = optimized_copy(source, _sha256(source), tmp_path / "cache")
    assert copy is not None
    copy.write_bytes(b"\x00" * 64)
    assert optimized_copy(source, _sha256(source), tmp_path / "cache") == copy
    assert OnnxModel(copy, optimized=True).image_size == 32


def test_no_copy_when_the_child_process_fails(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    assert optimized_copy(broken, _sha256(broken), tmp_path / "cache") is None
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written file left


def test_prune_keeps_the_copies_of_the_named_files_only(tmp_path: Path) -> None:
    keep, drop = "a" * 64, "b" * 64
    for sha in (keep, drop):
        _plant(tmp_path, sha, b"x")
    prune(tmp_path, {keep})
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache_key(keep), cache_key(keep) + ".sha256"]


def test_swaps_serve_sessions_from_the_copies_and_drop_those_of_old_versions(
    tmp_path: Path, mean_store: tuple[LocalStore, str]
) -> None:
    store, first = mean_store
    registry = Registry(store)
    holder = ModelHolder(store, tmp_path / "cache")
    assert holder.refresh() and holder.current is not None
    copies = tmp_path / "cache" / OPTIMIZED_DIR
    assert holder.current.model.path == copies / cache_key(_served_sha256(store, first))
    for size in (16, 8):  # other files: the copy of the version two swaps back goes
        version = register_onnx(registry, mean_brightness_model(tmp_path / f"m{size}.onnx", size=size), size=size)
        registry.promote(version, reason="test")
        assert holder.refresh()
    assert cache_key(_served_sha256(store, first)) not in {p.name for p in copies.iterdir()}
    assert holder.current.model.path in copies.iterdir()


def test_a_cached_copy_that_does_not_load_is_deleted_and_the_original_serves(
    tmp_path: Path, mean_store: tuple[LocalStore, str]
) -> None:
    store, version = mean_store
    planted = _plant(tmp_path / "cache" / OPTIMIZED_DIR, _served_sha256(store, version), b"not a graph")
    holder = ModelHolder(store, tmp_path / "cache")
    assert holder.refresh() and holder.current is not None
    assert holder.current.model.path == tmp_path / "cache" / version / "model.onnx"
    assert not planted.exists() and holder.refused == 0


def test_a_cached_copy_that_fails_the_checks_is_deleted_and_the_original_serves(
    tmp_path: Path, mean_store: tuple[LocalStore, str]
) -> None:
    store, version = mean_store
    nan = mean_brightness_model(tmp_path / "nan.onnx", nan=True)
    wrong = optimized_copy(nan, _sha256(nan), tmp_path / "other")
    assert wrong is not None
    planted = _plant(tmp_path / "cache" / OPTIMIZED_DIR, _served_sha256(store, version), wrong.read_bytes())
    holder = ModelHolder(store, tmp_path / "cache")
    assert holder.refresh() and holder.current is not None
    assert holder.current.model.path == tmp_path / "cache" / version / "model.onnx"
    assert not planted.exists() and holder.refused == 0
    assert holder.current.model.predict(np.full((1, 32, 32, 3), 51, np.uint8))[0][0] == pytest.approx(0.2)
