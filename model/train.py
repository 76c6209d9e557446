"""Training: backend-agnostic Keras 3 (TensorFlow here, JAX on GPU machines).

The input pipeline needs no TensorFlow: ``ImageBatches`` decodes and augments the encoded
images of a dataset version in worker threads (numpy + Pillow), one batch at a time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from model.architectures import build_model, resolve_weights
from model.augment import AugmentConfig, augment
from model.config import DEFAULT_EPOCHS, ModelConfig
from model.imagesets import ArrayData, ImageSet
from model.loss import FairnessBCE
from model.metrics import binary_metrics
from model.preprocess import decode_image, to_model_input
from storage import ObjectStore

Log = Callable[[str], None]
CHECKPOINT = "checkpoint.keras"
CHECKPOINT_STATE = "checkpoint.json"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_share: float = 0.05
    alpha: float = 0.1
    beta: float | None = None  # None: the training set's AI share
    seed: int = 0
    # None: the architecture's default (model.architectures.resolve_weights); "none"; "imagenet";
    # or a local .weights.h5 / .keras file of this architecture. Ignored when fine-tuning a model.
    weights: str | None = None
    augment: dict[str, Any] | None = field(default_factory=dict)  # AugmentConfig fields; None: off
    patience: int = 3  # early stopping: epochs without a better validation F1
    precision: str = "float32"  # or "mixed_bfloat16" / "mixed_float16" (test before relying on it)
    workers: int = 2  # threads decoding and augmenting batches
    progress: bool = False  # Keras progress bar (per-epoch lines are always logged)
    # The multiscale head (model.multiscale): the datasets whose images train its expert
    expert_datasets: tuple[str, ...] = ("feedback",)

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
    stopped_early: bool = False


class ImageBatches(keras.utils.PyDataset):
    """Shuffled mini-batches decoded (and augmented) from encoded images, in worker threads.

    Each image's randomness comes from (seed, epoch, index), so batches are reproducible
    whatever thread builds them.
    """

    def __init__(
        self,
        data: ImageSet,
        size: int,
        batch_size: int,
        *,
        augment_config: AugmentConfig | None,
        seed: int,
        workers: int = 1,
    ):
        super().__init__(workers=workers, use_multiprocessing=False)
        self.data = data
        self.size = size
        self.batch_size = batch_size
        self.augment_config = augment_config
        self.seed = seed
        self.epoch = 0
        self.order = np.random.default_rng((seed, 0)).permutation(len(data))

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def _pixels(self, row: int) -> np.ndarray:
        image = decode_image(self.data.images[row])
        if self.augment_config is None:
            return to_model_input(image, self.size)
        # Augmenting a 512-px photo for a 32-px model costs 100x the work for pixels the final
        # resize throws away: shrink (box filter) to at least twice the model's size first.
        factor = min(image.size) // (2 * self.size)
        if factor >= 2:
            image = image.reduce(factor)
        return augment(image, self.size, np.random.default_rng((self.seed, self.epoch, row)), self.augment_config)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return np.stack([self._pixels(int(r)) for r in rows]), self.data.y[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.data))


def predict_scores(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    if not len(x):
        return np.zeros((0,), np.float32)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0)).reshape(-1)


class _ValidationF1(keras.callbacks.Callback):
    """After each epoch: score validation, log, keep the best weights by F1, checkpoint, stop early."""

    def __init__(
        self, val: ArrayData, log: Log, settings: TrainConfig, checkpoint_dir: Path | None, state: dict[str, Any]
    ):
        super().__init__()
        self.val = val
        self.log = log
        self.settings = settings
        self.checkpoint_dir = checkpoint_dir
        self.history: list[dict[str, float]] = list(state.get("history", []))
        self.best_f1 = float(state.get("best_f1", -1.0))
        self.best_epoch = int(state.get("best_epoch", 0))
        self.best_weights: list[np.ndarray] | None = None
        self.stopped_early = False
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
            f"epoch {epoch + 1}/{self.settings.epochs}: loss {row['loss']:.4f}, val accuracy "
            f"{row['val_accuracy']:.4f}, val F1 {row['val_f1']:.4f} ({row['seconds']:.0f} s)"
        )
        if not np.isfinite(row["loss"]):
            raise FloatingPointError(f"loss is {row['loss']} at epoch {epoch + 1}: training diverged")
        improved = metrics["f1"] > self.best_f1
        if improved:
            self.best_f1, self.best_epoch = metrics["f1"], epoch + 1
            self.best_weights = [np.array(w) for w in self.model.get_weights()]
        if epoch + 1 - self.best_epoch >= self.settings.patience:
            self.log(f"early stop: no better validation F1 for {self.settings.patience} epochs")
            self.stopped_early = True
            self.model.stop_training = True
        if self.checkpoint_dir is not None:
            self._checkpoint(epoch + 1, improved)

    def _checkpoint(self, epochs_done: int, improved: bool) -> None:
        if self.checkpoint_dir is None:
            raise RuntimeError("no checkpoint folder")
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if improved:
            self.model.save(self.checkpoint_dir / ".best.keras")
            (self.checkpoint_dir / ".best.keras").replace(self.checkpoint_dir / "best.keras")
        # With the optimizer state, so that a resumed run continues the schedule.
        self.model.save(self.checkpoint_dir / f".{CHECKPOINT}")
        (self.checkpoint_dir / f".{CHECKPOINT}").replace(self.checkpoint_dir / CHECKPOINT)
        state = {
            "epochs_done": epochs_done,
            "history": self.history,
            "best_f1": self.best_f1,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
        }
        (self.checkpoint_dir / CHECKPOINT_STATE).write_text(json.dumps(state))


def train(
    config: ModelConfig,
    train_data: ImageSet,
    val_data: ArrayData,
    settings: TrainConfig,
    *,
    initial_model: keras.Model | None = None,
    checkpoint_dir: Path | None = None,
    store: ObjectStore | None = None,
    log: Log = print,
) -> TrainResult:
    """Train (or fine-tune ``initial_model``) with the fairness loss and AdamW; keep the best epoch.

    The multiscale detector trains its head on cached frozen-backbone features instead
    (``model.multiscale``; ``store`` holds the feature cache).

    With ``checkpoint_dir``, every epoch is checkpointed there and a run that finds a
    checkpoint resumes from it (model, optimizer state, history).
    """
    if not len(train_data):
        raise ValueError("no training images")
    if not len(val_data):
        raise ValueError("no validation images")
    if config.head == "multiscale":
        from model.multiscale import train_multiscale

        return train_multiscale(
            config, train_data, val_data, settings, initial_model=initial_model, store=store, log=log
        )
    keras.utils.set_random_seed(settings.seed)
    keras.mixed_precision.set_global_policy(settings.precision)
    try:
        return _train(config, train_data, val_data, settings, initial_model, checkpoint_dir, log)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _train(
    config: ModelConfig,
    train_data: ImageSet,
    val_data: ArrayData,
    settings: TrainConfig,
    initial_model: keras.Model | None,
    checkpoint_dir: Path | None,
    log: Log,
) -> TrainResult:
    beta = settings.beta if settings.beta is not None else train_data.ai_share
    state: dict[str, Any] = {}
    if checkpoint_dir is not None and (checkpoint_dir / CHECKPOINT_STATE).is_file():
        state = json.loads((checkpoint_dir / CHECKPOINT_STATE).read_text())
        model = keras.saving.load_model(checkpoint_dir / CHECKPOINT)
        log(f"resuming from {checkpoint_dir} after epoch {state['epochs_done']}")
    else:
        if initial_model is None:
            model = build_model(config, resolve_weights(config, settings.weights))
        else:
            model = initial_model
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
    augment_config = AugmentConfig(**settings.augment) if settings.augment is not None else None
    batches = ImageBatches(
        train_data,
        config.image_size,
        settings.batch_size,
        augment_config=augment_config,
        seed=settings.seed,
        workers=settings.workers,
    )
    tracker = _ValidationF1(val_data, log, settings, checkpoint_dir, state)
    start_epoch = int(state.get("epochs_done", 0))
    batches.epoch = start_epoch
    log(
        f"training {config.name} on {len(train_data)} images ({train_data.ai_share:.1%} ai), beta={beta:.3f}, "
        f"augmentation {'on' if augment_config else 'off'}, {settings.precision}"
    )
    started = time.perf_counter()
    if start_epoch < settings.epochs and not state.get("stopped_early"):
        model.fit(
            batches,
            epochs=settings.epochs,
            initial_epoch=start_epoch,
            callbacks=[tracker],
            verbose=1 if settings.progress else 0,
        )
    if tracker.best_weights is not None:
        model.set_weights(tracker.best_weights)
    elif checkpoint_dir is not None and (checkpoint_dir / "best.keras").is_file():
        model.set_weights(keras.saving.load_model(checkpoint_dir / "best.keras", compile=False).get_weights())
    val_metrics = binary_metrics(val_data.y, predict_scores(model, val_data.x))
    return TrainResult(
        model=model,
        history=tracker.history,
        best_epoch=tracker.best_epoch,
        val_metrics=val_metrics,
        beta=beta,
        seconds=time.perf_counter() - started,
        stopped_early=tracker.stopped_early,
    )
