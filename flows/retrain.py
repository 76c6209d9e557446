"""``retrain`` and ``train-model``: train a challenger, judge it against the champion, promote.

The order keeps the registry consistent whatever fails: nothing is written until the
challenger is trained, exported, parity-checked and judged; the version is registered
(with its verdict) before the alias moves; the alias moves by conditional put.
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

from aidetect.settings import get_settings
from flows.common import code_version, store_for
from model.config import ModelConfig, get_config
from model.data import ArrayData, list_datasets, load_split, oversample_small_datasets, resolve
from model.gate import GateConfig, Verdict, judge
from model.inference import OnnxModel
from model.metrics import binary_metrics
from model.registry import CANARIES_FILE, KERAS_FILE, ONNX_FILE, Registry
from storage.layout import new_version_id


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


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def resolve_datasets(store_url: str | None, datasets: list[str] | None) -> list[str]:
    """``name@version`` for each requested dataset (default: the latest of every dataset)."""
    store = store_for(store_url)
    names = datasets or list(list_datasets(store))
    if not names:
        raise ValueError(f"no datasets in {store.url}: run `aidetect data import` first")
    return ["@".join(resolve(store, ref)) for ref in names]


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def load_data(store_url: str | None, refs: list[str], split: str, size: int, limit: int | None = None) -> ArrayData:
    data = load_split(store_for(store_url), refs, split, size, limit=limit)
    get_run_logger().info("%s: %d images at %dx%d from %s", split, len(data), size, size, ", ".join(refs))
    return data


@task(cache_policy=NO_CACHE)
def fit(
    config: ModelConfig,
    train_data: ArrayData,
    val_data: ArrayData,
    train_settings: dict[str, Any],
    initial_keras: Path | None,
    out_dir: Path,
) -> TrainedModel:
    import keras

    from model.train import TrainConfig, train

    logger = get_run_logger()
    initial = keras.saving.load_model(initial_keras, compile=False) if initial_keras else None
    if initial is not None:
        logger.info("warm start from %s", initial_keras)
    result = train(config, train_data, val_data, TrainConfig(**train_settings), initial_model=initial, log=logger.info)
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
    )


@flow(name="train-model", log_prints=True)
def train_model(
    refs: list[str],
    architecture: str = "tiny",
    image_size: int | None = None,
    train_settings: dict[str, Any] | None = None,
    max_train_images: int | None = None,
    min_dataset_share: float = 0.1,
    warm_start_keras: str | None = None,
    out_dir: str | None = None,
    store_url: str | None = None,
) -> TrainedModel:
    """Train one model on the train split of ``refs``; write it to ``out_dir/model.keras``.

    Datasets smaller than ``min_dataset_share`` of the training set (feedback, typically)
    are oversampled up to that share.
    """
    config = get_config(architecture, **({"image_size": image_size} if image_size else {}))
    size = config.image_size
    train_data = oversample_small_datasets(
        load_data(store_url, refs, "train", size, max_train_images), min_dataset_share
    )
    val_data = load_data(store_url, refs, "val", size)
    folder = Path(out_dir) if out_dir else get_settings().runs_dir / new_version_id()
    return fit(
        config, train_data, val_data, train_settings or {}, Path(warm_start_keras) if warm_start_keras else None, folder
    )


def _evaluate(model: OnnxModel, test: ArrayData) -> dict[str, Any]:
    scores, _ = model.predict(test.x)
    metrics: dict[str, Any] = binary_metrics(test.y, scores)
    names = np.asarray(test.dataset)
    metrics["by_dataset"] = {
        name: binary_metrics(test.y[names == name], scores[names == name]) for name in sorted(set(test.dataset))
    }
    return metrics


@task(cache_policy=NO_CACHE)
def export_and_check(
    trained: TrainedModel, val_data: ArrayData, out_dir: Path
) -> tuple[Path, float, dict[str, np.ndarray]]:
    """ONNX export, Keras-vs-ONNX parity on validation images, canaries for serving."""
    import keras

    from model.export import check_parity, export_onnx, make_canaries

    model = keras.saving.load_model(trained.keras_path, compile=False)
    path = export_onnx(model, out_dir / ONNX_FILE)
    onnx_model = OnnxModel(path)
    sample = val_data.x[: min(len(val_data), 64)]
    diff = check_parity(model, onnx_model, sample)
    get_run_logger().info("exported %s: Keras vs ONNX max |diff| = %.2e on %d images", path.name, diff, len(sample))
    return path, diff, make_canaries(onnx_model, val_data.x[:8])


@task(cache_policy=NO_CACHE)
def evaluate(onnx_path: Path, test: ArrayData) -> dict[str, Any]:
    return _evaluate(OnnxModel(onnx_path), test)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def fetch_champion(store_url: str | None, alias: str, out_dir: Path) -> dict[str, Any] | None:
    """The current champion's metadata and local copies of its files, if there is one."""
    registry = Registry(store_for(store_url))
    record, _ = registry.alias(alias)
    if record is None:
        return None
    meta = registry.metadata(record.version)
    folder = out_dir / "champion"
    registry.download(record.version, ONNX_FILE, folder / ONNX_FILE)
    registry.download(record.version, KERAS_FILE, folder / KERAS_FILE)
    return {"version": record.version, "metadata": meta, "onnx": folder / ONNX_FILE, "keras": folder / KERAS_FILE}


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def register(
    store_url: str | None,
    trained: TrainedModel,
    onnx_path: Path,
    canaries: dict[str, np.ndarray],
    metadata: dict[str, Any],
) -> str:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, inputs=canaries["inputs"], expected=canaries["expected"])
    files: dict[str, Path | bytes] = {
        ONNX_FILE: onnx_path,
        KERAS_FILE: trained.keras_path,
        CANARIES_FILE: buffer.getvalue(),
    }
    return Registry(store_for(store_url)).register(files, metadata)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def record_verdict(store_url: str | None, version: str, verdict: Verdict) -> None:
    Registry(store_for(store_url)).record_event(
        "blessed" if verdict.blessed else "rejected", version, reasons=verdict.reasons
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
) -> str:
    rows = ["| metric | challenger | champion |", "|---|---|---|"]
    for key in ("accuracy", "f1", "precision", "recall_ai", "recall_real", "mean_prediction"):
        theirs = f"{champion[key]:.4f}" if champion else "-"
        rows.append(f"| {key} | {challenger[key]:.4f} | {theirs} |")
    for name, metrics in challenger["by_dataset"].items():
        other = champion["by_dataset"].get(name) if champion else None
        theirs = f"{other['accuracy']:.4f}" if other else "-"
        rows.append(f"| accuracy on {name} | {metrics['accuracy']:.4f} | {theirs} |")
    status = "**blessed**" if verdict.blessed else "**rejected**: " + "; ".join(verdict.reasons)
    return f"# Retrain: {version}\n\nChampion: `{champion_version or 'none'}`. Verdict: {status}\n\n" + "\n".join(rows)


