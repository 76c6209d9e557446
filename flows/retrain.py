"""``retrain`` and ``train-model``: train a challenger, judge it against the champion, promote.

The order keeps the registry consistent whatever fails: nothing is written until the
challenger is trained, exported, parity-checked, calibrated and judged; the version is
registered (with its verdict) before the alias moves; the alias moves by conditional put.
Only one retrain runs at a time (a lease in the store, and the deployment's concurrency
limit in ``prefect.yaml``).

``train-model`` is its own flow so that it can run as its own deployment on the ``gpu``
work pool: ``retrain`` (on the ``cpu`` pool) starts it with ``run_deployment`` and waits.
The two may run on different machines, so everything passes through the object store:
the champion to warm-start from by registry version, the trained model and its history
under ``training/<run>/``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from aidetect.settings import PRODUCTION_ALIAS, get_settings
from aidetect.version import code_version
from flows.common import lease, store_for
from model.calibration import apply_temperature, fit_temperature, fit_uncertain_band
from model.config import DEFAULT_ARCHITECTURE, WEIGHT_SUFFIXES, ModelConfig, default_weights, get_config
from model.data import ArrayData, ImageSet, list_datasets, load_images, oversample_small_datasets, resolve
from model.evaluation import evaluate_model
from model.gate import GateConfig, Verdict, judge
from model.inference import OnnxModel, median_latency_ms
from model.registry import CANARIES_FILE, KERAS_FILE, ONNX_FILE, Registry
from model.robustness import TIERS
from storage.layout import TRAINING, new_version_id

INT8_FILE = "model.int8.onnx"


@dataclass
class TrainedModel:
    keras_path: Path
    config: ModelConfig
    history: list[dict[str, float]]
    best_epoch: int
    val_metrics: dict[str, float]
    beta: float
    seconds: float
    train_images: int
    stopped_early: bool


@dataclass
class Exported:
    onnx: Path
    int8: Path
    parity: float
    canaries: dict[str, np.ndarray]


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def resolve_datasets(store_url: str | None, datasets: list[str] | None) -> list[str]:
    """``name@version`` for each requested dataset (default: the latest of every dataset)."""
    store = store_for(store_url)
    names = datasets or list(list_datasets(store))
    if not names:
        raise ValueError(f"no datasets in {store.url}: run `aidetect data import` first")
    return ["@".join(resolve(store, ref)) for ref in names]


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def load_data(store_url: str | None, refs: list[str], split: str, limit: int | None = None) -> ImageSet:
    data = load_images(store_for(store_url), refs, split, limit=limit)
    get_run_logger().info("%s: %d images from %s", split, len(data), ", ".join(refs))
    return data


BUILTIN_WEIGHTS = ("none", "imagenet", "default")


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


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def fetch_keras(store_url: str | None, version: str, dest: Path) -> Path:
    """A registered version's Keras file (to warm-start from), by registry version."""
    return Registry(store_for(store_url)).download(version, KERAS_FILE, dest / "warm_start" / KERAS_FILE)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def publish_trained(store_url: str | None, run_id: str, trained: TrainedModel) -> dict[str, Any]:
    """Upload the trained model and its record to ``training/<run_id>/`` for the retrain that waits."""
    store = store_for(store_url)
    prefix = f"{TRAINING}{run_id}/"
    store.upload(trained.keras_path, prefix + KERAS_FILE)
    record = {
        "config": trained.config.to_dict(),
        "history": trained.history,
        "best_epoch": trained.best_epoch,
        "val_metrics": trained.val_metrics,
        "beta": trained.beta,
        "seconds": trained.seconds,
        "train_images": trained.train_images,
        "stopped_early": trained.stopped_early,
    }
    store.put(prefix + "result.json", json.dumps(record, indent=2).encode())  # written last: the run's "done"
    return record


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def fetch_trained(store_url: str | None, run_id: str, dest: Path) -> TrainedModel:
    store = store_for(store_url)
    prefix = f"{TRAINING}{run_id}/"
    record = json.loads(store.get(prefix + "result.json"))
    path = dest / KERAS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    store.download(prefix + KERAS_FILE, path)
    return TrainedModel(
        path,
        ModelConfig.from_dict(record["config"]),
        record["history"],
        record["best_epoch"],
        record["val_metrics"],
        record["beta"],
        record["seconds"],
        record["train_images"],
        record["stopped_early"],
    )


