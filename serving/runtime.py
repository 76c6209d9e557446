"""The live ONNX model and its hot swap.

A background loop polls the alias (``registry/aliases/<alias>.json``). When it names another
version the new model is downloaded, its sha256 verified against the registry, a session
built and warmed off the request path, and the canary inputs stored at export checked; only
then is ``current`` replaced, in one assignment. Requests read ``current`` once, so those in
flight finish on the session they started with. A model that fails a check is refused and
the old one keeps serving. The last good model is cached on disk so that a replica can start
while the object store is unreachable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.inference import OnnxModel, check_canaries
from model.registry import ONNX_FILE, AliasRecord, Registry
from storage import ObjectStore, StoreError

log = logging.getLogger("aidetect.serving")

LAST_GOOD = "last-good.json"


@dataclass(frozen=True)
class LiveModel:
    version: str
    metadata: dict[str, Any]
    model: OnnxModel
    loaded_at: float = field(default_factory=time.time)

    @property
    def threshold(self) -> float:
        return float(self.metadata.get("threshold", 0.5))

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def temperature(self) -> float:
        return float(self.metadata.get("temperature", 1.0))

    @property
    def uncertain_band(self) -> tuple[float, float] | None:
        band = self.metadata.get("uncertain_band")
        return (float(band[0]), float(band[1])) if band else None


class ModelRefused(Exception):
    """A model version failed a check and will not serve."""


class ModelHolder:
    def __init__(self, store: ObjectStore, cache_dir: Path, *, alias: str = "production", threads: int = 0):
        self.registry = Registry(store)
        self.cache_dir = cache_dir
        self.alias = alias
        self.threads = threads
        self.current: LiveModel | None = None
        self.swaps = 0
        self.refused = 0
        self.last_error: str | None = None
        self._refused_versions: set[tuple[str, str]] = set()
        self._refresh_lock = threading.Lock()

    def refresh(self) -> bool:
        """Follow the alias once; True when a new model went live."""
        with self._refresh_lock:
            record, _ = self.registry.alias(self.alias)
            if record is None:
                return False
            current = self.current
            if current is not None and current.version == record.version:
                return False
            if (record.version, record.sha256) in self._refused_versions:
                return False
            try:
                live = self._load(record)
            except (ModelRefused, StoreError, ValueError, OSError) as exc:
                self.refused += 1
                self.last_error = f"refused {record.version}: {exc}"
                self._refused_versions.add((record.version, record.sha256))
                log.error("model %s refused: %s", record.version, exc)
                return False
            self.current = live  # the swap: one reference assignment
            self.swaps += 1
            log.info("now serving model %s (was %s)", live.version, current.version if current else None)
            return True

    def _load(self, record: AliasRecord) -> LiveModel:
        metadata = self.registry.metadata(record.version)
        if metadata.get("sha256") != record.sha256:
            raise ModelRefused("alias sha256 does not match the registered model")
        folder = self.cache_dir / record.version
        path = folder / ONNX_FILE
        if not path.is_file() or _sha256(path) != record.sha256:
            self.registry.download(record.version, ONNX_FILE, path)
        digest = _sha256(path)
        if digest != record.sha256:
            path.unlink(missing_ok=True)
            raise ModelRefused(f"downloaded file has sha256 {digest[:12]}, registry says {record.sha256[:12]}")
        canaries = self.registry.canaries(record.version)
        model = OnnxModel(path, threads=self.threads)
        try:
            check_canaries(model, canaries)
        except ValueError as exc:
            raise ModelRefused(str(exc)) from None
        (folder / "metadata.json").write_text(json.dumps(metadata))
        self._remember(record.version)
        return LiveModel(record.version, metadata, model)

    def _remember(self, version: str) -> None:
        tmp = self.cache_dir / (LAST_GOOD + ".part")
        tmp.write_text(json.dumps({"version": version}))
        tmp.replace(self.cache_dir / LAST_GOOD)
        for old in self.cache_dir.iterdir():  # keep the live and the newly good model only
            if old.is_dir() and old.name not in (version, self.current.version if self.current else ""):
                shutil.rmtree(old, ignore_errors=True)

    def load_cached(self) -> bool:
        """Serve the last good model from local disk (used when the store is unreachable)."""
        marker = self.cache_dir / LAST_GOOD
        if self.current is not None or not marker.is_file():
            return False
        version = json.loads(marker.read_text())["version"]
        folder = self.cache_dir / version
        try:
            metadata = json.loads((folder / "metadata.json").read_text())
            if _sha256(folder / ONNX_FILE) != metadata["sha256"]:
                raise ModelRefused("cached file does not match its sha256")
            self.current = LiveModel(version, metadata, OnnxModel(folder / ONNX_FILE, threads=self.threads))
        except (OSError, KeyError, ValueError, ModelRefused) as exc:
            log.error("cached model %s unusable: %s", version, exc)
            return False
        log.warning("object store unreachable: serving cached model %s", version)
        return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
