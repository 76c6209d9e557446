"""Fixtures with real parts: an S3 server on loopback, a Prefect API, a trained tiny model."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from storage import LocalStore, ObjectStore
from tests.helpers import extract_subset, free_port, shared_data

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# In-process apps keep per-session onnxruntime threads: once a process-wide pool exists, the
# sessions that training, export and quantisation tests create in this process would fail.
# Served subprocesses (tests/e2e) turn it back on.
os.environ["AIDETECT_ORT_SHARED_POOL"] = "false"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (speaks the S3 HTTP API, enforces conditional puts)."""
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def make_s3_store(endpoint: str) -> ObjectStore:
    from storage.s3 import S3Store

    store = S3Store(f"test-{uuid.uuid4().hex[:12]}", "aidetect", endpoint_url=endpoint)
    store.ensure_bucket()
    return store


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each test using it runs on both implementations."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return make_s3_store(request.getfixturevalue("s3_endpoint"))


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real, temporary Prefect API server (SQLite) for the flows under test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def cifake_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CIFAKE subset (600 images per class), extracted from ../shared/data."""
    archive = shared_data("cifake-dev.tar.gz")
    return extract_subset(archive, tmp_path_factory.mktemp("cifake"), per_class=600)


@pytest.fixture(scope="session")
def newgen_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive = shared_data("newgen-dev.tar.gz")
    return extract_subset(archive, tmp_path_factory.mktemp("newgen"), per_class=None)


@dataclass
class Trained:
    keras_path: Path
    onnx_path: Path
    canaries: dict[str, np.ndarray]
    val_x: np.ndarray
    val_y: np.ndarray


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory, cifake_folder: Path) -> Trained:
    """The tiny architecture trained three short epochs on the CIFAKE subset, exported to ONNX."""
    from model.config import get_config
    from model.export import export_onnx, make_canaries
    from model.imagesets import load_images
    from model.sources import import_dataset
    from model.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("trained")
    store = LocalStore(folder / "store")
    import_dataset(store, cifake_folder, "cifake")
    config = get_config("tiny")
    train_data = load_images(store, ["cifake"], "train")
    val_data = load_images(store, ["cifake"], "val").decode(config.image_size)
    result = train(config, train_data, val_data, TrainConfig(epochs=3, batch_size=32, augment=None), log=lambda _: None)
    keras_path = folder / "model.keras"
    result.model.save(keras_path)
    onnx_path = export_onnx(result.model, folder / "model.onnx")
    canaries = make_canaries(result.model, val_data.x[:8])
    return Trained(keras_path, onnx_path, canaries, val_data.x, val_data.y)