@flow(name="retrain", log_prints=True)
def retrain(
    datasets: list[str] | None = None,
    architecture: str = "tiny",
    image_size: int | None = None,
    epochs: int = 3,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    alpha: float = 0.1,
    beta: float | None = None,
    max_train_images: int | None = None,
    min_dataset_share: float = 0.1,
    warm_start: bool = True,
    max_accuracy_drop: float = 0.02,
    min_accuracy: float = 0.6,
    alias: str = "production",
    auto_promote: bool = True,
    store_url: str | None = None,
) -> dict[str, Any]:
    """Train a challenger on base data + feedback, judge it on the same test data as the
    champion, register it with its verdict and, if blessed, move the alias."""
    logger = get_run_logger()
    run_dir = get_settings().runs_dir / new_version_id()
    refs = resolve_datasets(store_url, datasets)
    champion = fetch_champion(store_url, alias, run_dir)
    config = get_config(architecture, **({"image_size": image_size} if image_size else {}))
    warm = None
    if warm_start and champion and champion["metadata"].get("config", {}).get("name") == config.name:
        warm = str(champion["keras"])
    train_settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "alpha": alpha,
        "beta": beta,
    }
    trained = train_model(
        refs,
        architecture,
        image_size,
        train_settings,
        max_train_images,
        min_dataset_share,
        warm,
        str(run_dir / "challenger"),
        store_url,
    )
    val_data = load_data(store_url, refs, "val", config.image_size)
    onnx_path, parity, canaries = export_and_check(trained, val_data, run_dir / "challenger")
    test = load_data(store_url, refs, "test", config.image_size)
    challenger_metrics = evaluate(onnx_path, test)
    champion_metrics = None
    if champion:
        champion_size = OnnxModel(champion["onnx"]).image_size
        champion_test = (
            test if champion_size == config.image_size else load_data(store_url, refs, "test", champion_size)
        )
        champion_metrics = evaluate(champion["onnx"], champion_test)
    gate = GateConfig(max_accuracy_drop=max_accuracy_drop, min_accuracy=min_accuracy)
    verdict = judge(challenger_metrics, champion_metrics, parity, gate)
    logger.info(
        "challenger accuracy %.4f vs champion %s: %s",
        challenger_metrics["accuracy"],
        f"{champion_metrics['accuracy']:.4f}" if champion_metrics else "none",
        "blessed" if verdict.blessed else "rejected: " + "; ".join(verdict.reasons),
    )
    metadata = {
        "config": config.to_dict(),
        "input_size": config.image_size,
        "class_names": ["real", "ai"],
        "threshold": 0.5,
        "datasets": refs,
        "parent_version": champion["version"] if champion else None,
        "warm_started_from": champion["version"] if warm and champion else None,
        "train": {**train_settings, "beta": trained.beta, "images": trained.train_images, "seconds": trained.seconds},
        "history": trained.history,
        "best_epoch": trained.best_epoch,
        "metrics": {"val": trained.val_metrics, "test": challenger_metrics},
        "champion_metrics": champion_metrics,
        "parity_max_abs_diff": parity,
        "gate": {"config": gate.to_dict(), **verdict.to_dict()},
        "code_version": code_version(),
    }
    version = register(store_url, trained, onnx_path, canaries, metadata)
    record_verdict(store_url, version, verdict)
    promoted = bool(verdict.blessed and auto_promote)
    if promoted:
        promote(store_url, version, alias, f"retrain: accuracy {challenger_metrics['accuracy']:.4f}")
        logger.info("promoted %s to %s", version, alias)
    (run_dir / "summary.json").write_text(json.dumps({"version": version, **metadata}, indent=2, default=str))
    create_markdown_artifact(
        key="retrain",
        markdown=_report(
            version, challenger_metrics, champion_metrics, champion["version"] if champion else None, verdict
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
