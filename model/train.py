"""Training: backend-agnostic Keras 3 (TensorFlow here, JAX on GPU machines)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np

from model.architectures import build_model
from model.config import ModelConfig
from model.data import ArrayData
from model.loss import FairnessBCE
from model.metrics import binary_metrics

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_share: float = 0.05
    alpha: float = 0.1
    beta: float | None = None  # None: the training set's AI share
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: keras.Model
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    val_metrics: dict[str, float] = field(default_factory=dict)
    beta: float = 0.5
    seconds: float = 0.0


class ArrayBatches(keras.utils.PyDataset):
    """Shuffled mini-batches from in-memory arrays, with cheap augmentation outside the graph."""

    def __init__(self, data: ArrayData, batch_size: int, *, augment: bool, seed: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.data = data
        self.batch_size = batch_size
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(data))

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        x = self.data.x[rows]
        if self.augment:
            flip = self.rng.random(len(rows)) < 0.5
            x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        return x, self.data.y[rows]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.data))


def predict_scores(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    if not len(x):
        return np.zeros((0,), np.float32)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0)).reshape(-1)


class _ValidationF1(keras.callbacks.Callback):
    """Scores the validation split after each epoch, logs it, keeps the best weights by F1."""

    def __init__(self, val: ArrayData, log: Log, epochs: int):
        super().__init__()
        self.val = val
        self.log = log
        self.epochs = epochs
        self.history: list[dict[str, float]] = []
        self.best_f1 = -1.0
        self.best_epoch = 0
        self.best_weights: list[np.ndarray] | None = None
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = binary_metrics(self.val.y, predict_scores(self.model, self.val.x))
        row = {
            "epoch": epoch + 1,
            "loss": float((logs or {}).get("loss", float("nan"))),
            "val_accuracy": metrics["accuracy"],
            "val_f1": metrics["f1"],
            "val_mean_prediction": metrics["mean_prediction"],
            "seconds": time.perf_counter() - self.started,
        }
        self.history.append(row)
        self.log(
            f"epoch {epoch + 1}/{self.epochs}: loss {row['loss']:.4f}, val accuracy {row['val_accuracy']:.4f}, "
            f"val F1 {row['val_f1']:.4f} ({row['seconds']:.0f} s)"
        )
        if metrics["f1"] > self.best_f1:
            self.best_f1, self.best_epoch = metrics["f1"], epoch + 1
            self.best_weights = [np.array(w) for w in self.model.get_weights()]


def train(
    config: ModelConfig,
    train_data: ArrayData,
    val_data: ArrayData,
    settings: TrainConfig,
    *,
    initial_model: keras.Model | None = None,
    log: Log = print,
) -> TrainResult:
    """Train (or fine-tune ``initial_model``) with the fairness loss and AdamW; keep the best epoch."""
    if not len(train_data):
        raise ValueError("no training images")
    if not len(val_data):
        raise ValueError("no validation images")
    keras.utils.set_random_seed(settings.seed)
    model = initial_model if initial_model is not None else build_model(config)
    beta = settings.beta if settings.beta is not None else train_data.ai_share
    steps = math.ceil(len(train_data) / settings.batch_size) * settings.epochs
    warmup = int(steps * settings.warmup_share)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else settings.learning_rate,
        decay_steps=max(1, steps - warmup),
        warmup_target=settings.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=settings.weight_decay),
        loss=FairnessBCE(alpha=settings.alpha, beta=beta),
    )
    batches = ArrayBatches(train_data, settings.batch_size, augment=True, seed=settings.seed)
    tracker = _ValidationF1(val_data, log, settings.epochs)
    log(f"training {config.name} on {len(train_data)} images ({train_data.ai_share:.1%} ai), beta={beta:.3f}")
    started = time.perf_counter()
    model.fit(batches, epochs=settings.epochs, callbacks=[tracker], verbose=0)
    if tracker.best_weights is not None:
        model.set_weights(tracker.best_weights)
    val_metrics = binary_metrics(val_data.y, predict_scores(model, val_data.x))
    return TrainResult(
        model=model,
        history=tracker.history,
        best_epoch=tracker.best_epoch,
        val_metrics=val_metrics,
        beta=beta,
        seconds=time.perf_counter() - started,
    )
