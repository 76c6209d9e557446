"""What became of one report: its status, why, and which dataset and model versions used it."""

from __future__ import annotations

from dataclasses import dataclass, field

from feedback.policy import Policy, decide
from feedback.records import FeedbackRecord
from feedback.reviews import load_reviews
from feedback.store import reports_of_image
from storage import NotFound, ObjectStore


@dataclass
class ReportStatus:
    status: str
    reason: str
    dataset_versions: list[str] = field(default_factory=list)
    model_versions: list[str] = field(default_factory=list)


def report_status(
    store: ObjectStore, record: FeedbackRecord, policy: Policy, dataset: str = "feedback"
) -> ReportStatus:
    """The policy's decision on ``record`` (over the reports of its image), and where it was used."""
    from pydantic import ValidationError

    from model.datasets import list_datasets, read_version_info
    from model.registry import Registry

    reports = {r.id: r for r in reports_of_image(store, record.image_sha256)}
    reports[record.id] = record
    reviews = load_reviews(store, list(reports))
    decision = decide(list(reports.values()), reviews, policy)[record.id]
    status = ReportStatus(decision.status, decision.reason)
    for version in list_datasets(store).get(dataset, []):
        if record.id in read_version_info(store, dataset, version).get("feedback_ids", []):
            status.dataset_versions.append(f"{dataset}@{version}")
    if status.dataset_versions:
        registry = Registry(store)
        for version in registry.versions():
            try:
                used = registry.metadata(version).datasets
            except (NotFound, ValidationError):
                continue
            if any(ref in used for ref in status.dataset_versions):
                status.model_versions.append(version)
    return status
