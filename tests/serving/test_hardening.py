"""Hot swap under bad models, admin reload/rollback, start-up with the store down, bad uploads."""

from __future__ import annotations

import io
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from aidetect.settings import Settings
from model.card import ModelCard
from model.registry import Registry
from serving.app import create_app
from storage import LocalStore
from tests.helpers import free_port, image_bytes
from tests.serving.onnx_models import mean_brightness_model, mean_canaries


def register_onnx(registry: Registry, onnx: Path | bytes, *, size: int = 32, **metadata: object) -> str:
    buffer = io.BytesIO()
    canaries = mean_canaries(size)
    np.savez_compressed(buffer, **canaries)
    return registry.register(
        {"model.onnx": onnx, "canaries.npz": buffer.getvalue()},
        ModelCard.model_validate({"threshold": 0.5, "input_size": size, **metadata}),
    )


def mean_model_store(folder: Path) -> LocalStore:
    """A local store under ``folder`` serving the mean-brightness model (P(ai) = mean pixel / 255)."""
    store = LocalStore(folder / "store")
    registry = Registry(store)
    registry.promote(register_onnx(registry, mean_brightness_model(folder / "mean.onnx")), reason="test")
    return store


def settings_for(tmp_path: Path, store: LocalStore | None = None, **overrides: object) -> Settings:
    url = str(store.root) if store is not None else str(tmp_path / "store")
    values: dict[str, object] = {"home": tmp_path / "home", "store_url": url, "alias_poll_seconds": 0.2, **overrides}
    return Settings(**values)  # type: ignore[arg-type]


def _refused_count(metrics: str, reason: str) -> float:
    match = re.search(rf'aidetect_model_refused_total\{{reason="{reason}",role="production"\}} (\S+)', metrics)
    return float(match.group(1)) if match else 0.0


def _bad_model(case: str, tmp_path: Path, registry: Registry, store: LocalStore) -> str:
    if case == "checksum":
        version = register_onnx(registry, mean_brightness_model(tmp_path / "ok.onnx"))
        store.put(f"models/{version}/model.onnx", mean_brightness_model(tmp_path / "other.onnx", nan=True).read_bytes())
        return version
    if case == "load":
        return register_onnx(registry, b"\x08\x07 this is not an ONNX graph")
    if case == "output":
        return register_onnx(registry, mean_brightness_model(tmp_path / "nan.onnx", nan=True))
    if case == "shape":  # the graph takes 64 px, the metadata (and the canaries) say 32
        return register_onnx(registry, mean_brightness_model(tmp_path / "64.onnx", size=64))
    if case == "float-input":
        return register_onnx(registry, mean_brightness_model(tmp_path / "f.onnx", input_type="float"))
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "reason", "message"),
    [
        ("checksum", "checksum", "sha256"),
        ("load", "load", "cannot load"),
        ("output", "output", "warm-up gave scores"),
        ("shape", "shape", "graph takes 64 px"),
        ("float-input", "load", "uint8"),
    ],
)
def test_a_corrupt_model_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, mean_store: tuple[LocalStore, str], case: str, reason: str, message: str
) -> None:
    store, good = mean_store
    registry = Registry(store)
    with TestClient(create_app(settings_for(tmp_path, store, alias_poll_seconds=3600))) as client:
        holder = client.app.state.serving.holder  # type: ignore[attr-defined]
        bad = _bad_model(case, tmp_path, registry, store)
        registry.promote(bad, reason=f"a {case} model")
        assert holder.refresh() is False
        assert holder.refresh() is False  # refused once, not retried on every poll
        info = client.get("/v1/model").json()
        assert info["version"] == good
        assert info["refused"] == 1
        assert message in info["last_error"] and bad in info["last_error"]
        assert _refused_count(client.get("/metrics").text, reason) == 1.0
        response = client.post("/v1/predict", files={"file": ("x.jpg", image_bytes())})
        assert response.status_code == 200 and response.json()["model_version"] == good


