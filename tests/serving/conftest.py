from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from model.card import ModelCard
from model.registry import Registry
from storage import LocalStore
from tests.conftest import Trained

CHROMIUM = "/usr/bin/chromium"


def register_trained(
    registry: Registry, trained: Trained, canaries: dict[str, np.ndarray] | None = None, **metadata: object
) -> str:
    buffer = io.BytesIO()
    chosen = canaries or trained.canaries
    np.savez_compressed(buffer, inputs=chosen["inputs"], expected=chosen["expected"])
    return registry.register(
        {"model.onnx": trained.onnx_path, "canaries.npz": buffer.getvalue()},
        ModelCard.model_validate({"config": {"name": "tiny"}, "threshold": 0.5, "input_size": 32, **metadata}),
    )


@pytest.fixture
def model_store(tmp_path: Path, trained_tiny: Trained) -> tuple[LocalStore, str]:
    """A local store with the trained tiny model registered and promoted."""
    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    version = register_trained(registry, trained_tiny)
    registry.promote(version, reason="test")
    return store, version


@pytest.fixture
def mean_store(tmp_path: Path) -> tuple[LocalStore, str]:
    """A store whose production alias points at the mean-brightness ONNX model."""
    from tests.serving.onnx_models import mean_brightness_model
    from tests.serving.test_hardening import register_onnx

    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    version = register_onnx(registry, mean_brightness_model(tmp_path / "mean.onnx"))
    registry.promote(version, reason="test")
    return store, version


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's chromium driven by Playwright: missing, the test fails (`make browser` installs it)."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()
