"""flows.notifications against a real Prefect API: its automations post to a real webhook.

A webhook receiver (http.server on 127.0.0.1) stands where Slack would; the Prefect server
(the ``prefect_api`` fixture) runs the automations' triggers and actions and posts to it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIFT_SUMMARY = ROOT / "tests" / "serving" / "data" / "drift-summary.json"
WAIT_SECONDS = 60.0


@dataclass
class Webhook:
    url: str
    received: queue.Queue[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=queue.Queue)

    def wait_for(self, subject: str, resend: Any = None) -> tuple[str, dict[str, str], dict[str, Any]]:
        """The first message whose subject contains ``subject``; ``resend()`` every 5 s meanwhile
        (the trigger service loads new automations in the background, so the first event may
        come before it listens)."""
        deadline = time.monotonic() + WAIT_SECONDS
        next_send = time.monotonic() + 5
        seen = []
        while time.monotonic() < deadline:
            try:
                message = self.received.get(timeout=0.5)
            except queue.Empty:
                if resend is not None and time.monotonic() > next_send:
                    resend()
                    next_send = time.monotonic() + 5
                continue
            if subject in message[2].get("subject", ""):
                return message
            seen.append(message[2].get("subject"))
        raise AssertionError(f"no notification about {subject!r} within {WAIT_SECONDS:.0f} s; got {seen}")


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hook.received.put((self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/aidetect?token=s3cret&x=1"
    yield hook
    server.shutdown()
    server.server_close()


@pytest.fixture
def notifications(prefect_api: None, webhook: Webhook) -> Iterator[list[str]]:
    from flows.notifications import apply_notifications, remove_notifications

    names = apply_notifications(webhook.url)
    yield names
    remove_notifications()  # the session's Prefect API serves other tests' events too


def _emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    emit_event(event=event, resource=resource, payload=payload)
    EventsWorker.drain_all()


def test_drift_notification_arrives_from_the_prefect_server(notifications: list[str], webhook: Webhook) -> None:
    from flows.drift import DRIFT_EVENT
    from model.drift import PARTS

    summary = json.loads(DRIFT_SUMMARY.read_text())  # a real monitor-drift summary
    version = summary["model_version"]
    summary["report"] = f"reports/drift/{version}/report.html"
    # the event as flows/drift.py emits it
    resource = {"prefect.resource.id": f"aidetect.model.{version}", "aidetect.alias": summary["alias"]}
    payload = {
        "version": version,
        "alias": summary["alias"],
        "report": summary["report"],
        "drifted_parts": summary["drifted_parts"],
        "drifted_columns": summary["drifted_columns"],
        "rows": summary["rows"],
        "scores": {part: summary["parts"][part]["score"] for part in PARTS},
        "thresholds": {part: summary["parts"][part]["threshold"] for part in PARTS},
    }
    _emit(DRIFT_EVENT, resource, payload)

    path, headers, message = webhook.wait_for(version, resend=lambda: _emit(DRIFT_EVENT, resource, payload))
    assert path == "/hooks/aidetect?token=s3cret&x=1"  # the URL as configured, query and all
    assert headers["content-type"] == "application/json"
    assert message["subject"] == f"aidetect: drift detected on {version} (production)"
    body = message["body"]
    assert "Drifted: image_stats, embedding (columns contrast, height, jpeg_quality" in body
    assert f"embedding {summary['parts']['embedding']['score']} vs {summary['parts']['embedding']['threshold']}" in body
    assert "Rows: 100 current, 300 reference." in body
    assert f"Report: {summary['report']} in the store." in body
    assert message["text"] == f"*{message['subject']}*\n{body}"
    assert message["source"] == "aidetect"


def test_challenger_verdicts_arrive(notifications: list[str], webhook: Webhook) -> None:
    """Both verdicts, emitted by the function retrain calls, with the gate's real reasons."""
    from flows.retrain import announce_verdict
    from model.card import ModelCard
    from model.gate import GateConfig, judge

    champion = {
        "accuracy": 0.91,
        "recall_ai": 0.9,
        "recall_real": 0.92,
        "ece": 0.03,
        "mean_prediction_minus_beta": 0.01,
    }
    worse = {**champion, "accuracy": 0.42, "recall_ai": 0.3}
    better = {**champion, "accuracy": 0.93, "confusion": {"tp": 1, "fp": 0, "fn": 0, "tn": 1}}
    card = ModelCard(input_size=32, parent_version="v-champion", trigger="drift detected on aidetect.model.v-champion")

    rejected = judge(worse, champion, 1e-6, GateConfig())
    assert not rejected.blessed and rejected.reasons
    announce_verdict("v-rejected", "production", card, rejected, worse, champion, promoted=False)
    _, _, message = webhook.wait_for(
        "v-rejected",
        resend=lambda: announce_verdict("v-rejected", "production", card, rejected, worse, champion, promoted=False),
    )
    assert message["subject"] == "aidetect: challenger v-rejected rejected"
    body = message["body"]
    assert "failed the gate against v-champion; production is unchanged." in body
    for reason in rejected.reasons:
        assert f"Why: {reason}" in body
    assert "Retrain started by: drift detected on aidetect.model.v-champion" in body
    assert "accuracy: 0.42 (champion 0.91)" in body

    blessed = judge(better, champion, 1e-6, GateConfig())
    assert blessed.blessed, blessed.reasons
    announce_verdict("v-blessed", "production", card, blessed, better, champion, promoted=True)
    _, _, message = webhook.wait_for(
        "v-blessed",
        resend=lambda: announce_verdict("v-blessed", "production", card, blessed, better, champion, promoted=True),
    )
    assert message["subject"] == "aidetect: challenger v-blessed blessed, now production"
    assert "passed the gate against v-champion and is now production." in message["body"]
    assert "accuracy: 0.93 (champion 0.91)" in message["body"]
    assert "confusion" not in message["body"]  # numbers only


