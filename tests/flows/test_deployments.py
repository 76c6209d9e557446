"""prefect.yaml against a real Prefect API: deploy, a worker runs a deployment, events start retrain."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.datasets import list_datasets
from storage import LocalStore
from tests.helpers import agreed_report

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXPECTED = {
    "gather-feedback/aidetect": ("cpu", "5 * * * *"),
    "monitor-drift/aidetect": ("cpu", "30 2 * * *"),
    "retrain/aidetect": ("cpu", "0 3 * * 0"),
    "train-model/gpu": ("gpu", None),
    "train-model/cpu": ("cpu", None),
}


@pytest.fixture(scope="module")
def deployed(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``aidetect deploy`` (work pools + ``prefect deploy --all``) against the test API."""
    from prefect.settings import PREFECT_API_URL

    home = tmp_path_factory.mktemp("deployed")
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "AIDETECT_CODE_DIR": str(ROOT),
        "AIDETECT_HOME": str(home),
        "AIDETECT_STORE_URL": str(home / "store"),
    }
    result = subprocess.run(
        [str(BIN / "aidetect"), "deploy"], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield {"env": env, "store": LocalStore(home / "store")}


def _deployments() -> dict[str, Any]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        found = {}
        for deployment in client.read_deployments():
            found[f"{client.read_flow(deployment.flow_id).name}/{deployment.name}"] = deployment
        return found


def test_prefect_deploy_registers_every_deployment_with_pools_schedules_and_triggers(deployed: dict[str, Any]) -> None:
    from prefect import get_client

    deployments = _deployments()
    assert set(deployments) == set(EXPECTED)
    for name, (pool, cron) in EXPECTED.items():
        deployment = deployments[name]
        assert deployment.work_pool_name == pool, name
        crons = [getattr(s.schedule, "cron", None) for s in deployment.schedules]
        assert crons == ([cron] if cron else []), name
    retrain = deployments["retrain/aidetect"]
    assert retrain.parameters["train_deployment"] == "train-model/gpu"
    assert retrain.parameters["fallback_deployment"] == "train-model/cpu"
    # one retrain at a time; more queue behind it
    assert retrain.global_concurrency_limit is not None and retrain.global_concurrency_limit.limit == 1
    assert retrain.concurrency_options is not None
    assert retrain.concurrency_options.collision_strategy == "ENQUEUE"
    with get_client(sync_client=True) as client:
        automations = client.read_automations()
        pools = {pool.name: pool.type for pool in client.read_work_pools()}
    assert pools == {"cpu": "process", "gpu": "process"}
    expected_events = {"aidetect.drift.detected", "aidetect.feedback.ready"}
    linked = [a for a in automations if any(getattr(x, "deployment_id", None) == retrain.id for x in a.actions)]
    assert {event for a in linked for event in a.trigger.expect} == expected_events


def test_a_worker_picks_up_and_completes_a_deployment_run(deployed: dict[str, Any]) -> None:
    from prefect import get_client

    store = deployed["store"]
    agreed_report(store)  # two independent clients agree: accepted
    deployment = _deployments()["gather-feedback/aidetect"]
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"retrain_after": 1000})
    worker = subprocess.run(
        [str(BIN / "prefect"), "worker", "start", "--pool", "cpu", "--type", "process", "--run-once"],
        env=deployed["env"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state is not None and state.is_completed(), (state, worker.stdout[-3000:], worker.stderr[-3000:])
    # the run used the worker's environment: the feedback landed in the store it names
    assert len(list_datasets(store)["feedback"]) == 1


@pytest.mark.parametrize(
    ("event", "resource"),
    [("aidetect.drift.detected", "aidetect.model.v-test"), ("aidetect.feedback.ready", "aidetect.dataset.feedback")],
)
def test_events_start_a_retrain_run(deployed: dict[str, Any], event: str, resource: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    retrain = _deployments()["retrain/aidetect"]
    only_retrain = DeploymentFilter(id=DeploymentFilterId(any_=[retrain.id]))
    with get_client(sync_client=True) as client:
        before = {r.id for r in client.read_flow_runs(deployment_filter=only_retrain)}
    # the trigger service loads new automations in the background: send until one fires
    deadline = time.monotonic() + 120
    new: list[Any] = []
    while not new and time.monotonic() < deadline:
        emit_event(event=event, resource={"prefect.resource.id": resource})
        EventsWorker.drain_all()
        time.sleep(3)
        with get_client(sync_client=True) as client:
            new = [r for r in client.read_flow_runs(deployment_filter=only_retrain) if r.id not in before]
    assert new, f"no retrain run within 120 s of {event}"
    assert resource in new[0].parameters["reason"]
    assert new[0].parameters["train_deployment"] == "train-model/gpu"  # the deployment's defaults still apply
    with get_client(sync_client=True) as client:  # no worker here should ever start it
        for run in new:
            client.delete_flow_run(run.id)
