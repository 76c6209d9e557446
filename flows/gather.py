"""``gather-feedback``: misclassified feedback -> a new version of the feedback dataset."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from feedback.policy import Policy, decide, select_for_training
from feedback.records import FeedbackRecord
from feedback.reviews import load_reviews
from feedback.store import iter_feedback
from flows.common import store_for
from model.data import list_datasets, read_manifest, write_dataset_version


@task(retries=2, retry_delay_seconds=5)
def load_feedback(store_url: str | None) -> list[FeedbackRecord]:
    return list(iter_feedback(store_for(store_url)))


@flow(name="gather-feedback", log_prints=True)
def gather_feedback(
    dataset: str = "feedback",
    store_url: str | None = None,
    min_agreeing_clients: int = 2,
    max_per_client: int = 50,
) -> str | None:
    """Write a dataset version with every accepted, misclassified feedback image so far.

    Accepted means a reviewer accepted the claim, or ``min_agreeing_clients`` independent
    clients made it and none contradicted it; each client contributes at most
    ``max_per_client`` images (see ``feedback.policy``). Idempotent: when nothing new was
    accepted, no version is written and the latest is returned.
    """
    logger = get_run_logger()
    store = store_for(store_url)
    records = load_feedback(store_url)
    reviews = load_reviews(store)
    policy = Policy(min_agreeing_clients=min_agreeing_clients, max_per_client=max_per_client)
    selected = select_for_training(records, reviews, policy)
    chosen = [record.model_copy(update={"claimed_label": label}) for record, label in selected]
    logger.info(
        "%d feedback records (%d reviewed), %d images accepted and misclassified",
        len(records),
        len(reviews),
        len(chosen),
    )
    by_id = {r.id: r for r in records}
    versions = list_datasets(store).get(dataset, [])
    wanted = {(r.image_sha256, r.claimed_label) for r in chosen}
    if versions:
        latest = read_manifest(store, dataset, versions[-1])
        if set(zip(latest["sha256"].to_pylist(), latest["label"].to_pylist(), strict=True)) == wanted:
            logger.info("nothing new since %s@%s", dataset, versions[-1])
            return versions[-1]
    if not chosen:
        logger.info("no usable feedback yet")
        return None
    rows = [
        {
            "sha256": r.image_sha256,
            "key": r.image_key,
            "label": r.claimed_label,
            "source": f"feedback:{r.id}",
            "generator": r.generator or "",
        }
        for r in chosen
    ]
    version = write_dataset_version(
        store,
        dataset,
        rows,
        parents=[f"{dataset}@{versions[-1]}"] if versions else [],
        progress=logger.info,
        # every report behind an accepted claim, so each reporter can see where theirs went
        extra={
            "feedback_ids": sorted(
                i
                for i, d in decide(records, reviews, policy).items()
                if d.status == "accepted" and (by_id[i].image_sha256, by_id[i].claimed_label) in wanted
            )
        },
    )
    ai = sum(r.claimed_label == "ai" for r in chosen)
    create_markdown_artifact(
        key="gather-feedback",
        markdown=(
            f"# Feedback gathered\n\n`{dataset}@{version}`: {len(chosen)} images "
            f"({ai} ai, {len(chosen) - ai} real) from {len(records)} reports."
        ),
        description="feedback dataset version",
    )
    logger.info("wrote %s@%s with %d images", dataset, version, len(chosen))
    return version