@flow(name="train-model", log_prints=True)
def train_model(
    refs: list[str],
    run_id: str,
    architecture: str = DEFAULT_ARCHITECTURE,
    image_size: int | None = None,
    train_settings: dict[str, Any] | None = None,
    max_train_images: int | None = None,
    min_dataset_share: float = 0.1,
    warm_start_version: str | None = None,
    store_url: str | None = None,
) -> dict[str, Any]:
    """Train one model on the train split of ``refs``; publish it under ``training/<run_id>/``.

    Runs wherever its work pool puts it (the ``gpu`` pool in ``prefect.yaml``; any Keras
    backend). Datasets smaller than ``min_dataset_share`` of the training set (feedback,
    typically) are oversampled up to that share. ``warm_start_version`` is a registry
    version to start from. A run re-started with the same ``run_id`` on the same machine
    resumes from its last checkpoint.
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


@task(cache_policy=NO_CACHE)
def export_and_check(trained: TrainedModel, val_data: ArrayData, out_dir: Path) -> Exported:
    """ONNX export, graph optimisation, Keras-vs-ONNX parity, canaries, the INT8 variant."""
    import keras

    from model.export import (
        PARITY_TOLERANCE,
        calibration_sample,
        check_parity,
        export_onnx,
        make_canaries,
        optimize_onnx,
        quantize_int8,
    )
    from model.inference import check_canaries

    logger = get_run_logger()
    model = keras.saving.load_model(trained.keras_path, compile=False)
    raw = export_onnx(model, out_dir / "exported.onnx", input_fit=trained.config.input_fit)
    path = optimize_onnx(raw, out_dir / ONNX_FILE)
    onnx_model = OnnxModel(path)
    # every dataset's images (the feedback's photos too, not only the base data's thumbnails)
    small = trained.config.image_size <= 64
    spread = calibration_sample(val_data.dataset, val_data.y, 256 if small else 64)
    sample = val_data.x[spread[:64]]
    canaries = make_canaries(model, val_data.x[spread[:8]])
    diff = max(check_parity(model, onnx_model, sample), check_canaries(onnx_model, canaries, PARITY_TOLERANCE))
    logger.info("exported %s: Keras vs ONNX max |diff| = %.2e on %d images + canaries", path.name, diff, len(sample))
    int8 = quantize_int8(path, out_dir / INT8_FILE, val_data.x[spread if small else spread[:32]])
    # INT8 scores move by up to a few hundredths: serving checks that file against its own outputs
    canaries["expected_int8"], _ = OnnxModel(int8).predict(canaries["inputs"])
    return Exported(path, int8, diff, canaries)


@task(cache_policy=NO_CACHE)
def calibrate(
    onnx_path: Path, val_data: ArrayData, target_accuracy: float, max_uncertain_share: float
) -> dict[str, Any]:
    """Temperature scaling and the ``uncertain`` band, both fitted on validation."""
    scores, _ = OnnxModel(onnx_path, tile_shortcut=True).predict(val_data.x)
    temperature = fit_temperature(val_data.y, scores)
    calibrated = apply_temperature(scores, temperature)
    band = fit_uncertain_band(val_data.y, calibrated, target_accuracy, max_uncertain_share)
    return {"temperature": float(temperature), "uncertain_band": [float(band[0]), float(band[1])]}


def split_test(test: ImageSet, feedback_dataset: str, pinned: ImageSet | None = None) -> tuple[ImageSet, ImageSet]:
    """The frozen test split (of the base datasets, or ``pinned``), and the regression set
    (the held-out feedback)."""

    def feedback_rows(data: ImageSet) -> np.ndarray:
        return np.asarray([name == feedback_dataset for name in data.dataset], dtype=bool)

    regression = test.subset(np.flatnonzero(feedback_rows(test)))
    base = pinned if pinned is not None else test
    frozen = base.subset(np.flatnonzero(~feedback_rows(base)))
    if not len(frozen):
        raise ValueError(f"no frozen test images: retrain needs a base dataset besides {feedback_dataset!r}")
    return frozen, regression


@task(cache_policy=NO_CACHE)
def evaluate(
    onnx_path: Path,
    frozen: ImageSet,
    regression: ImageSet,
    temperature: float,
    beta: float | None,
    robustness: tuple[str, ...] = TIERS,
) -> tuple[dict[str, Any], np.ndarray]:
    """Every metric on the frozen test split (calibrated scores), per dataset and generator and
    ``robustness`` tier, plus ``regression``: the metrics on the held-out feedback."""
    model = OnnxModel(onnx_path, tile_shortcut=True)  # thumbnails scored as one tile: the same numbers
    return evaluate_model(model, frozen, regression, temperature, beta, robustness)


@task(cache_policy=NO_CACHE)
def measure_latency(onnx_path: Path, val_data: ArrayData) -> float:
    return median_latency_ms(OnnxModel(onnx_path), val_data.x)


@task(cache_policy=NO_CACHE)
def drift_reference(onnx_path: Path, images: list[bytes], calibration: dict[str, Any]) -> dict[str, bytes]:
    """Reference features for ``monitor-drift`` (image statistics, embeddings, scores) and
    its thresholds calibrated on reference-vs-reference splits; stored with the model."""
    from model.drift import MIN_REFERENCE_ROWS, build_reference_files

    if len(images) < MIN_REFERENCE_ROWS:
        get_run_logger().warning(
            "only %d validation images: too few for a drift reference (%d); monitor-drift will refuse this version",
            len(images),
            MIN_REFERENCE_ROWS,
        )
        return {}
    return build_reference_files(
        onnx_path,
        images,
        calibration["temperature"],
        uncertain_band=(float(calibration["uncertain_band"][0]), float(calibration["uncertain_band"][1])),
    )


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def fetch_champion(store_url: str | None, alias: str, out_dir: Path) -> dict[str, Any] | None:
    """The current champion's metadata and a local copy of its ONNX file, if there is one."""
    registry = Registry(store_for(store_url))
    record, _ = registry.alias(alias)
    if record is None:
        return None
    meta = registry.metadata(record.version)
    folder = out_dir / "champion"
    registry.download(record.version, ONNX_FILE, folder / ONNX_FILE)
    return {"version": record.version, "metadata": meta, "onnx": folder / ONNX_FILE}


