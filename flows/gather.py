"""``gather-feedback``: accepted, misclassified feedback -> a new version of the feedback dataset.

The flow loads, asks ``feedback.plan.plan_next_version`` what the next version is, and
writes it; what is believed and what enters is decided there and in ``feedback.policy``.
"""

from __future__ import annotations

from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from aidetect.settings import get_settings
from feedback.plan import FEEDBACK_DATASET, NextVersion, plan_next_version
from feedback.policy import Review, configured_policy
from feedback.records import FeedbackRecord
from feedback.reviews import load_reviews
from feedback.store import iter_feedback
from flows.common import io_task, store_for
from flows.reports import feedback_report
from model.datasets import list_datasets, read_manifest, write_dataset_version
from model.registry import Registry

READY_EVENT = "aidetect.feedback.ready"


@io_task
def load_feedback(store_url: str | None) -> list[FeedbackRecord]:
    """Every feedback report in the store."""
    return list(iter_feedback(store_for(store_url)))


@io_task
def load_all_reviews(store_url: str | None) -> dict[str, Review]:
    """The latest reviewer decision on each report."""
    return load_reviews(store_for(store_url))


@io_task
def latest_version(store_url: str | None, dataset: str) -> str | None:
    """The newest version of ``dataset``, if it has one."""
    versions = list_datasets(store_for(store_url)).get(dataset, [])
    return versions[-1] if versions else None


@io_task
def previous_rows(store_url: str | None, dataset: str, version: str) -> list[dict[str, Any]]:
    """The manifest rows of ``dataset@version``."""
    return cast(list[dict[str, Any]], read_manifest(store_for(store_url), dataset, version).to_pylist())


@io_task
def trained_on(store_url: str | None, alias: str, dataset: str) -> set[str]:
    """The feedback images the live model was trained on (its ``dataset@version``'s train split)."""
    store = store_for(store_url)
    registry = Registry(store)
    record, _ = registry.alias(alias)
    if record is None:
        return set()
    for ref in registry.metadata(record.version).datasets:
        name, _, version = ref.partition("@")
        if name == dataset and version:
            rows = read_manifest(store, name, version).to_pylist()
            return {r["sha256"] for r in rows if r["split"] == "train"}
    return set()


@io_task
def write_version(store_url: str | None, dataset: str, plan: NextVersion) -> str:
    """Write the planned version of ``dataset``; returns its version id."""
    return write_dataset_version(
        store_for(store_url),
        dataset,
        plan.rows,
        parents=plan.parents,
        progress=get_run_logger().info,
        extra=plan.version_info(),
    )


@flow(name="gather-feedback", log_prints=True)
def gather_feedback(
    dataset: str = FEEDBACK_DATASET,
    store_url: str | None = None,
    min_agreeing_clients: int | None = None,
    max_per_client: int | None = None,
    holdout_share: float = 0.2,
    retrain_after: int = 50,
    alias: str | None = None,
    misclassified_only: bool = True,
) -> str | None:
    """Add the accepted, misclassified feedback images not taken yet to a new dataset version.

    ``misclassified_only=False`` also takes accepted claims that agree with the model (a
    labelled sample of a new generator's images, say): an expert for a new source needs
    examples of both labels, and the model's right answers of that source are rarely reported.

    Accepted means a reviewer accepted the claim, or ``min_agreeing_clients`` independent
    clients made it and none contradicted it; each client contributes at most
    ``max_per_client`` images (see ``feedback.policy``; both default to the settings).

    Incremental (see ``feedback.plan``): ``holdout_share`` of new images go to the ``test``
    split, the regression set on which the gate requires a challenger to beat the champion.
    Idempotent: when nothing changed, no version is written and the latest is returned. When
    ``retrain_after`` or more taken training images are not yet in the training data of the
    model ``alias`` points at (default: the settings' ``model_alias``), emits
    ``aidetect.feedback.ready`` (``prefect.yaml`` starts ``retrain`` on it), once per
    ``retrain_after`` such images.
    """
    logger = get_run_logger()
    alias = alias or get_settings().model_alias
    policy = configured_policy(min_agreeing_clients=min_agreeing_clients, max_per_client=max_per_client)
    records = load_feedback(store_url)
    reviews = load_all_reviews(store_url)
    parent = latest_version(store_url, dataset)
    plan = plan_next_version(
        f"{dataset}@{parent}" if parent else None,
        previous_rows(store_url, dataset, parent) if parent else [],
        records,
        reviews,
        policy,
        trained_on=trained_on(store_url, alias, dataset),
        holdout_share=holdout_share,
        retrain_after=retrain_after,
        misclassified_only=misclassified_only,
    )
    logger.info(
        "%d feedback records (%d reviewed), %d images accepted and misclassified",
        len(records),
        len(reviews),
        plan.accepted,
    )
    if not isinstance(plan, NextVersion):
        logger.info(plan.reason)
        return parent
    version = write_version(store_url, dataset, plan)
    create_markdown_artifact(
        key="gather-feedback",
        markdown=feedback_report(
            f"{dataset}@{version}",
            parent,
            plan.rows,
            reports=len(records),
            added=len(plan.added),
            withdrawn=plan.withdrawn,
            regression_set=plan.regression_set,
            alias=alias,
            pending=plan.pending,
            retrain_after=retrain_after,
        ),
        description="feedback dataset version",
    )
    logger.info(
        "wrote %s@%s: %d images, %d added, %d withdrawn",
        dataset,
        version,
        len(plan.rows),
        len(plan.added),
        plan.withdrawn,
    )
    if plan.ask_for_retrain:
        emit_event(
            event=READY_EVENT,
            resource={"prefect.resource.id": f"aidetect.dataset.{dataset}", "aidetect.version": version},
            payload={"version": version, "pending": plan.pending, "retrain_after": retrain_after},
        )
        logger.info("%d new training images: asked for a retrain (%s)", plan.pending, READY_EVENT)
    return version
