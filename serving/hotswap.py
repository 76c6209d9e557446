"""The live ONNX model and its hot swap.

A background loop polls the alias (``registry/aliases/<alias>.json``). When it names another
version the new model is downloaded, its sha256 verified against the registry, a session
built and warmed off the request path, and the canary inputs stored at export checked; only
then is ``current`` replaced, in one assignment. Requests read ``current`` once, so those in
flight finish on the session they started with; the old session is released when the last
of them drops it. A model that fails a check is refused (counted by reason, logged) and the
old one keeps serving. An unreachable store is not a refusal: the next poll tries again.
The last good model is cached on disk so that a replica can start while the store is down.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aidetect.settings import PRODUCTION_ALIAS
from model.calibration import Label
from model.card import METADATA_FILE, ModelCard, Variant
from model.inference import OnnxModel, compare_canaries
from model.registry import AliasRecord, Registry
from serving import optimized
from serving.optimized import sha256_file
from storage import NotFound, ObjectStore, StoreError

log = logging.getLogger("aidetect.serving")

LAST_GOOD = "last-good.json"
OPTIMIZED_DIR = "optimized"  # in the cache folder: pre-optimised copies of the files (serving/optimized.py)
# The FP32 file must reproduce the Keras outputs recorded at export to 1e-4; the INT8 file
# its own outputs recorded at export (integer kernels differ slightly between CPUs), or, for
# versions exported before those were recorded, the Keras outputs to within 0.25.
CANARY_TOLERANCE = 1e-4
INT8_OWN_TOLERANCE = 1e-3
INT8_KERAS_TOLERANCE = 0.25


@dataclass(frozen=True)
class LiveModel:
    version: str
    card: ModelCard
    model: OnnxModel
    variant: Variant = "fp32"
    loaded_at: float = field(default_factory=time.time)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def verdict(self, raw_score: float) -> tuple[Label, float]:
        """(verdict, calibrated P(ai)) as this model's card says to answer."""
        return self.card.calibration(raw_score)


class ModelRefused(Exception):
    """A model version failed a check and will not serve. ``reason`` is a short category."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def model_file(card: ModelCard, variant: Variant) -> tuple[str, str]:
    """(file name, expected sha256) of a version's ONNX file for ``variant``."""
    try:
        return card.file_for(variant)
    except KeyError:
        raise ModelRefused("missing", f"version {card.version} has no {variant.upper()} variant") from None


