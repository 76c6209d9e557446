"""Training the multiscale detector: frozen tile features cached by image, a head fitted on them.

The backbone (EfficientNet-Lite with ImageNet weights, RGB and noise-residual streams) stays
frozen, so what it computes for an image never changes: ``FeatureCache`` keeps each image's
tile features in the object store, keyed by (extractor weights, image sha256, crop grid), and a
retrain computes features only for images it has not seen. The head (standardisation + one
linear unit) is then fitted on the cached rows with the fairness loss, which takes seconds on
a CPU.

Rows: each training image contributes the distinct native-resolution crops of
``model.preprocess.training_crops`` (a 3x3 spread of a large image; one tile for CIFAKE's
thumbnails), each weighted 1/k so an image counts once whatever its size.

The head has three linear units on the standardised features (``architectures._multiscale_head``):
``base`` fitted on the base data, ``expert`` on the feedback alone, and ``gate``, which tells
feedback-like tiles from base-like ones, mixing them: P(ai) = gate * expert + (1 - gate) * base.
bench/recipes.py measured why: 40 reports per class appended to CIFAKE in one head reach 0.81
held-out (0.84 with the feedback weighted to half the loss), an expert behind a gate 0.955, and
the base data's accuracy does not move. Validation scores images as serving does: the mosaic's
tiles, their P(ai) averaged.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from model.architectures import EXTRACTOR, HEAD, build_model, resolve_weights, tile_size
from model.config import ModelConfig
from model.imagesets import ArrayData, ImageSet
from model.loss import FairnessBCE
from model.metrics import binary_metrics
from model.preprocess import MOSAIC_GRID, decode_image, mosaic_tiles, repeated_tile, training_crops
from storage import ObjectStore
from storage.layout import features_prefix, new_version_id

Log = Callable[[str], None]
TRAIN_GRID = 3  # crops per side a large training image contributes
EXTRACT_BATCH = 32
EXPERT_STEPS = 300  # optimizer steps for the expert and the gate (bench/recipes.py: flat from 150 to 300)


def extractor_id(model: keras.Model, config: ModelConfig) -> str:
    """Names what the extractor computes: its weights and the tile size (the cache's key)."""
    digest = hashlib.sha256(f"{config.backbone}|{tile_size(config)}|{config.residual_stream}".encode())
    for weight in model.get_layer(EXTRACTOR).get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return f"{config.backbone}-{tile_size(config)}-{digest.hexdigest()[:16]}"


class FeatureCache:
    """Tile features by (image sha256, grid) under ``features/<extractor id>/``, in shards."""

    def __init__(self, store: ObjectStore | None, extractor: str):
        self.store = store
        self.prefix = features_prefix(extractor)
        self.rows: dict[tuple[str, int], np.ndarray] = {}
        if store is not None:
            for key in store.list(self.prefix):
                with np.load(io.BytesIO(store.get(key))) as shard:  # each [name] reads the file again: once
                    sha256, grids, counts, features = (shard[n] for n in ("sha256", "grid", "counts", "features"))
                starts = np.concatenate([[0], np.cumsum(counts)])
                for i, (sha, grid) in enumerate(zip(sha256, grids, strict=True)):
                    self.rows[(str(sha), int(grid))] = features[starts[i] : starts[i + 1]]

    def get(self, sha256: str, grid: int) -> np.ndarray | None:
        return self.rows.get((sha256, grid))

    def add(self, entries: dict[tuple[str, int], np.ndarray]) -> None:
        """Remember new entries and write them as one shard (float16: the features are 0..6 ReLU6 means)."""
        if not entries:
            return
        converted = {k: v.astype(np.float16) for k, v in entries.items()}
        self.rows.update(converted)
        if self.store is None:
            return
        keys = list(converted)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            sha256=np.array([k[0] for k in keys]),
            grid=np.array([k[1] for k in keys], np.int16),
            counts=np.array([len(converted[k]) for k in keys], np.int32),
            features=np.concatenate([converted[k] for k in keys]),
        )
        self.store.put(f"{self.prefix}{new_version_id()}.npz", buffer.getvalue())


