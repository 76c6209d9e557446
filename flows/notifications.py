"""Prefect automations that tell a person what the flows found, through one webhook.

``apply_notifications(url)`` saves a ``CustomWebhookNotificationBlock`` (``aidetect-notify``)
that posts ``{"text", "subject", "body", "source"}`` as JSON to ``url`` (``text`` is what a
Slack or Mattermost incoming webhook shows), and creates or updates, by name, one automation
per notice:

- ``aidetect.drift.detected`` (``flows.drift``): the model version, the drifted parts and
  columns, each part's score against its threshold, the report's key in the store;
- ``aidetect.challenger.blessed`` / ``aidetect.challenger.rejected`` (``flows.retrain``): the
  version, whether it was promoted, the gate's reasons, its metrics beside the champion's;
- a flow run of an aidetect flow that ended Failed, Crashed or TimedOut: flow, run, state
  message, deployment.

Each message links to the run in the Prefect UI (the server's ``PREFECT_UI_URL``) when the
event came from one. Automations named ``aidetect-notify: ...`` that are no longer notices
here are deleted, so applying twice, or after a change, leaves exactly these.

``aidetect deploy`` (and so ``aidetect up`` and compose's ``prefect-deploy``) runs this
module with the ``AIDETECT_NOTIFY_WEBHOOK_URL`` setting: ``python -m flows.notifications``.
Unset, nothing is created or changed, and the log says so. The actions run in the Prefect
server, so the URL must be reachable from there.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger

from aidetect.settings import get_settings
from flows.drift import DRIFT_EVENT, monitor_drift
from flows.gather import gather_feedback
from flows.retrain import CHALLENGER_BLESSED, CHALLENGER_REJECTED, retrain
from flows.train import train_model

BLOCK_NAME = "aidetect-notify"
AUTOMATION_PREFIX = "aidetect-notify: "
FLOW_NAMES = tuple(f.name for f in (gather_feedback, monitor_drift, retrain, train_model))
FAILED_STATES = ("Failed", "Crashed", "TimedOut")
# What the webhook receives; {{ subject }} and {{ body }} are the rendered templates below.
WEBHOOK_JSON = {
    "text": "*{{subject}}*\n{{body}}",
    "subject": "{{subject}}",
    "body": "{{body}}",
    "source": "{{name}}",
}

# Jinja, rendered by the Prefect server with the triggering `event` (and the flow_run, flow,
# deployment it names, when it names them).
RUN_LINK = "{% if flow_run and flow_run|ui_url %}\nRun: {{ flow_run|ui_url }}{% endif %}"  # the UI URL may be unknown
DRIFT_BODY = (
    "Input drift in the predictions of model {{ event.payload.version }} ({{ event.payload.alias }}).\n"
    "Drifted: {{ event.payload.drifted_parts|join(', ') }}"
    "{% if event.payload.drifted_columns %} (columns {{ event.payload.drifted_columns|join(', ') }}){% endif %}.\n"
    "Scores vs thresholds:{% for part, score in event.payload.scores.items() %} "
    "{{ part }} {{ score }} vs {{ event.payload.thresholds[part] }}{% if not loop.last %};{% endif %}{% endfor %}.\n"
    "Rows: {{ event.payload.rows.current }} current, {{ event.payload.rows.reference }} reference.\n"
    "Report: {{ event.payload.report }} in the store. A retrain starts on this event." + RUN_LINK
)
TRIGGER = "{% if event.payload.trigger %}\nRetrain started by: {{ event.payload.trigger }}{% endif %}"
METRICS_TABLE = (
    "{% for name, value in event.payload.metrics.items() %}\n"
    "{{ name }}: {{ value|round(4) }}"
    "{% if event.payload.champion_metrics and name in event.payload.champion_metrics %}"
    " (champion {{ event.payload.champion_metrics[name]|round(4) }}){% endif %}{% endfor %}"
)
BLESSED_BODY = (
    "Challenger {{ event.payload.version }} passed the gate against "
    "{{ event.payload.champion or 'no champion' }}"
    "{% if event.payload.promoted %} and is now {{ event.payload.alias }}.{% else %}; it was not promoted "
    "(auto_promote off): `aidetect model promote {{ event.payload.version }}`.{% endif %}"
    "{% for note in event.payload.notes %}\nNote: {{ note }}{% endfor %}" + TRIGGER + METRICS_TABLE + RUN_LINK
)
REJECTED_BODY = (
    "Challenger {{ event.payload.version }} failed the gate against "
    "{{ event.payload.champion or 'no champion' }}; {{ event.payload.alias }} is unchanged."
    "{% for reason in event.payload.reasons %}\nWhy: {{ reason }}{% endfor %}" + TRIGGER + METRICS_TABLE + RUN_LINK
)
FAILED_BODY = (
    "Flow run {{ event.resource['prefect.resource.name'] }} of {{ flow.name if flow else 'an aidetect flow' }}"
    "{% if deployment %} (deployment {{ deployment.name }}){% endif %} ended "
    "{{ event.resource['prefect.state-name'] }}: {{ event.resource['prefect.state-message'] or 'no message' }}"
    + RUN_LINK
)


@dataclass(frozen=True)
class Notice:
    """One automation: the events it listens for and the message it sends."""

    name: str
    description: str
    events: tuple[str, ...]
    subject: str
    body: str
    match: dict[str, Any] = field(default_factory=dict)
    match_related: dict[str, Any] = field(default_factory=dict)

    def automation(self, block_id: Any) -> AutomationCore:
        return AutomationCore(
            name=AUTOMATION_PREFIX + self.name,
            description=self.description,
            enabled=True,
            trigger=EventTrigger(
                expect=set(self.events),
                match=self.match,  # type: ignore[arg-type]
                match_related=self.match_related,  # type: ignore[arg-type]
                posture="Reactive",
                threshold=1,
            ),
            actions=[SendNotification(block_document_id=block_id, subject=self.subject, body=self.body)],
            actions_on_trigger=[],
            actions_on_resolve=[],
        )


NOTICES = (
    Notice(
        "drift detected",
        "monitor-drift found input drift in the production model's predictions",
        (DRIFT_EVENT,),
        "aidetect: drift detected on {{ event.payload.version }} ({{ event.payload.alias }})",
        DRIFT_BODY,
        match={"prefect.resource.id": "aidetect.model.*"},
    ),
    Notice(
        "challenger blessed",
        "retrain's challenger passed the gate (and was promoted, unless auto_promote is off)",
        (CHALLENGER_BLESSED,),
        "aidetect: challenger {{ event.payload.version }} blessed"
        "{% if event.payload.promoted %}, now {{ event.payload.alias }}{% endif %}",
        BLESSED_BODY,
        match={"prefect.resource.id": "aidetect.model.*"},
    ),
    Notice(
        "challenger rejected",
        "retrain's challenger failed the gate; the champion keeps serving",
        (CHALLENGER_REJECTED,),
        "aidetect: challenger {{ event.payload.version }} rejected",
        REJECTED_BODY,
        match={"prefect.resource.id": "aidetect.model.*"},
    ),
    Notice(
        "flow run failed",
        f"a flow run of {', '.join(FLOW_NAMES)} ended {', '.join(FAILED_STATES)}",
        tuple(f"prefect.flow-run.{state}" for state in FAILED_STATES),
        "aidetect: {{ flow.name if flow else 'flow' }} run {{ event.resource['prefect.resource.name'] }} "
        "{{ event.resource['prefect.state-name'] }}",
        FAILED_BODY,
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(FLOW_NAMES)},
    ),
)


def apply_notifications(webhook_url: str) -> list[str]:
    """Save the webhook block and create or update every notice's automation; returns their names.

    Talks to the Prefect API of the current settings (``PREFECT_API_URL``).
    """
    from prefect import get_client

    # the URL (often a token itself) as a secret of the block: the Prefect UI shows it masked
    block = CustomWebhookNotificationBlock(
        name="aidetect", url="{{webhook_url}}", secrets={"webhook_url": webhook_url}, json_data=WEBHOOK_JSON
    )
    block_id = block.save(BLOCK_NAME, overwrite=True)
    wanted = {AUTOMATION_PREFIX + notice.name: notice for notice in NOTICES}
    with get_client(sync_client=True) as client:
        existing = [a for a in client.read_automations() if a.name.startswith(AUTOMATION_PREFIX)]
        seen: set[str] = set()
        for automation in existing:
            if automation.name in wanted and automation.name not in seen:
                client.update_automation(automation.id, wanted[automation.name].automation(block_id))
                seen.add(automation.name)
            else:  # a notice that is gone, or a second automation of the same name
                client.delete_automation(automation.id)
        for name, notice in wanted.items():
            if name not in seen:
                client.create_automation(notice.automation(block_id))
    return list(wanted)


def remove_notifications() -> list[str]:
    """Delete every ``aidetect-notify: ...`` automation and the webhook block; returns the names deleted."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        ours = [a for a in client.read_automations() if a.name.startswith(AUTOMATION_PREFIX)]
        for automation in ours:
            client.delete_automation(automation.id)
        try:
            block = client.read_block_document_by_name(BLOCK_NAME, CustomWebhookNotificationBlock.get_block_type_slug())
        except ObjectNotFound:
            pass
        else:
            client.delete_block_document(block.id)
    return [a.name for a in ours]


def main() -> int:
    """``python -m flows.notifications``: apply the notices with AIDETECT_NOTIFY_WEBHOOK_URL, if set."""
    url = get_settings().notify_webhook_url
    if url is None:
        print("notifications: AIDETECT_NOTIFY_WEBHOOK_URL is not set: no automations created or changed", flush=True)
        return 0
    names = apply_notifications(url.get_secret_value())
    print(f"notifications: {len(names)} automations post to the webhook: {', '.join(names)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
