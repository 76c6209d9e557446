"""What ``retrain`` reads from and writes to the model registry: the champion, a new version's
files and metadata, its verdict, and the alias."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from aidetect.version import code_version
from flows.common import io_task, store_for
from flows.retrain_plan import Challenger, Champion, RetrainPlan
from flows.validate import Exported, Validation
from model.card import INT8_FILE, GateRecord, Int8Variant, Metrics, ModelCard
from model.config import default_weights
from model.gate import Verdict
from model.registry import CANARIES_FILE, KERAS_FILE, ONNX_FILE, Registry
from storage.layout import model_plot_file


@io_task
def fetch_champion(store_url: str | None, alias: str, out_dir: Path) -> Champion | None:
    """The current champion's card and a local copy of its ONNX file, if there is one."""
    registry = Registry(store_for(store_url))
    record, _ = registry.alias(alias)
    if record is None:
        return None
    card = registry.metadata(record.version)
    folder = out_dir / "champion"
    registry.download(record.version, ONNX_FILE, folder / ONNX_FILE)
    return Champion(record.version, card, folder / ONNX_FILE)


@io_task
def register(store_url: str | None, files: dict[str, Path | bytes], card: ModelCard) -> str:
    """A new registry version with these files and its card; returns its id."""
    return Registry(store_for(store_url)).register(files, card)


@io_task
def record_verdict(store_url: str | None, version: str, verdict: Verdict) -> None:
    """The gate's verdict as a registry event (``blessed`` or ``rejected``)."""
    Registry(store_for(store_url)).record_event(
        "blessed" if verdict.blessed else "rejected", version, reasons=verdict.reasons, notes=verdict.notes
    )


@io_task
def promote(store_url: str | None, version: str, alias: str, reason: str) -> None:
    """Move ``alias`` to ``version`` (a conditional put: a concurrent move fails, not lost)."""
    Registry(store_for(store_url)).promote(version, alias, reason=reason)


def model_files(
    exported: Exported, keras_path: Path, reference: dict[str, bytes], plots: dict[str, Path]
) -> dict[str, Path | bytes]:
    """The files of a new version: both ONNX variants, the Keras model, canaries, drift reference, plots."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **exported.canaries)  # type: ignore[arg-type]
    return {
        ONNX_FILE: exported.onnx,
        INT8_FILE: exported.int8,
        KERAS_FILE: keras_path,
        CANARIES_FILE: buffer.getvalue(),
        **reference,
        **{model_plot_file(name): path for name, path in plots.items()},
    }


def model_card(
    plan: RetrainPlan,
    run_id: str,
    challenger: Challenger,
    validation: Validation,
    champion: Champion | None,
    files: dict[str, Path | bytes],
) -> ModelCard:
    """The card registered with a retrained version: its input contract and calibration,
    where it came from, how it was trained, what it measured and the gate's verdict."""
    config, trained, warm = challenger.config, challenger.trained, challenger.warm_started_from
    metrics, int8 = validation.metrics, validation.int8_metrics
    band = validation.calibration["uncertain_band"]
    return ModelCard(
        config=config.to_dict(),
        input_size=config.image_size,
        input_fit=config.input_fit,
        temperature=validation.calibration["temperature"],
        uncertain_band=(band[0], band[1]),
        datasets=challenger.refs,
        test_datasets=validation.test_refs
        or [r for r in challenger.refs if r.partition("@")[0] != plan.feedback_dataset],
        parent_version=champion.version if champion else None,
        warm_started_from=warm,
        # where training started: the champion (warm start), or the weights setting as resolved
        initial_weights=f"warm start from {warm}"
        if warm
        else str(challenger.train_settings.get("weights") or default_weights(config) or "none"),
        training_run=run_id,
        trigger=plan.reason,
        train={
            **challenger.train_settings,
            "beta": trained.beta,
            "images": trained.train_images,
            "seconds": trained.seconds,
            "stopped_early": trained.stopped_early,
        },
        history=trained.history,
        best_epoch=trained.best_epoch,
        metrics=Metrics(val=trained.val_metrics, test=metrics, latency_ms=validation.latency_ms),
        champion_metrics=validation.champion_metrics,
        int8=Int8Variant(
            file=INT8_FILE,
            test_accuracy=int8["accuracy"],
            accuracy_change=int8["accuracy"] - metrics["accuracy"],
            # the held-out feedback too: the frozen split alone hid INT8 losing a new generator
            regression_accuracy_change=int8["regression"]["accuracy"] - metrics["regression"]["accuracy"]
            if int8["regression"] and metrics["regression"]
            else None,
        ),
        file_sizes={name: path.stat().st_size for name, path in files.items() if isinstance(path, Path)},
        parity_max_abs_diff=validation.exported.parity,
        gate=GateRecord(config=plan.gate.to_dict(), **validation.verdict.to_dict()),
        code_version=code_version(),
    )