def tile_features(
    model: keras.Model,
    config: ModelConfig,
    images: ImageSet | ArrayData,
    cache: FeatureCache,
    *,
    log: Log = print,
    workers: int = 2,
) -> list[np.ndarray]:
    """Per image, its tiles' features: the training crops of encoded images, or the tiles of decoded mosaics."""
    extractor = model.get_layer(EXTRACTOR)
    tile = tile_size(config)
    decoded = isinstance(images, ArrayData)
    grid = MOSAIC_GRID if decoded else TRAIN_GRID

    def crops(i: int) -> np.ndarray:
        if isinstance(images, ArrayData):
            mosaic = images.x[i : i + 1]
            tiles = mosaic_tiles(mosaic)
            return tiles[:1] if repeated_tile(mosaic)[0] else tiles  # a thumbnail's mosaic repeats one tile
        return training_crops(decode_image(images.images[i]), tile, grid)

    first = {sha: i for i, sha in reversed(list(enumerate(images.sha256)))}  # oversampled sets repeat images
    missing = sorted(i for sha, i in first.items() if cache.get(sha, grid) is None)
    if missing:
        log(f"computing tile features of {len(missing)} images ({len(images) - len(missing)} cached)")
    started = time.perf_counter()
    new: dict[tuple[str, int], np.ndarray] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(missing), EXTRACT_BATCH):
            chunk = missing[start : start + EXTRACT_BATCH]
            batch = list(pool.map(crops, chunk))
            features, _ = extractor.predict(np.concatenate(batch), batch_size=64, verbose=0)
            offset = 0
            for i, c in zip(chunk, batch, strict=True):
                new[(images.sha256[i], grid)] = np.asarray(features[offset : offset + len(c)])
                offset += len(c)
            done = start + len(chunk)
            if done % 1024 < EXTRACT_BATCH or done == len(missing):
                rate = done / max(time.perf_counter() - started, 1e-9)
                log(f"tile features: {done}/{len(missing)} images ({rate:.0f}/s)")
            if len(new) >= 4096:  # a shard every few thousand images: a crash keeps what was done
                cache.add(new)
                new = {}
    cache.add(new)
    out = []
    for sha in images.sha256:
        rows = cache.get(sha, grid)
        if rows is None:
            raise RuntimeError(f"no features for image {sha[:12]}")
        out.append(rows.astype(np.float32))
    return out


def image_scores(head: keras.Model, per_image: list[np.ndarray]) -> np.ndarray:
    """P(ai) per image as the exported graph computes it: the mean of its tiles' P(ai)."""
    if not per_image:
        return np.zeros((0,), np.float32)
    scores = np.asarray(head.predict(np.concatenate(per_image), batch_size=1024, verbose=0)).reshape(-1)
    bounds = np.cumsum([0] + [len(f) for f in per_image])
    return np.array([scores[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:], strict=True)], np.float32)


def _weights(counts: list[int], groups: np.ndarray | None = None) -> np.ndarray:
    """One weight per row: 1/k for each of an image's k crops; with ``groups``, each group half the total."""
    per_image = np.ones(len(counts))
    if groups is not None and groups.any() and not groups.all():
        per_image = np.where(groups, 0.5 / groups.sum(), 0.5 / (~groups).sum()) * len(counts)
    return np.repeat(per_image / np.asarray(counts, np.float64), counts)


def _fit(
    part: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    settings: Any,
    *,
    alpha: float,
    beta: float,
    epochs: int,
    seed: int,
    after_epoch: Callable[[int, float], bool] | None = None,
) -> None:
    """AdamW on ``part`` (a sub-model of the head); ``after_epoch(epoch, loss)`` returns True to stop."""
    part.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=settings.learning_rate, weight_decay=settings.weight_decay),
        loss=FairnessBCE(alpha=alpha, beta=beta),
    )
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        fitted = part.fit(
            x[order], y[order], sample_weight=weights[order], batch_size=settings.batch_size, epochs=1, verbose=0
        )
        loss = float(fitted.history["loss"][-1])
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at epoch {epoch + 1}: training diverged")
        if after_epoch is not None and after_epoch(epoch, loss):
            break


def _epochs_for(rows: int, batch_size: int, steps: int) -> int:
    return max(1, math.ceil(steps / max(1, math.ceil(rows / batch_size))))


