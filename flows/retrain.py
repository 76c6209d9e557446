"""``retrain``: train a challenger, judge it against the champion, register it, promote it if blessed.

The order keeps the registry consistent whatever fails: nothing is written until the
challenger is trained, exported, parity-checked, calibrated and judged; the version is
registered (with its verdict) before the alias moves; the alias moves by conditional put.
Only one retrain runs at a time (a lease in the store, renewed from a heartbeat: see
``flows.lease``; and the deployment's concurrency limit in ``prefect.yaml``). A run that has
lost its lease stops before it registers or promotes.

The flow builds a ``RetrainPlan`` from its parameters once, then runs the steps: training
(``flows.train``, possibly as the ``train-model`` deployment on another machine),
validation (``flows.validate``), registration (``flows.register``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run

from aidetect.settings import get_settings
from feedback.plan import FEEDBACK_DATASET
from flows.common import load_data, resolve_datasets, store_for
from flows.lease import Lease, lease
from flows.register import fetch_champion, model_card, model_files, promote, record_verdict, register
from flows.reports import retrain_report
from flows.retrain_plan import Challenger, Champion, RetrainPlan, gate_config, train_settings
from flows.train import MIN_DATASET_SHARE, check_weights, fetch_trained, run_training
from flows.validate import Validation, drift_reference, make_plots, validate_challenger
from model.card import ModelCard
from model.config import DEFAULT_ARCHITECTURE, ModelConfig
from model.gate import Verdict
from model.imagesets import ImageSet
from storage.layout import new_version_id

# The gate's verdict on a challenger, as a Prefect event about aidetect.model.<version>
# (flows/notifications.py tells a person about both).
CHALLENGER_BLESSED = "aidetect.challenger.blessed"
CHALLENGER_REJECTED = "aidetect.challenger.rejected"


@flow(name="retrain", log_prints=True)
def retrain(
    datasets: list[str] | None = None,
    architecture: str = DEFAULT_ARCHITECTURE,
    image_size: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    augment: bool | None = None,
    patience: int | None = None,
    seed: int | None = None,
    weights: str | None = None,
    max_train_images: int | None = None,
    min_dataset_share: float = MIN_DATASET_SHARE,
    warm_start: bool = True,
    warm_start_lr_scale: float = 0.3,
    max_accuracy_drop: float | None = None,
    min_accuracy: float | None = None,
    gate: dict[str, float] | None = None,
    feedback_dataset: str = FEEDBACK_DATASET,
    test_datasets: list[str] | None = None,
    uncertain_target_accuracy: float = 0.95,
    max_uncertain_share: float = 0.1,
    reference_images: int = 2000,
    alias: str | None = None,
    auto_promote: bool = True,
    train_deployment: str | None = None,
    fallback_deployment: str | None = None,
    train_timeout_hours: float = 24.0,
    reason: str = "manual",
    store_url: str | None = None,
) -> dict[str, Any]:
    """Train a challenger on base data + feedback, judge it on the same test data as the
    champion, register it with its verdict and, if blessed, move the alias.

    ``epochs`` to ``seed``: ``model.train.TrainConfig``'s fields, its defaults where None
    (``augment``: on or off). ``weights`` is where a model trained from scratch starts: None
    (the architecture's default: ImageNet for the EfficientNet-Lite presets, random init
    otherwise), ``none``, ``imagenet``, or a ``.weights.h5`` / ``.keras`` file of the
    architecture, as a key in the store or a local path; given explicitly, it replaces the warm
    start from the champion. ``seed`` fixes the shuffling, augmentation and initialisation (the
    same seed on the same machine gives the same model; another machine's floating point may
    not). ``gate``: any of ``model.gate.GateConfig``'s thresholds (``max_accuracy_drop`` and
    ``min_accuracy`` are also parameters of their own); the rest keep GateConfig's defaults.
    ``alias``: the champion's alias, moved when the challenger is blessed (default: the
    settings' ``model_alias``). ``train_deployment``: run ``train-model`` as that deployment
    (e.g. ``train-model/gpu``) and wait for it, or on ``fallback_deployment`` when the first
    one's work pool has no online worker; without it, ``train-model`` runs in this process.
    ``reason`` (what started the run: the schedule, a drift event, feedback) is kept in the
    model's metadata. ``test_datasets`` pins the frozen test split (e.g. ``["cifake@<version>"]``);
    by default it is the test split of the training datasets other than ``feedback_dataset``,
    whose test split is the regression set.
    """
    plan = RetrainPlan(
        datasets=datasets,
        architecture=architecture,
        image_size=image_size,
        train_settings=train_settings(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            alpha=alpha,
            beta=beta,
            augment=augment,
            patience=patience,
            seed=seed,
            weights=weights,
        ),
        max_train_images=max_train_images,
        min_dataset_share=min_dataset_share,
        warm_start=warm_start,
        warm_start_lr_scale=warm_start_lr_scale,
        gate=gate_config(gate, max_accuracy_drop=max_accuracy_drop, min_accuracy=min_accuracy),
        feedback_dataset=feedback_dataset,
        test_datasets=test_datasets,
        uncertain_target_accuracy=uncertain_target_accuracy,
        max_uncertain_share=max_uncertain_share,
        reference_images=reference_images,
        alias=alias or get_settings().model_alias,
        auto_promote=auto_promote,
        train_deployment=train_deployment,
        fallback_deployment=fallback_deployment,
        train_timeout_hours=train_timeout_hours,
        reason=reason,
        store_url=store_url,
    )
    run_id = new_version_id()
    with lease(
        store_for(plan.store_url),
        "retrain",
        holder=f"retrain {run_id}",
        ttl_seconds=get_settings().lease_ttl_seconds,
        flow_run_id=flow_run.get_id(),
    ) as held:
        return _retrain(plan, run_id, held)


def _retrain(plan: RetrainPlan, run_id: str, held: Lease) -> dict[str, Any]:
    run_dir = get_settings().runs_dir / run_id
    refs = resolve_datasets(plan.store_url, plan.datasets)
    champion = fetch_champion(plan.store_url, plan.alias, run_dir)
    challenger = _train_challenger(plan, run_id, refs, champion, run_dir)
    held.check()  # training takes hours: a run that lost its lease meanwhile stops here
    val_set = load_data(plan.store_url, refs, "val")
    validation = validate_challenger(plan, challenger, champion, val_set, run_dir / "challenger")
    files, plots = _package(plan, challenger, validation, val_set, run_dir)
    card = model_card(plan, run_id, challenger, validation, champion, files)
    version, promoted = _register_and_promote(plan, files, card, validation, held)
    summary = {**card.model_dump(mode="json"), "version": version}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    champion_version = champion.version if champion else None
    create_markdown_artifact(
        key="retrain",
        markdown=retrain_report(
            version,
            validation.metrics,
            validation.champion_metrics,
            champion_version,
            validation.verdict,
            validation.latency_ms,
            plots,
            get_settings().public_url,
        ),
        description=f"retrain {version}",
    )
    return {
        "version": version,
        "promoted": promoted,
        "verdict": validation.verdict.to_dict(),
        "metrics": validation.metrics,
        "champion": champion_version,
        "champion_metrics": validation.champion_metrics,
        "run_dir": str(run_dir),
    }


def _warm_start_version(plan: RetrainPlan, champion: Champion | None, config: ModelConfig) -> str | None:
    """The champion's version when the challenger fine-tunes it: asked for, no ``weights``
    given, and the champion has the challenger's architecture."""
    if not plan.warm_start or plan.train_settings["weights"] is not None or not champion:
        return None
    champion_config = champion.card.config  # an outside model (aidetect model register) has none
    return champion.version if champion_config and ModelConfig.from_dict(champion_config) == config else None


