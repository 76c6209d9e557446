"""``retrain``'s step between training and registering: export, calibrate, evaluate, judge.

``validate_challenger`` runs the tasks: the ONNX export and its parity check, the calibration
fitted on validation, the frozen test split and the regression set, the metrics and latency
of the challenger and the champion on the same data, and the gate's verdict. The drift
reference and the plots stored with the model are made here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import load_data, resolve_datasets
from flows.retrain_plan import Challenger, Champion, RetrainPlan
from flows.train import TrainedModel
from model.calibration import Calibration, apply_temperature, fit_temperature, fit_uncertain_band
from model.card import INT8_FILE, ONNX_FILE
from model.evaluation import evaluate_model
from model.gate import Verdict, judge
from model.imagesets import ArrayData, ImageSet
from model.inference import OnnxModel, median_latency_ms
from model.robustness import TIERS


@dataclass
class Exported:
    onnx: Path
    int8: Path
    parity: float
    canaries: dict[str, np.ndarray]


@dataclass(frozen=True)
class Validation:
    """The challenger (and the champion) measured on the same data, and the gate's verdict."""

    exported: Exported
    calibration: dict[str, Any]  # temperature and uncertain band
    test_refs: list[str] | None  # the pinned frozen test datasets, if any
    frozen: ImageSet
    metrics: dict[str, Any]  # the challenger's, on the frozen split (and the regression set)
    scores: np.ndarray
    int8_metrics: dict[str, Any]
    champion_metrics: dict[str, Any] | None
    champion_scores: np.ndarray | None
    latency_ms: float
    verdict: Verdict


def validate_challenger(
    plan: RetrainPlan, challenger: Challenger, champion: Champion | None, val_set: ImageSet, out_dir: Path
) -> Validation:
    """Export and calibrate the challenger, measure it and the champion on the same test data, judge."""
    logger = get_run_logger()
    val_data = val_set.decode(challenger.config.image_size, challenger.config.input_fit)
    exported = export_and_check(challenger.trained, val_data, out_dir)
    calibration = calibrate(exported.onnx, val_data, plan.uncertain_target_accuracy, plan.max_uncertain_share)
    test_refs = resolve_datasets(plan.store_url, plan.test_datasets) if plan.test_datasets else None
    pinned = load_data(plan.store_url, test_refs, "test") if test_refs else None
    frozen, regression = split_test(load_data(plan.store_url, challenger.refs, "test"), plan.feedback_dataset, pinned)
    logger.info(
        "frozen test split: %d images; regression set: %d held-out feedback images", len(frozen), len(regression)
    )
    temperature, beta = calibration["temperature"], challenger.trained.beta
    metrics, scores = evaluate(exported.onnx, frozen, regression, temperature, beta)
    # INT8's clean accuracy is what the metadata reports: the robustness tiers would triple its cost
    int8_metrics, _ = evaluate(exported.int8, frozen, regression, temperature, beta, ())
    latency_ms = measure_latency(exported.onnx, val_data)
    champion_metrics = champion_scores = None
    if champion:
        champion_metrics, champion_scores = evaluate(
            champion.onnx, frozen, regression, champion.card.temperature, champion.card.beta
        )
    verdict = judge(metrics, champion_metrics, exported.parity, plan.gate, latency_ms=latency_ms)
    logger.info(
        "challenger accuracy %.4f vs champion %s: %s",
        metrics["accuracy"],
        f"{champion_metrics['accuracy']:.4f}" if champion_metrics else "none",
        "blessed" if verdict.blessed else "rejected: " + "; ".join(verdict.reasons),
    )
    return Validation(
        exported,
        calibration,
        test_refs,
        frozen,
        metrics,
        scores,
        int8_metrics,
        champion_metrics,
        champion_scores,
        latency_ms,
        verdict,
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
    """Median milliseconds of one image through the ONNX model, on this machine."""
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
    low, high = calibration["uncertain_band"]
    return build_reference_files(onnx_path, images, Calibration(calibration["temperature"], uncertain_band=(low, high)))


@task(cache_policy=NO_CACHE)
def make_plots(
    trained: TrainedModel,
    test: ImageSet,
    scores: np.ndarray,
    metrics: dict[str, Any],
    champion_scores: np.ndarray | None,
    out_dir: Path,
) -> dict[str, Path]:
    """Training curves, and the challenger's (and champion's) ROC, reliability and score plots."""
    from model.plots import evaluation_plots, plot_training_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    others = {"champion": (test.y, champion_scores)} if champion_scores is not None else None
    return {
        "training_curves.png": plot_training_curves(trained.history, out_dir / "training_curves.png"),
        **evaluation_plots(test.y, scores, metrics, out_dir, label="challenger", others=others),
    }