@task(cache_policy=NO_CACHE)
def make_plots(
    trained: TrainedModel,
    test: ImageSet,
    scores: np.ndarray,
    metrics: dict[str, Any],
    champion_scores: np.ndarray | None,
    out_dir: Path,
) -> dict[str, Path]:
    from model.plots import evaluation_plots, plot_training_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    others = {"champion": (test.y, champion_scores)} if champion_scores is not None else None
    return {
        "training_curves.png": plot_training_curves(trained.history, out_dir / "training_curves.png"),
        **evaluation_plots(test.y, scores, metrics, out_dir, label="challenger", others=others),
    }


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def register(store_url: str | None, files: dict[str, Path | bytes], metadata: dict[str, Any]) -> str:
    return Registry(store_for(store_url)).register(files, metadata)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def record_verdict(store_url: str | None, version: str, verdict: Verdict) -> None:
    Registry(store_for(store_url)).record_event(
        "blessed" if verdict.blessed else "rejected", version, reasons=verdict.reasons, notes=verdict.notes
    )


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def promote(store_url: str | None, version: str, alias: str, reason: str) -> None:
    Registry(store_for(store_url)).promote(version, alias, reason=reason)


def _report(
    version: str,
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    champion_version: str | None,
    verdict: Verdict,
    latency_ms: float,
    plots: dict[str, Path],
) -> str:
    rows = ["| metric (frozen test split) | challenger | champion |", "|---|---|---|"]

    def row(label: str, ours: float | None, theirs: float | None) -> None:
        def cell(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        rows.append(f"| {label} | {cell(ours)} | {cell(theirs)} |")

    for key in (
        "accuracy",
        "f1",
        "precision",
        "recall_ai",
        "recall_real",
        "roc_auc",
        "average_precision",
        "ece",
        "mean_prediction",
    ):
        row(key, challenger[key], champion.get(key) if champion else None)
    ours_reg, theirs_reg = challenger.get("regression"), (champion or {}).get("regression")
    if ours_reg:
        row(
            f"accuracy on the regression set ({int(ours_reg['n'])} held-out feedback images)",
            ours_reg["accuracy"],
            theirs_reg["accuracy"] if theirs_reg else None,
        )
    for name, metrics in challenger["by_dataset"].items():
        other = champion["by_dataset"].get(name) if champion else None
        row(f"accuracy on {name}", metrics["accuracy"], other["accuracy"] if other else None)
    for tier, metrics in challenger["robustness"].items():
        other = champion["robustness"].get(tier) if champion else None
        row(f"accuracy, {tier}", metrics["accuracy"], other["accuracy"] if other else None)
    rows.append(f"| latency, one image (ms, median) | {latency_ms:.2f} | - |")
    status = "**blessed**" if verdict.blessed else "**rejected**"
    reasons = "".join(f"\n- {reason}" for reason in verdict.reasons)
    notes = "".join(f"\n- _{note}_" for note in verdict.notes)
    pictures = "\n".join(f"- `{path}`" for path in plots.values())
    return (
        f"# Retrain: {version}\n\nChampion: `{champion_version or 'none'}`. Verdict: {status}{reasons}{notes}\n\n"
        + "\n".join(rows)
        + f"\n\nPlots (also stored under `models/{version}/plots/`):\n{pictures}\n"
    )


@flow(name="retrain", log_prints=True)
def retrain(
    datasets: list[str] | None = None,
    architecture: str = DEFAULT_ARCHITECTURE,
    image_size: int | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    alpha: float = 0.1,
    beta: float | None = None,
    augment: bool = True,
    patience: int = 3,
    seed: int = 0,
    weights: str | None = None,
    max_train_images: int | None = None,
    min_dataset_share: float = 0.1,
    warm_start: bool = True,
    warm_start_lr_scale: float = 0.3,
    max_accuracy_drop: float = 0.02,
    min_accuracy: float = 0.6,
    gate: dict[str, float] | None = None,
    feedback_dataset: str = "feedback",
    test_datasets: list[str] | None = None,
    uncertain_target_accuracy: float = 0.95,
    max_uncertain_share: float = 0.1,
    reference_images: int = 2000,
    alias: str = PRODUCTION_ALIAS,
    auto_promote: bool = True,
    train_deployment: str | None = None,
    fallback_deployment: str | None = None,
    train_timeout_hours: float = 24.0,
    reason: str = "manual",
    store_url: str | None = None,
) -> dict[str, Any]:
    """Train a challenger on base data + feedback, judge it on the same test data as the
    champion, register it with its verdict and, if blessed, move the alias.

    ``weights`` is where a model trained from scratch starts: None (the architecture's default:
    ImageNet for the EfficientNet-Lite presets, random init otherwise), ``none``, ``imagenet``,
    or a ``.weights.h5`` / ``.keras`` file of the architecture, as a key in the store or a local
    path; given explicitly, it replaces the warm start from the champion. ``seed`` fixes the
    shuffling, augmentation and initialisation (the same seed on the same machine gives the same
    model; another machine's floating point may not). ``gate``: any of ``model.gate.GateConfig``'s
    thresholds (``max_accuracy_drop`` and ``min_accuracy`` are also parameters of their own). ``train_deployment``: run
    ``train-model`` as that deployment (e.g. ``train-model/gpu``) and wait for it, or on
    ``fallback_deployment`` when the first one's work pool has no online worker; without
    it, ``train-model`` runs in this process. ``reason`` (what started the run: the
    schedule, a drift event, feedback) is kept in the model's metadata. ``test_datasets``
    pins the frozen test split (e.g. ``["cifake@<version>"]``); by default it is the test
    split of the training datasets other than ``feedback_dataset``, whose test split is the
    regression set.
    """
    gate_config = GateConfig.from_dict(
        {"max_accuracy_drop": max_accuracy_drop, "min_accuracy": min_accuracy} | (gate or {})
    )
    run_id = new_version_id()
    with lease(
        store_for(store_url), "retrain", holder=f"retrain {run_id}", ttl_seconds=train_timeout_hours * 3600 + 3600
    ):
        return _retrain(
            run_id,
            datasets=datasets,
            architecture=architecture,
            image_size=image_size,
            train_settings={
                "epochs": epochs,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "alpha": alpha,
                "beta": beta,
                "augment": {} if augment else None,
                "patience": patience,
                "seed": seed,
                "weights": weights,
            },
            max_train_images=max_train_images,
            min_dataset_share=min_dataset_share,
            warm_start=warm_start,
            warm_start_lr_scale=warm_start_lr_scale,
            gate=gate_config,
            feedback_dataset=feedback_dataset,
            test_datasets=test_datasets,
            uncertain_target_accuracy=uncertain_target_accuracy,
            max_uncertain_share=max_uncertain_share,
            reference_images=reference_images,
            alias=alias,
            auto_promote=auto_promote,
            train_deployment=train_deployment,
            fallback_deployment=fallback_deployment,
            train_timeout_hours=train_timeout_hours,
            reason=reason,
            store_url=store_url,
        )


def _retrain(
    run_id: str,
    *,
    datasets: list[str] | None,
    architecture: str,
    image_size: int | None,
    train_settings: dict[str, Any],
    max_train_images: int | None,
    min_dataset_share: float,
    warm_start: bool,
    warm_start_lr_scale: float,
    gate: GateConfig,
    feedback_dataset: str,
    test_datasets: list[str] | None,
    uncertain_target_accuracy: float,
    max_uncertain_share: float,
    reference_images: int,
    alias: str,
    auto_promote: bool,
    train_deployment: str | None,
    fallback_deployment: str | None,
    train_timeout_hours: float,
    reason: str,
    store_url: str | None,
) -> dict[str, Any]:
    logger = get_run_logger()
    run_dir = get_settings().runs_dir / run_id
    refs = resolve_datasets(store_url, datasets)
    champion = fetch_champion(store_url, alias, run_dir)
    config = get_config(architecture, **({"image_size": image_size} if image_size else {}))
    check_weights(store_url, train_settings.get("weights"))
    warm = None
    if (
        warm_start
        and train_settings.get("weights") is None
        and champion
        and champion["metadata"].get("config")  # an outside model (aidetect model register) has none
        and ModelConfig.from_dict(champion["metadata"]["config"]) == config
    ):
        warm = champion["version"]
    # Fine-tuning the champion at the from-scratch rate would undo much of what it knows.
    train_settings = {
        **train_settings,
        "learning_rate": train_settings["learning_rate"] * (warm_start_lr_scale if warm else 1.0),
    }
    run_training(
        {
            "refs": refs,
            "run_id": run_id,
            "architecture": architecture,
            "image_size": image_size,
            "train_settings": train_settings,
            "max_train_images": max_train_images,
            "min_dataset_share": min_dataset_share,
            "warm_start_version": warm,
            "store_url": store_url,
        },
        train_deployment,
        fallback_deployment,
        train_timeout_hours * 3600,
    )
    trained = fetch_trained(store_url, run_id, run_dir / "challenger")
    val_set = load_data(store_url, refs, "val")
    val_data = val_set.decode(config.image_size, config.input_fit)
    exported = export_and_check(trained, val_data, run_dir / "challenger")
    calibration = calibrate(exported.onnx, val_data, uncertain_target_accuracy, max_uncertain_share)
    test_refs = resolve_datasets(store_url, test_datasets) if test_datasets else None
    pinned = load_data(store_url, test_refs, "test") if test_refs else None
    frozen, regression = split_test(load_data(store_url, refs, "test"), feedback_dataset, pinned)
    logger.info(
        "frozen test split: %d images; regression set: %d held-out feedback images", len(frozen), len(regression)
    )
    challenger_metrics, scores = evaluate(exported.onnx, frozen, regression, calibration["temperature"], trained.beta)
    # INT8's clean accuracy is what the metadata reports: the robustness tiers would triple its cost
    int8_metrics, _ = evaluate(exported.int8, frozen, regression, calibration["temperature"], trained.beta, ())
    latency_ms = measure_latency(exported.onnx, val_data)
    champion_metrics = champion_scores = None
    if champion:
        champion_meta = champion["metadata"]
        champion_metrics, champion_scores = evaluate(
            champion["onnx"],
            frozen,
            regression,
            float(champion_meta.get("temperature", 1.0)),
            champion_meta.get("train", {}).get("beta"),
        )
    verdict = judge(challenger_metrics, champion_metrics, exported.parity, gate, latency_ms=latency_ms)
    logger.info(
        "challenger accuracy %.4f vs champion %s: %s",
        challenger_metrics["accuracy"],
        f"{champion_metrics['accuracy']:.4f}" if champion_metrics else "none",
        "blessed" if verdict.blessed else "rejected: " + "; ".join(verdict.reasons),
    )
    reference_set = val_set.subset(np.random.default_rng(0).permutation(len(val_set))[:reference_images])
    reference = drift_reference(exported.onnx, reference_set.images, calibration)
    plots = make_plots(trained, frozen, scores, challenger_metrics, champion_scores, run_dir / "plots")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **exported.canaries)  # type: ignore[arg-type]
    files: dict[str, Path | bytes] = {
        ONNX_FILE: exported.onnx,
        INT8_FILE: exported.int8,
        KERAS_FILE: trained.keras_path,
        CANARIES_FILE: buffer.getvalue(),
        **reference,
        **{f"plots/{name}": path for name, path in plots.items()},
    }
    metadata = {
        "config": config.to_dict(),
        "input_size": config.image_size,
        "input_fit": config.input_fit,
        "class_names": ["real", "ai"],
        "threshold": 0.5,
        **calibration,
        "datasets": refs,
        "test_datasets": test_refs or [r for r in refs if r.partition("@")[0] != feedback_dataset],
        "parent_version": champion["version"] if champion else None,
        "warm_started_from": warm,
        # where training started: the champion (warm start), or the weights setting as resolved
        "initial_weights": f"warm start from {warm}"
        if warm
        else str(train_settings.get("weights") or default_weights(config) or "none"),
        "training_run": run_id,
        "trigger": reason,
        "train": {
            **train_settings,
            "beta": trained.beta,
            "images": trained.train_images,
            "seconds": trained.seconds,
            "stopped_early": trained.stopped_early,
        },
        "history": trained.history,
        "best_epoch": trained.best_epoch,
        "metrics": {"val": trained.val_metrics, "test": challenger_metrics, "latency_ms": latency_ms},
        "champion_metrics": champion_metrics,
        "int8": {
            "file": INT8_FILE,
            "test_accuracy": int8_metrics["accuracy"],
            "accuracy_change": int8_metrics["accuracy"] - challenger_metrics["accuracy"],
            # the held-out feedback too: the frozen split alone hid INT8 losing a new generator
            "regression_accuracy_change": int8_metrics["regression"]["accuracy"]
            - challenger_metrics["regression"]["accuracy"]
            if int8_metrics["regression"] and challenger_metrics["regression"]
            else None,
        },
        "file_sizes": {name: path.stat().st_size for name, path in files.items() if isinstance(path, Path)},
        "parity_max_abs_diff": exported.parity,
        "gate": {"config": gate.to_dict(), **verdict.to_dict()},
        "code_version": code_version(),
    }
    version = register(store_url, files, metadata)
    record_verdict(store_url, version, verdict)
    promoted = bool(verdict.blessed and auto_promote)
    if promoted:
        promote(store_url, version, alias, f"retrain: accuracy {challenger_metrics['accuracy']:.4f}")
        logger.info("promoted %s to %s", version, alias)
    (run_dir / "summary.json").write_text(json.dumps({"version": version, **metadata}, indent=2, default=str))
    create_markdown_artifact(
        key="retrain",
        markdown=_report(
            version,
            challenger_metrics,
            champion_metrics,
            champion["version"] if champion else None,
            verdict,
            latency_ms,
            plots,
        ),
        description=f"retrain {version}",
    )
    return {
        "version": version,
        "promoted": promoted,
        "verdict": verdict.to_dict(),
        "metrics": challenger_metrics,
        "champion": champion["version"] if champion else None,
        "champion_metrics": champion_metrics,
        "run_dir": str(run_dir),
    }
