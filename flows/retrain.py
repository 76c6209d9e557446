"""``retrain`` and ``train-model``: train a challenger, judge it against the champion, promote.

The order keeps the registry consistent whatever fails: nothing is written until the
challenger is trained, exported, parity-checked, calibrated and judged; the version is
registered (with its verdict) before the alias moves; the alias moves by conditional put.
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
from model.calibration import apply_temperature, fit_temperature, fit_uncertain_band
from model.config import ModelConfig, get_config
from model.data import ArrayData, ImageSet, list_datasets, load_images, oversample_small_datasets, resolve
from model.evaluation import evaluate_scores
from model.gate import GateConfig, Verdict, judge
from model.inference import OnnxModel
from model.metrics import binary_metrics
from model.registry import CANARIES_FILE, KERAS_FILE, ONNX_FILE, Registry
from model.robustness import TIERS, tier_pixels
from storage.layout import new_version_id

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


@task(cache_policy=NO_CACHE)
def fit(
    config: ModelConfig,
    train_data: ImageSet,
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
    result = train(
        config,
        train_data,
        val_data,
        TrainConfig(**train_settings),
        initial_model=initial,
        checkpoint_dir=out_dir / "checkpoints",
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
    are oversampled up to that share. A run re-started with the same ``out_dir`` resumes
    from its last checkpoint.
    """
    config = get_config(architecture, **({"image_size": image_size} if image_size else {}))
    train_data = oversample_small_datasets(load_data(store_url, refs, "train", max_train_images), min_dataset_share)
    val_data = load_data(store_url, refs, "val").decode(config.image_size)
    folder = Path(out_dir) if out_dir else get_settings().runs_dir / new_version_id()
    initial = Path(warm_start_keras) if warm_start_keras else None
    return fit(config, train_data, val_data, train_settings or {}, initial, folder)


@task(cache_policy=NO_CACHE)
def export_and_check(trained: TrainedModel, val_data: ArrayData, out_dir: Path) -> Exported:
    """ONNX export, graph optimisation, Keras-vs-ONNX parity, canaries, the INT8 variant."""
    import keras

    from model.export import PARITY_TOLERANCE, check_parity, export_onnx, make_canaries, optimize_onnx, quantize_int8
    from model.inference import check_canaries

    logger = get_run_logger()
    model = keras.saving.load_model(trained.keras_path, compile=False)
    raw = export_onnx(model, out_dir / "exported.onnx")
    path = optimize_onnx(raw, out_dir / ONNX_FILE)
    onnx_model = OnnxModel(path)
    sample = val_data.x[: min(len(val_data), 64)]
    canaries = make_canaries(model, val_data.x[:8])
    diff = max(check_parity(model, onnx_model, sample), check_canaries(onnx_model, canaries, PARITY_TOLERANCE))
    logger.info("exported %s: Keras vs ONNX max |diff| = %.2e on %d images + canaries", path.name, diff, len(sample))
    int8 = quantize_int8(path, out_dir / INT8_FILE, val_data.x[:256])
    # INT8 scores move by up to a few hundredths: serving checks that file against its own outputs
    canaries["expected_int8"], _ = OnnxModel(int8).predict(canaries["inputs"])
    return Exported(path, int8, diff, canaries)


@task(cache_policy=NO_CACHE)
def calibrate(
    onnx_path: Path, val_data: ArrayData, target_accuracy: float, max_uncertain_share: float
) -> dict[str, Any]:
    """Temperature scaling and the ``uncertain`` band, both fitted on validation."""
    scores, _ = OnnxModel(onnx_path).predict(val_data.x)
    temperature = fit_temperature(val_data.y, scores)
    calibrated = apply_temperature(scores, temperature)
    band = fit_uncertain_band(val_data.y, calibrated, target_accuracy, max_uncertain_share)
    return {"temperature": float(temperature), "uncertain_band": [float(band[0]), float(band[1])]}


@task(cache_policy=NO_CACHE)
def evaluate(
    onnx_path: Path, test: ImageSet, temperature: float, beta: float | None
) -> tuple[dict[str, Any], np.ndarray]:
    """Every metric on the test split (calibrated scores), per dataset and generator, per robustness tier."""
    model = OnnxModel(onnx_path)
    tiers: dict[str, np.ndarray] = {}
    for tier in TIERS:
        scores, _ = model.predict(tier_pixels(test.images, model.image_size, tier))
        tiers[tier] = apply_temperature(scores, temperature)
    metrics = evaluate_scores(
        test.y, tiers["clean"], beta=beta, groups={"dataset": test.dataset, "generator": test.generator}
    )
    metrics["by_dataset"] = metrics["slices"]["dataset"]
    metrics["robustness"] = {tier: binary_metrics(test.y, p) for tier, p in tiers.items()}
    return metrics, tiers["clean"]


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


