"""The review backlog on /metrics: ``aidetect_review_backlog``, the reports awaiting a reviewer.

Every replica counts them now and then (``AIDETECT_REVIEW_BACKLOG_POLL_SECONDS``) from the
store, with the same rule as the review page (``feedback.review_queue.awaiting_review``), and
exports the count; nothing is exported before the first count, so a store that was never read
is not taken for an empty queue. ``aidetect_review_backlog_oldest_timestamp_seconds`` is when
the oldest waiting report was made (absent while the queue is empty), and
``aidetect_review_backlog_read_errors`` counts the rounds that failed.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from feedback.policy import Policy
from feedback.review_queue import Awaiting, LiveScore, awaiting_review
from feedback.reviews import load_reviews
from feedback.store import iter_feedback
from storage import ObjectStore


def load_queue(store: ObjectStore, policy: Policy) -> list[Awaiting]:
    """Every report awaiting review, oldest first, from the store (what ``aidetect feedback review`` reads)."""
    return awaiting_review(list(iter_feedback(store)), load_reviews(store), policy)


class ReviewBacklog(Collector):
    """The latest count, refreshed by ``poll``, and the live scores of the queue's images (the
    review API's); a collector on the serving metrics' registry."""

    def __init__(self) -> None:
        self.count: int | None = None
        self.oldest: float | None = None  # unix seconds
        self.errors = 0
        # the live model's score of each image in the queue, by (model version, image sha256); None:
        # unreadable. Only the live version's are kept: a hot swap re-scores the queue.
        self.scores: dict[tuple[str, str], LiveScore | None] = {}

    def poll(self, store: ObjectStore, policy: Policy) -> int:
        """Count the reports awaiting review (a worker thread); what it raises is counted, then raised."""
        try:
            queue = load_queue(store, policy)
        except Exception:
            self.errors += 1
            raise
        self.set(queue)
        return len(queue)

    def set(self, queue: list[Awaiting]) -> None:
        """Take the count from a queue just read (the review API's reads keep the gauge fresh too)."""
        self.count = len(queue)
        self.oldest = min((a.record.created_at.timestamp() for a in queue), default=None)

    def collect(self) -> Iterable[Metric]:
        errors = CounterMetricFamily("aidetect_review_backlog_read_errors", "Review backlog counts that failed")
        errors.add_metric([], self.errors)
        yield errors
        if self.count is None:
            return
        backlog = GaugeMetricFamily("aidetect_review_backlog", "Feedback reports awaiting a reviewer")
        backlog.add_metric([], self.count)
        yield backlog
        if self.oldest is not None:
            oldest = GaugeMetricFamily(
                "aidetect_review_backlog_oldest_timestamp_seconds", "When the oldest report awaiting review was made"
            )
            oldest.add_metric([], self.oldest)
            yield oldest