class ModelHolder:
    """Follows one alias and holds the model it names (or the last good one)."""

    def __init__(
        self,
        store: ObjectStore,
        cache_dir: Path,
        *,
        alias: str = PRODUCTION_ALIAS,
        threads: int = 0,
        variant: Variant = "fp32",
        runner: Callable[[Callable[[], Any]], Any] | None = None,
        preoptimize: bool = True,
    ):
        self.registry = Registry(store)
        self.cache_dir = cache_dir
        self.alias = alias
        self.threads = threads
        self.variant = variant
        # Runs the new model's warm-up and canaries one image at a time; serving passes the
        # inference thread's runner, so those runs take turns with live batches instead of
        # competing with them for the cores.
        self.runner = runner or (lambda fn: fn())
        # Sessions from a copy optimised in a child process (serving/optimized.py), built on the
        # calling thread; False: from the exported file, optimised in process on the runner.
        self.preoptimize = preoptimize
        self._release_pending = False
        self.current: LiveModel | None = None
        self.swaps = 0
        self.refused = 0
        self.refused_by_reason: Counter[str] = Counter()
        self.store_errors = 0
        self.last_error: str | None = None
        self._refused_versions: set[tuple[str, str]] = set()
        self._refresh_lock = threading.Lock()
        cache_dir.mkdir(parents=True, exist_ok=True)

    def refresh(self, *, force: bool = False) -> bool:
        """Follow the alias once; True when a new model went live.

        ``force`` forgets earlier refusals, so a version refused for a reason since fixed
        (say, a file re-uploaded) is tried again. Raises StoreError if the alias cannot be read.
        """
        with self._refresh_lock:
            if force:
                self._refused_versions.clear()
            record, _ = self.registry.alias(self.alias)
            if record is None:
                return False
            current = self.current
            if current is not None and current.version == record.version:
                return False
            if (record.version, record.sha256) in self._refused_versions:
                return False
            started = time.perf_counter()
            try:
                try:
                    live = self._load(record)
                except NotFound as exc:
                    raise ModelRefused("missing", f"a file of the version is missing: {exc}") from None
            except StoreError as exc:  # transient: try again on the next poll
                self.store_errors += 1
                self.last_error = f"could not fetch {record.version}: {exc}"
                log.warning("model %s not loaded, store error: %s", record.version, exc)
                return False
            except ModelRefused as exc:
                self.refused += 1
                self.refused_by_reason[exc.reason] += 1
                self.last_error = f"refused {record.version} ({exc.reason}): {exc}"
                self._refused_versions.add((record.version, record.sha256))
                log.error(
                    "model %s refused (%s): %s; still serving %s",
                    record.version,
                    exc.reason,
                    exc,
                    current.version if current else None,
                )
                return False
            self.current = live  # the swap: one reference assignment
            self._release_pending = current is not None
            self.swaps += 1
            self.last_error = None
            log.info(
                "now serving model %s (%s, was %s), loaded and checked in %.2f s",
                live.version,
                live.variant,
                current.version if current else None,
                time.perf_counter() - started,
            )
            return True

    def poll(self) -> bool:
        """One round of following the alias: hand back the memory of the model swapped out last
        time, then ``refresh``. A StoreError is counted in ``store_errors`` and raised."""
        try:
            self.release_memory()
            return self.refresh()
        except StoreError:
            self.store_errors += 1
            raise

    def load_version(self, version: str) -> LiveModel:
        """One version by name, checked as a swap checks it (sha256, shape, warm-up, canaries); not made live."""
        card = self.registry.metadata(version)
        return self._load(AliasRecord(version, card.sha256, "", "", None))

    def _load(self, record: AliasRecord) -> LiveModel:
        card = self.registry.metadata(record.version)
        if card.sha256 != record.sha256:
            raise ModelRefused("checksum", "alias sha256 does not match the registered model")
        name, expected = model_file(card, self.variant)
        folder = self.cache_dir / record.version
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            self.registry.download(record.version, name, path)
        digest = sha256_file(path)
        if digest != expected:
            path.unlink(missing_ok=True)
            raise ModelRefused("checksum", f"downloaded file has sha256 {digest[:12]}, registry says {expected[:12]}")
        try:
            canaries = self.registry.canaries(record.version)
        except NotFound:
            raise ModelRefused("missing", "the version has no canaries.npz") from None
        model = self._open(path, expected, card, canaries)
        (folder / METADATA_FILE).write_bytes(card.to_json())
        live = LiveModel(record.version, card, model, self.variant)
        self._remember(live, name)
        return live

    def _open(
        self, path: Path, sha256: str, card: ModelCard, canaries: dict[str, np.ndarray] | None = None
    ) -> OnnxModel:
        """Build the session (from the file's pre-optimised copy if it can be had), check its shape,
        warm it up, run the canaries. A copy that fails any of it is deleted and the file itself tried."""
        copy = optimized.optimized_copy(path, sha256, self.cache_dir / OPTIMIZED_DIR) if self.preoptimize else None
        if copy is not None:
            try:
                return self._checked(self._session(copy, optimized=True), card, canaries)
            except ModelRefused:
                optimized.discard(copy)
        return self._checked(self._session(path), card, canaries)

    def _checked(self, model: OnnxModel, card: ModelCard, canaries: dict[str, np.ndarray] | None) -> OnnxModel:
        _check_input(model, card)
        self._warm_up(model)
        if canaries is not None:
            self._check_canaries(model, canaries)
        return model

    def _session(self, path: Path, *, optimized: bool = False) -> OnnxModel:
        try:
            if optimized:
                # On the calling (low-priority loader) thread: with no graph to optimise the build
                # runs no kernels on the shared pool, and onnxruntime releases the GIL meanwhile,
                # so live batches go on beside it.
                return OnnxModel(path, threads=self.threads, optimized=True)
            # Optimising in process runs kernels (constant folding) beside the live batches: a
            # batch next to it took 8x longer (116 ms instead of 14) here; taking turns on the
            # inference thread costs the requests in flight one ~50 ms pause instead.
            return self.runner(lambda: OnnxModel(path, threads=self.threads))
        except Exception as exc:  # onnxruntime raises its own exception types for broken graphs
            raise ModelRefused("load", f"onnxruntime cannot load it: {exc}") from None

    def _warm_up(self, model: OnnxModel) -> None:
        try:
            warm = self._scores(model, np.zeros((1, model.image_size, model.image_size, 3), np.uint8))
        except Exception as exc:
            raise ModelRefused("load", f"warm-up run failed: {exc}") from None
        if warm.shape != (1,) or not np.isfinite(warm).all():
            raise ModelRefused("output", f"warm-up gave scores {warm[:4]} of shape {warm.shape}")

    def _check_canaries(self, model: OnnxModel, canaries: dict[str, np.ndarray]) -> None:
        """The canary inputs stored at export must give the outputs recorded then (see the tolerances)."""
        try:
            scores = self._scores(model, canaries["inputs"])
        except Exception as exc:
            raise ModelRefused("canary", f"canary inputs do not run: {exc}") from None
        try:
            if self.variant == "fp32":
                compare_canaries(scores, canaries, CANARY_TOLERANCE)
            elif "expected_int8" in canaries:
                compare_canaries(scores, canaries, INT8_OWN_TOLERANCE, expected="expected_int8")
            else:
                compare_canaries(scores, canaries, INT8_KERAS_TOLERANCE)
        except ValueError as exc:
            raise ModelRefused("canary", str(exc)) from None

    def _scores(self, model: OnnxModel, pixels: np.ndarray) -> np.ndarray:
        """P(ai) for each image, one runner call per image."""

        def one(i: int) -> Callable[[], np.ndarray]:
            return lambda: model.predict(pixels[i : i + 1])[0]

        scores = [self.runner(one(i)) for i in range(len(pixels))]
        return np.concatenate(scores) if scores else np.zeros((0,), np.float32)

    def release_memory(self) -> bool:
        """After a swap, hand the old session's memory back to the OS.

        Dropping an onnxruntime session frees its buffers, but glibc keeps the pages: without
        ``malloc_trim`` resident memory grew 42% over 30 swaps of an EfficientNet-B0 here,
        with it 1.6%. Called on the poll after a swap, when requests in flight have finished.
        """
        if not self._release_pending:
            return False
        self._release_pending = False
        gc.collect()
        return _malloc_trim()

    def _remember(self, live: LiveModel, name: str) -> None:
        tmp = self.cache_dir / (LAST_GOOD + ".part")
        tmp.write_text(json.dumps({"version": live.version, "file": name, "variant": live.variant}))
        tmp.replace(self.cache_dir / LAST_GOOD)
        kept = [live, *([self.current] if self.current else [])]
        keep = {each.version for each in kept} | {OPTIMIZED_DIR}
        for old in self.cache_dir.iterdir():  # keep the live and the newly good model only
            if old.is_dir() and old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
        optimized.prune(self.cache_dir / OPTIMIZED_DIR, {model_file(each.card, each.variant)[1] for each in kept})

    def load_cached(self) -> bool:
        """Serve the last good model from local disk (used when the store is unreachable)."""
        marker = self.cache_dir / LAST_GOOD
        if self.current is not None or not marker.is_file():
            return False
        try:
            cached = json.loads(marker.read_text())
            version, name = cached["version"], cached["file"]
            folder = self.cache_dir / version
            card = ModelCard.model_validate_json((folder / METADATA_FILE).read_bytes())
            if cached.get("variant", "fp32") != self.variant:
                raise ModelRefused("missing", f"cached file is {cached.get('variant')}, serving wants {self.variant}")
            _, expected = model_file(card, self.variant)
            if sha256_file(folder / name) != expected:
                raise ModelRefused("checksum", "cached file does not match its sha256")
            model = self._open(folder / name, expected, card)
        except (OSError, KeyError, ValueError, ModelRefused) as exc:
            log.error("cached model unusable: %s", exc)
            return False
        with self._refresh_lock:
            if self.current is None:
                self.current = LiveModel(version, card, model, self.variant)
        log.warning("object store unreachable: serving cached model %s", version)
        return True


def _check_input(model: OnnxModel, card: ModelCard) -> None:
    """The graph's input size and fit must be the ones its card declares."""
    if card.input_size != model.image_size:
        raise ModelRefused("shape", f"graph takes {model.image_size} px, its card says {card.input_size}")
    if card.input_fit != model.input_fit:
        raise ModelRefused("shape", f"graph is fed by {model.input_fit!r}, its card says {card.input_fit!r}")


def _malloc_trim() -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return False