def test_a_failed_flow_run_is_reported_with_its_message(
    notifications: list[str], webhook: Webhook, tmp_path: Path
) -> None:
    from flows.drift import monitor_drift

    def fail() -> None:  # a real monitor-drift run that fails: the store has no production model
        with pytest.raises(ValueError, match="no model version has the alias"):
            monitor_drift(store_url=str(tmp_path / "empty-store"))

    fail()
    _, _, message = webhook.wait_for("monitor-drift run", resend=fail)
    assert message["subject"].startswith("aidetect: monitor-drift run ") and message["subject"].endswith(" Failed")
    body = message["body"]
    assert "of monitor-drift ended Failed:" in body and "no model version has the alias 'production'" in body


def test_apply_is_idempotent_and_replaces_what_it_no_longer_has(
    prefect_api: None, webhook: Webhook, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    from flows.notifications import AUTOMATION_PREFIX, BLOCK_NAME, NOTICES, apply_notifications, remove_notifications

    with get_client(sync_client=True) as client:  # a notice of an older release
        stale = AutomationCore(
            name=AUTOMATION_PREFIX + "retired notice", trigger=EventTrigger(expect={"x.y"}), actions=[DoNothing()]
        )
        client.create_automation(stale)
    try:
        first = apply_notifications("https://hooks.example.com/old")
        # the same, from the command aidetect deploy runs, with the URL from the environment
        env = {**os.environ, "AIDETECT_NOTIFY_WEBHOOK_URL": webhook.url, "PREFECT_API_URL": _api_url()}
        result = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "flows.notifications"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "4 automations post to the webhook" in result.stdout + result.stderr
        with get_client(sync_client=True) as client:
            ours = sorted(a.name for a in client.read_automations() if a.name.startswith(AUTOMATION_PREFIX))
        assert ours == sorted(first) == sorted(AUTOMATION_PREFIX + n.name for n in NOTICES)
        block = CustomWebhookNotificationBlock.load(BLOCK_NAME)
        assert isinstance(block, CustomWebhookNotificationBlock)
        assert block.secrets.get_secret_value()["webhook_url"] == webhook.url  # the second URL won

        # unset: nothing changes
        result = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "flows.notifications"],
            cwd=ROOT,
            env={**env, "AIDETECT_NOTIFY_WEBHOOK_URL": ""},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0 and "AIDETECT_NOTIFY_WEBHOOK_URL is not set" in result.stdout + result.stderr
        with get_client(sync_client=True) as client:
            assert len([a for a in client.read_automations() if a.name.startswith(AUTOMATION_PREFIX)]) == len(NOTICES)
    finally:
        removed = remove_notifications()
    assert sorted(removed) == sorted(first)
    with get_client(sync_client=True) as client:
        assert not [a for a in client.read_automations() if a.name.startswith(AUTOMATION_PREFIX)]


def test_a_bad_url_is_refused_by_name() -> None:
    from pydantic import ValidationError

    from aidetect.settings import Settings

    for bad in ("hooks.example.com/x", "ftp://hooks.example.com", "http://a b"):
        with pytest.raises(ValidationError, match="notify_webhook_url must be an http:// or https:// URL"):
            Settings(notify_webhook_url=bad)
    assert Settings(notify_webhook_url="").notify_webhook_url is None


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())
