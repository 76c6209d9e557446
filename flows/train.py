"""``train-model``: train one model on the train split of some datasets, publish it to the store.

Its own flow so that it can run as its own deployment on the ``gpu`` work pool: ``retrain``
(on the ``cpu`` pool) starts it with ``run_training`` and waits. The two may run on
different machines, so everything passes through the object store: the champion to
warm-start from by registry version, the trained model and its record under
``training/<run>/``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from aidetect.settings import get_settings
from flows.common import io_task, load_data, store_for
from model.config import DEFAULT_ARCHITECTURE, WEIGHT_SUFFIXES, ModelConfig, get_config
from model.imagesets import ArrayData, ImageSet, oversample_small_datasets
from model.registry import KERAS_FILE, Registry
from storage.layout import training_prefix

RESULT_FILE = "result.json"  # written last: a training run's "done"
BUILTIN_WEIGHTS = ("none", "imagenet", "default")
MIN_DATASET_SHARE = 0.1  # a dataset smaller than this share of the training set is oversampled up to it


@dataclass
class TrainedModel:
    """A trained model on this machine and the record of its training."""

    keras_path: Path
    config: ModelConfig
    history: list[dict[str, float]]
    best_epoch: int
    val_metrics: dict[str, float]
    beta: float
    seconds: float
    train_images: int
    stopped_early: bool

    def to_record(self) -> dict[str, Any]:
        """Everything but the local path, as JSON (``result.json``)."""
        record = asdict(self)
        del record["keras_path"]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], keras_path: Path) -> TrainedModel:
        return cls(keras_path=keras_path, **{**record, "config": ModelConfig.from_dict(record["config"])})


def check_weights(store_url: str | None, weights: str | None) -> None:
    """Refuse a ``weights`` setting that names no usable file, before anything is trained."""
    if weights is None or weights in BUILTIN_WEIGHTS:
        return
    if not weights.endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"weights {weights!r}: expected none, imagenet, or a .weights.h5 / .keras file")
    if not Path(weights).is_file() and not store_for(store_url).exists(weights):
        raise FileNotFoundError(f"weights {weights!r}: no such file here, and no such key in the store")


def local_weights(store_url: str | None, weights: str | None, out_dir: Path) -> str | None:
    """``weights`` as ``model.train.TrainConfig`` takes it: a store key is downloaded into ``out_dir``."""
    check_weights(store_url, weights)
    if weights is None or weights in BUILTIN_WEIGHTS or Path(weights).is_file():
        return weights
    target = out_dir / "initial" / Path(weights).name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(store_for(store_url).get(weights))
    return str(target)


@task(cache_policy=NO_CACHE)
def fit(
    config: ModelConfig,
    train_data: ImageSet,
    val_data: ArrayData,
    train_settings: dict[str, Any],
    initial_keras: Path | None,
    out_dir: Path,
    store_url: str | None = None,
) -> TrainedModel:
    """Train (or fine-tune ``initial_keras``) with ``model.train``; save the best model in ``out_dir``."""
    import keras

    from model.train import TrainConfig, train

    logger = get_run_logger()
    initial = keras.saving.load_model(initial_keras, compile=False) if initial_keras else None
    if initial is not None:
        logger.info("warm start from %s", initial_keras)
    settings = {**train_settings, "weights": local_weights(store_url, train_settings.get("weights"), out_dir)}
    if initial is None:
        logger.info("initial weights: %s", settings["weights"] or "the architecture's default")
    result = train(
        config,
        train_data,
        val_data,
        TrainConfig(**settings),
        initial_model=initial,
        checkpoint_dir=out_dir / "checkpoints",
        store=store_for(store_url),
        log=logger.info,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / KERAS_FILE
    result.model.save(path)
    return TrainedModel(
        path,
        config,
        result.history,
        result.best_epoch,
        result.val_metrics,
        result.beta,
        result.seconds,
        len(train_data),
        result.stopped_early,
    )


@io_task
def fetch_keras(store_url: str | None, version: str, dest: Path) -> Path:
    """A registered version's Keras file (to warm-start from), by registry version."""
    return Registry(store_for(store_url)).download(version, KERAS_FILE, dest / "warm_start" / KERAS_FILE)