def _train_challenger(
    plan: RetrainPlan, run_id: str, refs: list[str], champion: Champion | None, run_dir: Path
) -> Challenger:
    """Train on ``refs`` (``train-model``, here or as a deployment) and fetch the result."""
    config = plan.model_config()
    check_weights(plan.store_url, plan.train_settings["weights"])
    warm = _warm_start_version(plan, champion, config)
    # Fine-tuning the champion at the from-scratch rate would undo much of what it knows.
    scale = plan.warm_start_lr_scale if warm else 1.0
    settings = {**plan.train_settings, "learning_rate": plan.train_settings["learning_rate"] * scale}
    run_training(
        {
            "refs": refs,
            "run_id": run_id,
            "architecture": plan.architecture,
            "image_size": plan.image_size,
            "train_settings": settings,
            "max_train_images": plan.max_train_images,
            "min_dataset_share": plan.min_dataset_share,
            "warm_start_version": warm,
            "store_url": plan.store_url,
        },
        plan.train_deployment,
        plan.fallback_deployment,
        plan.train_timeout_hours * 3600,
    )
    trained = fetch_trained(plan.store_url, run_id, run_dir / "challenger")
    return Challenger(refs, config, trained, warm, settings)


def _package(
    plan: RetrainPlan, challenger: Challenger, validation: Validation, val_set: ImageSet, run_dir: Path
) -> tuple[dict[str, Path | bytes], dict[str, Path]]:
    """The new version's files (with the drift reference and the plots), and the plots."""
    reference_set = val_set.subset(np.random.default_rng(0).permutation(len(val_set))[: plan.reference_images])
    reference = drift_reference(validation.exported.onnx, reference_set.images, validation.calibration)
    plots = make_plots(
        challenger.trained,
        validation.frozen,
        validation.scores,
        validation.metrics,
        validation.champion_scores,
        run_dir / "plots",
    )
    return model_files(validation.exported, challenger.trained.keras_path, reference, plots), plots


