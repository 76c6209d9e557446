"""``gather-feedback``: accepted, misclassified feedback -> a new version of the feedback dataset."""

from __future__ import annotations

from typing import Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from aidetect.settings import PRODUCTION_ALIAS
from feedback.policy import Policy, decide, select_for_training
from feedback.records import FeedbackRecord
from feedback.reviews import load_reviews
from feedback.store import iter_feedback
from flows.common import store_for
from model.data import list_datasets, read_manifest, split_of, write_dataset_version
from model.registry import Registry


@task(retries=2, retry_delay_seconds=5)
def load_feedback(store_url: str | None) -> list[FeedbackRecord]:
    return list(iter_feedback(store_for(store_url)))


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def previous_rows(store_url: str | None, dataset: str, version: str) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], read_manifest(store_for(store_url), dataset, version).to_pylist())


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def trained_on(store_url: str | None, alias: str, dataset: str) -> set[str]:
    """The feedback images the live model was trained on (its ``dataset@version``'s train split)."""
    store = store_for(store_url)
    registry = Registry(store)
    record, _ = registry.alias(alias)
    if record is None:
        return set()
    for ref in registry.metadata(record.version).get("datasets", []):
        name, _, version = ref.partition("@")
        if name == dataset and version:
            rows = read_manifest(store, name, version).to_pylist()
            return {r["sha256"] for r in rows if r["split"] == "train"}
    return set()


@flow(name="gather-feedback", log_prints=True)
def gather_feedback(
    dataset: str = "feedback",
    store_url: str | None = None,
    min_agreeing_clients: int = 2,
    max_per_client: int = 50,
    holdout_share: float = 0.2,
    retrain_after: int = 50,
    alias: str = PRODUCTION_ALIAS,
    misclassified_only: bool = True,
) -> str | None:
    """Add the accepted, misclassified feedback images not taken yet to a new dataset version.

    ``misclassified_only=False`` also takes accepted claims that agree with the model (a
    labelled sample of a new generator's images, say): an expert for a new source needs
    examples of both labels, and the model's right answers of that source are rarely reported.

    Accepted means a reviewer accepted the claim, or ``min_agreeing_clients`` independent
    clients made it and none contradicted it; each client contributes at most
    ``max_per_client`` images (see ``feedback.policy``).

    Incremental: the new version is the previous one (``parents``) plus what was accepted
    since, minus claims a reviewer has since rejected; every image keeps the split it was
    given when first taken. ``holdout_share`` of new images go to the ``test`` split: the
    regression set, never trained on, on which the gate requires a challenger to beat the
    champion. Idempotent: when nothing changed, no version is written and the latest is
    returned. When ``retrain_after`` or more taken training images are not yet in the live
    model's training data, emits ``aidetect.feedback.ready`` (``prefect.yaml`` starts
    ``retrain`` on it), once per ``retrain_after`` such images.
    """
    if not 0 <= holdout_share < 0.9:
        raise ValueError(f"holdout_share must be in [0, 0.9), got {holdout_share}")
    logger = get_run_logger()
    store = store_for(store_url)
    records = load_feedback(store_url)
    reviews = load_reviews(store)
    policy = Policy(min_agreeing_clients=min_agreeing_clients, max_per_client=max_per_client)
    selected = select_for_training(records, reviews, policy, misclassified_only=misclassified_only)
    chosen = {record.image_sha256: (record, label) for record, label in selected}
    logger.info(
        "%d feedback records (%d reviewed), %d images accepted and misclassified",
        len(records),
        len(reviews),
        len(chosen),
    )
    versions = list_datasets(store).get(dataset, [])
    parent = versions[-1] if versions else None
    before = previous_rows(store_url, dataset, parent) if parent else []
    kept = [r for r in before if r["sha256"] in chosen and chosen[r["sha256"]][1] == r["label"]]
    withdrawn = len(before) - len(kept)
    taken = {r["sha256"] for r in kept}
    added = [
        {
            "sha256": sha,
            "key": record.image_key,
            "label": label,
            "split": split_of(sha, val_share=0.1, test_share=holdout_share),
            "source": f"feedback:{record.id}",
            "generator": record.generator or "",
        }
        for sha, (record, label) in sorted(chosen.items())
        if sha not in taken
    ]
    if not added and not withdrawn:
        if parent:
            logger.info("nothing new since %s@%s", dataset, parent)
        else:
            logger.info("no usable feedback yet")
        return parent
    rows = kept + added
    by_id = {r.id: r for r in records}
    wanted = {(sha, label) for sha, (_, label) in chosen.items()}
    holdout = sum(r["split"] == "test" for r in rows)
    version = write_dataset_version(
        store,
        dataset,
        rows,
        parents=[f"{dataset}@{parent}"] if parent else [],
        progress=logger.info,
        extra={
            "added": len(added),
            "withdrawn": withdrawn,
            "regression_set": holdout,
            # every report behind an accepted claim, so each reporter can see where theirs went
            "feedback_ids": sorted(
                i
                for i, d in decide(records, reviews, policy).items()
                if d.status == "accepted" and (by_id[i].image_sha256, by_id[i].claimed_label) in wanted
            ),
        },
    )
    known = trained_on(store_url, alias, dataset)
    pending = sum(r["split"] == "train" and r["sha256"] not in known for r in rows)
    ai = sum(r["label"] == "ai" for r in rows)
    create_markdown_artifact(
        key="gather-feedback",
        markdown=(
            f"# Feedback gathered\n\n`{dataset}@{version}` (parent `{parent or 'none'}`): {len(rows)} images "
            f"({ai} ai, {len(rows) - ai} real) from {len(records)} reports.\n\n"
            f"| | images |\n|---|---|\n| added | {len(added)} |\n| withdrawn (claim rejected since) | {withdrawn} |\n"
            f"| regression set (held out, never trained on) | {holdout} |\n"
            f"| training images the `{alias}` model has not seen | {pending} (retrain after {retrain_after}) |\n"
        ),
        description="feedback dataset version",
    )
    logger.info("wrote %s@%s: %d images, %d added, %d withdrawn", dataset, version, len(rows), len(added), withdrawn)
    # Ask once per ``retrain_after`` new images (at 50, 100, ...), not on every version past the
    # bar: a challenger the gate rejected must not be retried every hour for one more image.
    added_train = sum(r["split"] == "train" and r["sha256"] not in known for r in added)
    if retrain_after > 0 and pending // retrain_after > (pending - added_train) // retrain_after:
        emit_event(
            event="aidetect.feedback.ready",
            resource={"prefect.resource.id": f"aidetect.dataset.{dataset}", "aidetect.version": version},
            payload={"version": version, "pending": pending, "retrain_after": retrain_after},
        )
        logger.info("%d new training images: asked for a retrain (aidetect.feedback.ready)", pending)
    return version