@dataclass
class _TileRows:
    """The training images as tile rows: per row its features and label; per image its rows, label and origin."""

    x: np.ndarray  # (rows, features)
    y: np.ndarray  # per row: its image's label
    counts: list[int]  # per image: how many rows it has
    y_image: np.ndarray
    from_feedback: np.ndarray  # per image: of one of ``settings.expert_datasets``

    @classmethod
    def of(cls, per_image: list[np.ndarray], images: ImageSet, expert_datasets: Iterable[str]) -> _TileRows:
        counts = [len(r) for r in per_image]
        y_image = images.y.astype(np.float32)
        from_feedback = np.isin(np.asarray(images.dataset), list(expert_datasets))
        return cls(np.concatenate(per_image), np.repeat(y_image, counts), counts, y_image, from_feedback)

    def base_images(self) -> np.ndarray:
        """The images not of the feedback, as a mask over images (all of them if every one is)."""
        return ~self.from_feedback if (~self.from_feedback).any() else np.ones_like(self.from_feedback)

    def rows(self, images: np.ndarray) -> np.ndarray:
        """The rows of the images a boolean mask over images selects, as a mask over rows."""
        return np.repeat(images, self.counts)


def _unit(head: keras.Model, name: str) -> keras.Model:
    """One of the head's logistic units as a model of its own (the same layers: training it trains them)."""
    x = head.get_layer(f"{name}_dropout")(head.get_layer(f"{name}_standardize")(head.input))
    return keras.Model(head.input, head.get_layer(name)(x))


def _fit_rows(
    part: keras.Model,
    rows: _TileRows,
    images: np.ndarray,
    settings: Any,
    *,
    beta: float,
    epochs: int,
    seed: int,
    after_epoch: Callable[[int, float], bool] | None = None,
) -> None:
    """``_fit`` on the rows of the images ``images`` selects, labelled as their images, each image weighing one."""
    selected = rows.rows(images)
    _fit(
        part,
        rows.x[selected],
        rows.y[selected],
        _weights([c for c, chosen in zip(rows.counts, images, strict=True) if chosen]),
        settings,
        alpha=settings.alpha,
        beta=beta,
        epochs=epochs,
        seed=seed,
        after_epoch=after_epoch,
    )