@io_task
def publish_trained(store_url: str | None, run_id: str, trained: TrainedModel) -> dict[str, Any]:
    """Upload the trained model and its record to ``training/<run_id>/`` for the retrain that waits."""
    store = store_for(store_url)
    prefix = training_prefix(run_id)
    store.upload(trained.keras_path, prefix + KERAS_FILE)
    record = trained.to_record()
    store.put(prefix + RESULT_FILE, json.dumps(record, indent=2).encode())
    return record


@io_task
def fetch_trained(store_url: str | None, run_id: str, dest: Path) -> TrainedModel:
    """The model a ``train-model`` run published, downloaded to ``dest``."""
    store = store_for(store_url)
    prefix = training_prefix(run_id)
    record = json.loads(store.get(prefix + RESULT_FILE))
    path = dest / KERAS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    store.download(prefix + KERAS_FILE, path)
    return TrainedModel.from_record(record, path)


@flow(name="train-model", log_prints=True)
def train_model(
    refs: list[str],
    run_id: str,
    architecture: str = DEFAULT_ARCHITECTURE,
    image_size: int | None = None,
    train_settings: dict[str, Any] | None = None,
    max_train_images: int | None = None,
    min_dataset_share: float = MIN_DATASET_SHARE,
    warm_start_version: str | None = None,
    store_url: str | None = None,
) -> dict[str, Any]:
    """Train one model on the train split of ``refs``; publish it under ``training/<run_id>/``.

    Runs wherever its work pool puts it (the ``gpu`` pool in ``prefect.yaml``; any Keras
    backend). Datasets smaller than ``min_dataset_share`` of the training set (feedback,
    typically) are oversampled up to that share. ``train_settings``: fields of
    ``model.train.TrainConfig`` (the rest keep its defaults). ``warm_start_version`` is a
    registry version to start from. A run re-started with the same ``run_id`` on the same
    machine resumes from its last checkpoint.
    """
    config = get_config(architecture, **({"image_size": image_size} if image_size else {}))
    train_data = oversample_small_datasets(load_data(store_url, refs, "train", max_train_images), min_dataset_share)
    val_data = load_data(store_url, refs, "val").decode(config.image_size, config.input_fit)
    folder = get_settings().runs_dir / run_id / "train"
    initial = fetch_keras(store_url, warm_start_version, folder) if warm_start_version else None
    trained = fit(config, train_data, val_data, train_settings or {}, initial, folder, store_url)
    return publish_trained(store_url, run_id, trained)


def _choose_deployment(name: str, fallback: str | None) -> str:
    """``name``, or ``fallback`` when ``name``'s work pool has no online worker."""
    from prefect import get_client
    from prefect.client.schemas.objects import WorkPoolStatus

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        if fallback is None or deployment.work_pool_name is None:
            return name
        pool = client.read_work_pool(deployment.work_pool_name)
    if pool.status == WorkPoolStatus.READY:
        return name
    get_run_logger().warning(
        "work pool %r has no online worker (%s): training on %s instead", pool.name, pool.status, fallback
    )
    return fallback


def run_training(params: dict[str, Any], deployment: str | None, fallback: str | None, timeout_seconds: float) -> None:
    """``train-model`` in this process (no deployment), or as a run of its deployment, waited for."""
    if not deployment:
        train_model(**params)
        return
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    chosen = _choose_deployment(deployment, fallback)
    get_run_logger().info("starting %s and waiting for it", chosen)
    run = run_deployment(name=chosen, parameters=params, timeout=timeout_seconds, poll_interval=5)
    if not isinstance(run, FlowRun):  # the sync call returns one (we are not in an event loop)
        raise TypeError(f"run_deployment returned {type(run).__name__}, expected a FlowRun")
    state = run.state
    if state is None or not state.is_completed():
        raise RuntimeError(
            f"train-model run {run.name!r} on {chosen} ended {state.name if state else 'without a state'}"
            + (f": {state.message}" if state and state.message else "")
        )