def test_admin_reload_and_rollback_need_the_token(tmp_path: Path, mean_store: tuple[LocalStore, str]) -> None:
    store, v1 = mean_store
    registry = Registry(store)
    v2 = register_onnx(registry, mean_brightness_model(tmp_path / "v2.onnx"))
    registry.promote(v2, reason="newer")
    with TestClient(create_app(settings_for(tmp_path, store, alias_poll_seconds=3600))) as client:
        response = client.post("/v1/admin/rollback")
        assert response.status_code == 403 and "AIDETECT_ADMIN_TOKEN" in response.json()["detail"]

    with TestClient(create_app(settings_for(tmp_path, store, admin_token="s3cret", alias_poll_seconds=3600))) as client:
        assert client.get("/v1/model").json()["version"] == v2
        assert client.post("/v1/admin/rollback").status_code == 401
        wrong = client.post("/v1/admin/rollback", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        back = client.post("/v1/admin/rollback", headers=auth)
        assert back.status_code == 200, back.text
        assert back.json()["version"] == v1 and back.json()["changed"] is True
        assert client.get("/v1/model").json()["version"] == v1
        record, _ = registry.alias()
        assert record is not None and record.version == v1 and record.previous == v2
        assert registry.events()[-1]["kind"] == "rolled_back"

        # a model fixed after its refusal is only retried on a forced reload
        holder = client.app.state.serving.holder  # type: ignore[attr-defined]
        v3 = register_onnx(registry, mean_brightness_model(tmp_path / "v3.onnx"))
        good_bytes = store.get(f"models/{v3}/model.onnx")
        store.put(f"models/{v3}/model.onnx", b"truncated upload")
        registry.promote(v3, reason="upload went wrong")
        assert holder.refresh() is False
        store.put(f"models/{v3}/model.onnx", good_bytes)
        assert holder.refresh() is False
        reloaded = client.post("/v1/admin/reload", headers=auth)
        assert reloaded.status_code == 200 and reloaded.json() == {
            "changed": True,
            "version": v3,
            "alias_version": None,
            "last_error": None,
        }


def test_a_replica_starts_from_cache_with_the_store_down_and_catches_up(
    tmp_path: Path, mean_store: tuple[LocalStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.server import ThreadedMotoServer

    from storage.s3 import S3Store

    local, v1 = mean_store
    with TestClient(create_app(settings_for(tmp_path, local))) as client:  # fills the replica's cache
        assert client.get("/v1/model").json()["version"] == v1

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    down = Settings(home=tmp_path / "home", store_url="s3://models/x", s3_endpoint_url=endpoint, alias_poll_seconds=0.2)
    with TestClient(create_app(down)) as client:
        assert client.get("/readyz").json()["model_version"] == v1
        assert client.post("/v1/predict", files={"file": ("x.jpg", image_bytes())}).status_code == 200

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            s3 = S3Store("models", "x", endpoint_url=endpoint)
            s3.ensure_bucket()
            registry = Registry(s3)
            v2 = register_onnx(registry, mean_brightness_model(tmp_path / "v2.onnx"))
            registry.promote(v2, reason="published while this replica was cut off")
            deadline = time.monotonic() + 30
            while client.get("/v1/model").json()["version"] != v2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert client.get("/v1/model").json()["version"] == v2
        finally:
            server.stop()


# bad and unusual uploads --------------------------------------------------------------------
def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _animated() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _sixteen_bit() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    return _save(image, "PNG")


def _exif_rotated() -> bytes:
    image = Image.new("RGB", (64, 32), "gray")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    return _save(image, "JPEG", exif=exif)


def _bomb() -> bytes:
    return _save(Image.new("L", (9000, 9000)), "PNG")  # 81 Mpx of zeros, a small file


# (name, bytes, declared content type, status, text in the message or range of P(ai))
CASES: list[tuple[str, Callable[[], bytes], str | None, int, str | tuple[float, float]]] = [
    ("empty body", lambda: b"", "image/jpeg", 400, "empty"),
    ("not an image", lambda: b"%PDF-1.7 a document", "image/jpeg", 400, "not a recognised image"),
    ("truncated", lambda: image_bytes((64, 64))[:400], "image/jpeg", 400, "corrupt or truncated"),
    ("corrupt", lambda: image_bytes((64, 64))[:200] + b"\xff" * 500, "image/jpeg", 400, "cannot read the image"),
    ("wrong content type", lambda: image_bytes(fmt="PNG"), "text/plain", 200, (0.0, 1.0)),
    ("no content type", lambda: image_bytes(), None, 200, (0.0, 1.0)),
    ("over the size cap", lambda: b"\xff\xd8" + bytes(300_000), "image/jpeg", 413, "larger than"),
    ("decompression bomb", _bomb, "image/png", 400, "too large"),
    ("huge dimensions", lambda: _png_header_only(100_000, 100_000), "image/png", 400, "too large"),
    ("animated", _animated, "image/gif", 400, "animated"),
    ("tiny 1x1", lambda: image_bytes((1, 1), fmt="PNG"), "image/png", 400, "too small"),
    ("CMYK, no ink", lambda: _save(Image.new("CMYK", (32, 32), (0, 0, 0, 0)), "JPEG"), "image/jpeg", 200, (0.95, 1.0)),
    ("16-bit ramp", _sixteen_bit, "image/png", 200, (0.4, 0.6)),
    ("grayscale mid-grey", lambda: _save(Image.new("L", (32, 32), 128), "PNG"), "image/png", 200, (0.49, 0.52)),
    (
        "transparent black",
        lambda: _save(Image.new("RGBA", (32, 32), (0, 0, 0, 0)), "PNG"),
        "image/png",
        200,
        (0.99, 1.0),
    ),
    ("EXIF orientation", _exif_rotated, "image/jpeg", 200, (0.45, 0.55)),
]


@pytest.fixture(scope="module")
def mean_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Serving a model whose P(ai) is the mean pixel value / 255, so verdicts are predictable."""
    tmp = tmp_path_factory.mktemp("mean")
    store = mean_model_store(tmp)
    with TestClient(create_app(settings_for(tmp, store, max_upload_bytes=250_000))) as client:
        yield client


@pytest.mark.parametrize(("name", "make", "content_type", "status", "expect"), CASES, ids=[c[0] for c in CASES])
def test_uploads_get_a_verdict_or_a_clear_4xx(
    mean_client: TestClient,
    name: str,
    make: Callable[[], bytes],
    content_type: str | None,
    status: int,
    expect: str | tuple[float, float],
) -> None:
    upload = ("upload", make()) if content_type is None else ("upload", make(), content_type)
    response = mean_client.post("/v1/predict", files={"file": upload})
    assert response.status_code == status, response.text
    if isinstance(expect, str):
        assert expect in response.json()["detail"]
    else:
        low, high = expect
        assert low <= response.json()["probability"] <= high
    if name == "EXIF orientation":  # stored upright: the annotated image is portrait
        png = mean_client.get(f"/v1/predictions/{response.json()['id']}/annotated").content
        annotated = Image.open(io.BytesIO(png))
        assert annotated.height > annotated.width
    assert mean_client.get("/healthz").status_code == 200
    assert mean_client.post("/v1/predict", files={"file": ("ok.jpg", image_bytes())}).status_code == 200


def test_the_old_session_is_released_on_the_poll_after_a_swap(
    tmp_path: Path, mean_store: tuple[LocalStore, str]
) -> None:
    import gc
    import weakref

    store, _ = mean_store
    registry = Registry(store)
    with TestClient(create_app(settings_for(tmp_path, store, alias_poll_seconds=3600))) as client:
        holder = client.app.state.serving.holder  # type: ignore[attr-defined]
        assert holder.release_memory() is False  # nothing swapped out yet
        old = weakref.ref(holder.current.model)
        registry.promote(register_onnx(registry, mean_brightness_model(tmp_path / "v2.onnx")), reason="newer")
        assert holder.refresh() is True
        holder.release_memory()
        gc.collect()
        assert old() is None  # nothing keeps the swapped-out session alive
        assert holder.release_memory() is False  # once per swap


def test_serving_uses_one_shared_onnxruntime_pool(tmp_path: Path, mean_store: tuple[LocalStore, str]) -> None:
    """In its own process (as deployed): the live model and the next one share one thread pool."""
    import subprocess
    import sys

    store, _ = mean_store
    code = f"""
from fastapi.testclient import TestClient
from aidetect.settings import Settings
import model.inference as inference
from serving.app import create_app
settings = Settings(home={str(tmp_path / "h")!r}, store_url={str(store.root)!r}, ort_shared_pool=True)
with TestClient(create_app(settings)) as client:
    assert client.post("/v1/predict", files={{"file": ("x.jpg", {image_bytes()!r})}}).status_code == 200
    options = client.app.state.serving.holder.current.model.session.get_session_options()
    assert inference._SHARED_POOL and not options.use_per_session_threads, options.use_per_session_threads
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