@task(cache_policy=NO_CACHE)
def make_plots(
    trained: TrainedModel,
    test: ImageSet,
    scores: np.ndarray,
    metrics: dict[str, Any],
    champion_scores: np.ndarray | None,
    out_dir: Path,
) -> dict[str, Path]:
    from model.plots import plot_confusion_matrix, plot_reliability, plot_roc, plot_training_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    others = {"champion": (test.y, champion_scores)} if champion_scores is not None else None
    return {
        "training_curves.png": plot_training_curves(trained.history, out_dir / "training_curves.png"),
        "confusion_matrix.png": plot_confusion_matrix(metrics["confusion"], out_dir / "confusion_matrix.png"),
        "roc.png": plot_roc(test.y, scores, out_dir / "roc.png", label="challenger", others=others),
        "reliability.png": plot_reliability(test.y, scores, out_dir / "reliability.png"),
    }


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def register(store_url: str | None, files: dict[str, Path | bytes], metadata: dict[str, Any]) -> str:
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
    plots: dict[str, Path],
) -> str:
    rows = ["| metric | challenger | champion |", "|---|---|---|"]

    def row(label: str, ours: float, theirs: float | None) -> None:
        rows.append(f"| {label} | {ours:.4f} | {'-' if theirs is None else f'{theirs:.4f}'} |")

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
    for name, metrics in challenger["by_dataset"].items():
        other = champion["by_dataset"].get(name) if champion else None
        row(f"accuracy on {name}", metrics["accuracy"], other["accuracy"] if other else None)
    for tier, metrics in challenger["robustness"].items():
        other = champion["robustness"].get(tier) if champion else None
        row(f"accuracy, {tier}", metrics["accuracy"], other["accuracy"] if other else None)
    status = "**blessed**" if verdict.blessed else "**rejected**: " + "; ".join(verdict.reasons)
    pictures = "\n".join(f"- `{path}`" for path in plots.values())
    return (
        f"# Retrain: {version}\n\nChampion: `{champion_version or 'none'}`. Verdict: {status}\n\n"
        + "\n".join(rows)
        + f"\n\nPlots (also stored under `models/{version}/plots/`):\n{pictures}\n"
    )


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
    augment: bool = True,
    patience: int = 3,
    max_train_images: int | None = None,
    min_dataset_share: float = 0.1,
    warm_start: bool = True,
    warm_start_lr_scale: float = 0.3,
    max_accuracy_drop: float = 0.02,
    min_accuracy: float = 0.6,
    uncertain_target_accuracy: float = 0.95,
    max_uncertain_share: float = 0.1,
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
    if warm_start and champion and ModelConfig.from_dict(champion["metadata"]["config"]) == config:
        warm = str(champion["keras"])
    train_settings: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        # Fine-tuning the champion at the from-scratch rate would undo much of what it knows.
        "learning_rate": learning_rate * (warm_start_lr_scale if warm else 1.0),
        "alpha": alpha,
        "beta": beta,
        "augment": {} if augment else None,
        "patience": patience,
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
    val_data = load_data(store_url, refs, "val").decode(config.image_size)
    exported = export_and_check(trained, val_data, run_dir / "challenger")
    calibration = calibrate(exported.onnx, val_data, uncertain_target_accuracy, max_uncertain_share)
    test = load_data(store_url, refs, "test")
    challenger_metrics, scores = evaluate(exported.onnx, test, calibration["temperature"], trained.beta)
    int8_metrics, _ = evaluate(exported.int8, test, calibration["temperature"], trained.beta)
    champion_metrics = champion_scores = None
    if champion:
        champion_meta = champion["metadata"]
        champion_metrics, champion_scores = evaluate(
            champion["onnx"],
            test,
            float(champion_meta.get("temperature", 1.0)),
            champion_meta.get("train", {}).get("beta"),
        )
    gate = GateConfig(max_accuracy_drop=max_accuracy_drop, min_accuracy=min_accuracy)
    verdict = judge(challenger_metrics, champion_metrics, exported.parity, gate)
    logger.info(
        "challenger accuracy %.4f vs champion %s: %s",
        challenger_metrics["accuracy"],
        f"{champion_metrics['accuracy']:.4f}" if champion_metrics else "none",
        "blessed" if verdict.blessed else "rejected: " + "; ".join(verdict.reasons),
    )
    plots = make_plots(trained, test, scores, challenger_metrics, champion_scores, run_dir / "plots")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **exported.canaries)  # type: ignore[arg-type]
    files: dict[str, Path | bytes] = {
        ONNX_FILE: exported.onnx,
        INT8_FILE: exported.int8,
        KERAS_FILE: trained.keras_path,
        CANARIES_FILE: buffer.getvalue(),
        **{f"plots/{name}": path for name, path in plots.items()},
    }
    metadata = {
        "config": config.to_dict(),
        "input_size": config.image_size,
        "class_names": ["real", "ai"],
        "threshold": 0.5,
        **calibration,
        "datasets": refs,
        "parent_version": champion["version"] if champion else None,
        "warm_started_from": champion["version"] if warm and champion else None,
        "train": {
            **train_settings,
            "beta": trained.beta,
            "images": trained.train_images,
            "seconds": trained.seconds,
            "stopped_early": trained.stopped_early,
        },
        "history": trained.history,
        "best_epoch": trained.best_epoch,
        "metrics": {"val": trained.val_metrics, "test": challenger_metrics},
        "champion_metrics": champion_metrics,
        "int8": {
            "file": INT8_FILE,
            "test_accuracy": int8_metrics["accuracy"],
            "accuracy_change": int8_metrics["accuracy"] - challenger_metrics["accuracy"],
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
            version, challenger_metrics, champion_metrics, champion["version"] if champion else None, verdict, plots
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