def _register_and_promote(
    plan: RetrainPlan, files: dict[str, Path | bytes], card: ModelCard, validation: Validation, held: Lease
) -> tuple[str, bool]:
    """Register the version with its verdict, then move the alias if it is blessed and may be;
    each step only while this run still holds the lease (else LeaseLost)."""
    held.check()
    version = register(plan.store_url, files, card)
    record_verdict(plan.store_url, version, validation.verdict)
    promoted = bool(validation.verdict.blessed and plan.auto_promote)
    if promoted:
        held.check()
        promote(plan.store_url, version, plan.alias, f"retrain: accuracy {validation.metrics['accuracy']:.4f}")
        get_run_logger().info("promoted %s to %s", version, plan.alias)
    announce_verdict(
        version, plan.alias, card, validation.verdict, validation.metrics, validation.champion_metrics, promoted
    )
    return version, promoted


def _scalars(metrics: dict[str, Any] | None) -> dict[str, float] | None:
    """The top-level numbers of a metrics dict (no confusion counts, slices or regression sets)."""
    if metrics is None:
        return None
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
    return {k: float(v) for k, v in numbers.items()}


def announce_verdict(
    version: str,
    alias: str,
    card: ModelCard,
    verdict: Verdict,
    metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    promoted: bool,
) -> None:
    """``aidetect.challenger.blessed`` or ``.rejected`` about the new version, with what a person needs
    (``flows.notifications`` turns it into a message)."""
    emit_event(
        event=CHALLENGER_BLESSED if verdict.blessed else CHALLENGER_REJECTED,
        resource={"prefect.resource.id": f"aidetect.model.{version}", "aidetect.alias": alias},
        payload={
            "version": version,
            "alias": alias,
            "champion": card.parent_version,
            "trigger": card.trigger,
            "blessed": verdict.blessed,
            "promoted": promoted,
            "reasons": verdict.reasons,
            "notes": verdict.notes,
            "metrics": _scalars(metrics),
            "champion_metrics": _scalars(champion_metrics),
        },
    )
