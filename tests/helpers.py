"""Shared test helpers: free ports, waiting for HTTP, small images, the shared data folder."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from storage import ObjectStore

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The ECE bar for tests that train a short run and need the gate to bless it: ECE on a ~140-image
# test split ran 0.038-0.101 over five seeds (bench/test_margins.py), against the gate's default 0.1.
LOOSE_ECE = 0.3


def shared_data(name: str) -> Path:
    """A file of ../shared/data: fails loudly in CI when absent, skips with a message elsewhere."""
    path = SHARED_DATA / name
    if not path.exists():
        message = f"{path} is missing: these tests need the shared data folder beside the checkout"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def extract_subset(archive: Path, dest: Path, per_class: int | None) -> Path:
    """Extract up to ``per_class`` images of each class (and the manifest) into ``dest``."""
    counts = {"ai": 0, "real": 0}
    root = None
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            root = root or parts[0]
            if not member.isfile():
                continue
            label = parts[1] if len(parts) > 2 else None
            if label in counts:
                if per_class is not None and counts[label] >= per_class:
                    if all(n >= per_class for n in counts.values()):
                        break
                    continue
                counts[label] += 1
            tar.extract(member, dest, filter="data")
    assert root is not None
    return dest / root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s ({last})")


def image_bytes(
    size: tuple[int, int] = (32, 32), mode: str = "RGB", fmt: str = "JPEG", seed: int = 0, **save_args: object
) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4, "LA": 2}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


@contextlib.contextmanager
def serving_process(
    env: dict[str, str], log_path: Path, timeout: float = 90
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Real uvicorn serving on a free loopback port, as deployed (shared onnxruntime pool); (process, base URL)."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "serving.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env={**os.environ, "AIDETECT_ORT_SHARED_POOL": "true", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/readyz", timeout)
            yield process, base
        finally:
            process.terminate()
            process.wait(timeout=30)


def agreed_report(store: ObjectStore, seed: int = 7) -> str:
    """One image reported as ai (predicted real) by two independent clients, so that
    gather-feedback accepts it; returns its sha256."""
    from feedback.records import FeedbackRecord
    from feedback.store import save_feedback
    from storage.layout import put_image

    sha, key = put_image(store, image_bytes(seed=seed), "jpg")
    for client_id in ("a", "b"):
        record = FeedbackRecord(
            image_sha256=sha, image_key=key, claimed_label="ai", predicted_label="real", client=client_id
        )
        save_feedback(store, record)
    return sha


# HAProxy tests (real haproxy, no Docker): skipped only outside CI when it is not installed
needs_haproxy = pytest.mark.skipif(
    not os.environ.get("CI") and not any((Path(p) / "haproxy").exists() for p in os.environ["PATH"].split(":")),
    reason="haproxy is not installed (`make tools` installs it; CI fails instead of skipping)",
)