class _BestOnValidation:
    """``after_epoch`` of the base unit: validation F1 per epoch, the best epoch's weights, early stopping."""

    def __init__(
        self, head: keras.Model, val_data: ArrayData, val_rows: list[np.ndarray], settings: Any, log: Log
    ) -> None:
        self.head, self.val_data, self.val_rows, self.settings, self.log = head, val_data, val_rows, settings, log
        self.history: list[dict[str, float]] = []
        self.best: tuple[float, int, list[np.ndarray]] = (-1.0, 0, head.get_weights())  # (F1, epoch, weights)

    def __call__(self, epoch: int, loss: float) -> bool:
        """Records the epoch; True to stop (``settings.patience`` epochs without a better F1)."""
        settings = self.settings
        t = time.perf_counter()
        metrics = binary_metrics(self.val_data.y, image_scores(self.head, self.val_rows))
        self.history.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "val_accuracy": metrics["accuracy"],
                "val_f1": metrics["f1"],
                "val_mean_prediction": metrics["mean_prediction"],
                "seconds": time.perf_counter() - t,
            }
        )
        if metrics["f1"] > self.best[0]:
            self.best = (metrics["f1"], epoch + 1, self.head.get_weights())
        if (epoch + 1) % max(1, settings.epochs // 10) == 0 or epoch + 1 == settings.epochs:
            self.log(
                f"epoch {epoch + 1}/{settings.epochs}: loss {loss:.4f}, val accuracy "
                f"{metrics['accuracy']:.4f}, val F1 {metrics['f1']:.4f}"
            )
        if epoch + 1 - self.best[1] >= settings.patience:
            self.log(f"early stop: no better validation F1 for {settings.patience} epochs")
            return True
        return False


def _train_base(
    head: keras.Model,
    part: keras.Model,
    rows: _TileRows,
    base_images: np.ndarray,
    beta: float,
    val: tuple[ArrayData, list[np.ndarray]],
    settings: Any,
    name: str,
    log: Log,
) -> tuple[list[dict[str, float]], int]:
    """The base unit on the base images, early-stopped on validation F1 and left at its best epoch.

    Returns the per-epoch history and the best epoch.
    """
    head.get_layer("base_standardize").set_statistics(rows.x[rows.rows(base_images)])
    log(
        f"training the {name} base head on {int(rows.rows(base_images).sum())} tiles of {int(base_images.sum())} "
        f"images ({float(rows.y_image[base_images].mean()):.1%} ai), beta={beta:.3f}"
    )
    track = _BestOnValidation(head, val[0], val[1], settings, log)
    _fit_rows(
        part, rows, base_images, settings, beta=beta, epochs=settings.epochs, seed=settings.seed, after_epoch=track
    )
    head.set_weights(track.best[2])
    return track.history, track.best[1]


def _train_expert_and_gate(
    head: keras.Model, part: dict[str, keras.Model], rows: _TileRows, settings: Any, log: Log
) -> None:
    """The expert on the feedback images and the gate on feedback vs base, if the feedback holds both labels."""
    from_feedback = rows.from_feedback
    row_feedback = rows.rows(from_feedback)
    feedback_labels = set(rows.y_image[from_feedback].tolist())
    if len(feedback_labels) != 2:
        if from_feedback.any():
            log(f"the feedback holds one label only ({sorted(feedback_labels)}): no expert trained")
        return
    beta_expert = settings.beta if settings.beta is not None else float(rows.y_image[from_feedback].mean())
    epochs = _epochs_for(int(row_feedback.sum()), settings.batch_size, EXPERT_STEPS)
    log(
        f"training the expert on {int(row_feedback.sum())} tiles of {int(from_feedback.sum())} feedback images "
        f"({float(rows.y_image[from_feedback].mean()):.1%} ai), {epochs} epochs"
    )
    head.get_layer("expert_standardize").set_statistics(rows.x[row_feedback])
    _fit_rows(part["expert"], rows, from_feedback, settings, beta=beta_expert, epochs=epochs, seed=settings.seed + 1)
    log(f"training the gate: feedback ({int(from_feedback.sum())} images) vs base ({int((~from_feedback).sum())})")
    head.get_layer("gate_standardize").set_statistics(rows.x)
    gate = head.get_layer("gate")  # opened from zero: from the closed bias, 300 steps would not get it open
    gate.set_weights([np.zeros_like(w) for w in gate.get_weights()])
    _fit(
        part["gate"],
        rows.x,
        row_feedback.astype(np.float32),
        _weights(rows.counts, from_feedback),
        settings,
        alpha=0.0,
        beta=0.5,
        epochs=_epochs_for(len(rows.x), settings.batch_size, EXPERT_STEPS),
        seed=settings.seed + 2,
    )


def train_multiscale(
    config: ModelConfig,
    train_data: ImageSet,
    val_data: ArrayData,
    settings: Any,
    *,
    initial_model: keras.Model | None = None,
    store: ObjectStore | None = None,
    log: Log = print,
) -> Any:
    """Fit the head on cached tile features; returns a ``model.train.TrainResult``.

    The base unit is fitted on the base datasets (early-stopped on validation F1) when there is
    no champion to start from; a warm start keeps the champion's. The expert and the gate are
    fitted whenever the training set holds images of ``settings.expert_datasets`` of both labels.
    """
    from model.train import TrainResult

    if not len(train_data):
        raise ValueError("no training images")
    if not len(val_data):
        raise ValueError("no validation images")
    keras.utils.set_random_seed(settings.seed)
    started = time.perf_counter()
    weights = resolve_weights(config, settings.weights)
    model = initial_model if initial_model is not None else build_model(config, weights)
    cache = FeatureCache(store, extractor_id(model, config))
    train_rows = tile_features(model, config, train_data, cache, log=log, workers=settings.workers)
    val_rows = tile_features(model, config, val_data, cache, log=log, workers=settings.workers)
    rows = _TileRows.of(train_rows, train_data, settings.expert_datasets)
    head = model.get_layer(HEAD)
    part = {name: _unit(head, name) for name in ("base", "expert", "gate")}
    history: list[dict[str, float]] = []
    best_epoch = 0
    base_images = rows.base_images()
    beta_base = settings.beta if settings.beta is not None else float(rows.y_image[base_images].mean())

    if initial_model is None:
        history, best_epoch = _train_base(
            head, part["base"], rows, base_images, beta_base, (val_data, val_rows), settings, config.name, log
        )
    else:
        log("warm start: the champion's base unit is kept")

    _train_expert_and_gate(head, part, rows, settings, log)
    val_metrics = binary_metrics(val_data.y, image_scores(head, val_rows))
    log(f"validation: accuracy {val_metrics['accuracy']:.4f}, F1 {val_metrics['f1']:.4f}")
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        val_metrics=val_metrics,
        beta=beta_base,
        seconds=time.perf_counter() - started,
        stopped_early=0 < len(history) < settings.epochs,
    )
