"""Replica folders on a shared volume: a dead replica's unsent feedback and prediction log are adopted.

A replica (a real uvicorn) accepts feedback while the store is down (202, queued in its outbox)
and answers predictions (journaled, spooled), then is SIGKILLed and never comes back under that
id (a removed container; a recreated one is a new id). Another replica on the same shared folder
adopts what it left: the store ends up with each queued report once and every answered
prediction, and the dead folder is gone. A live replica's folder is never adopted.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from aidetect.settings import InvalidReplicaId, Settings
from feedback.store import iter_feedback
from serving.app import create_app
from serving.replicas import ReplicaFolder, ReplicaFolderBusy
from storage.predictions import read_window
from tests.helpers import free_port, image_bytes, serving_process
from tests.serving.test_hardening import mean_model_store, settings_for


def _wait(condition: object, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_a_killed_removed_replicas_feedback_and_predictions_are_adopted_by_a_live_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.server import ThreadedMotoServer

    from storage.s3 import S3Store

    local = mean_model_store(tmp_path)
    with TestClient(create_app(settings_for(tmp_path, local, prediction_log=False))) as client:
        assert client.get("/readyz").status_code == 200  # fills the model cache both replicas start from
    shutil.copytree(tmp_path / "home", tmp_path / "home-b")

    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"  # nothing listens yet: the store is down
    replicas = tmp_path / "replicas"
    env = {
        **creds,
        "AIDETECT_HOME": str(tmp_path / "home"),
        "AIDETECT_STORE_URL": "s3://models/x",
        "AIDETECT_S3_ENDPOINT_URL": endpoint,
        "AIDETECT_REPLICAS_DIR": str(replicas),
        "AIDETECT_REPLICA_ID": "replica-a",
        "AIDETECT_LOG_FLUSH_SECONDS": "60",
        "AIDETECT_LOG_BATCH_SIZE": "4",  # a full batch is written at once: to the spool, as the store refuses
    }
    started = datetime.now(UTC) - timedelta(seconds=1)
    answered: list[str] = []
    queued: list[str] = []
    with serving_process(env, tmp_path / "a.log") as (process, base), httpx.Client(base_url=base, timeout=30) as http:

        def predict(seeds: range) -> None:
            for seed in seeds:
                response = http.post("/v1/predict", files={"file": ("x.jpg", image_bytes(fmt="JPEG", seed=seed))})
                assert response.status_code == 200, response.text
                answered.append(response.json()["id"])

        predict(range(4))
        for seed in range(3):
            image = image_bytes((32, 32), seed=100 + seed, fmt="PNG")
            response = http.post("/v1/feedback", data={"label": "ai"}, files={"file": ("f.png", image, "image/png")})
            assert response.status_code == 202 and response.json()["status"] == "queued", response.text
            queued.append(response.json()["id"])
        assert _wait(lambda: any((replicas / "replica-a" / "spool" / "predictions").glob("*.parquet")), 10)
        predict(range(4, 7))  # less than a batch: only in the journal
        time.sleep(0.3)  # past the journal's commit interval: journaled, not yet in a batch
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    dead = replicas / "replica-a"
    left = sorted(p.relative_to(dead).as_posix() for p in dead.rglob("*") if p.is_file())
    print("replica-a left:", left)
    for kind in ("outbox/feedback/", "spool/predictions/", "journal/predictions/"):
        assert any(name.startswith(kind) for name in left), (kind, left)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # the store is back
    try:
        store = S3Store("models", "x", endpoint_url=endpoint)
        store.ensure_bucket()
        settings = Settings(
            home=tmp_path / "home-b",
            store_url="s3://models/x",
            s3_endpoint_url=endpoint,
            replicas_dir=replicas,
            replica_id="replica-b",
            outbox_flush_seconds=0.1,
            log_flush_seconds=0.2,
        )
        with TestClient(create_app(settings)) as client:
            state = client.app.state.serving  # type: ignore[attr-defined]
            assert _wait(lambda: not dead.exists() and state.outbox.pending() == 0), "not adopted"

            def logged() -> set[str]:
                window = read_window(store, started, datetime.now(UTC) + timedelta(seconds=1))
                return set(window["id"]) if len(window) else set()

            assert _wait(lambda: set(answered) <= logged()), f"missing: {set(answered) - logged()}"
        reports = [record.id for record in iter_feedback(store)]
        assert sorted(reports) == sorted(queued)  # each queued report, once
        window = read_window(store, started, datetime.now(UTC) + timedelta(seconds=1))
        assert set(answered) <= set(window["id"]) and window["id"].is_unique
        assert sorted(p.name for p in replicas.iterdir()) == ["replica-b"]
    finally:
        server.stop()


HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_live_replicas_folder_is_never_adopted(tmp_path: Path) -> None:
    live = tmp_path / "live" / "outbox" / "feedback"
    live.mkdir(parents=True)
    (live / "x.img").write_bytes(b"image")
    (live / "x.json").write_text('{"ext": "png", "record": {}}')
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "live" / ".alive")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        me = ReplicaFolder.claim(tmp_path, "me")
        assert me.adopt_dead(None) == 0
        assert (live / "x.json").exists() and (live / "x.img").exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    assert me.adopt_dead(None) == 1  # its process is gone: now it is adopted
    assert sorted(p.name for p in me.outbox_dir.iterdir()) == ["x.img", "x.json"]
    assert not (tmp_path / "live").exists()
    me.release()


def test_one_replica_id_is_one_live_process(tmp_path: Path) -> None:
    first = ReplicaFolder.claim(tmp_path, "same")
    with pytest.raises(ReplicaFolderBusy, match="two replicas with the id 'same'"):
        ReplicaFolder.claim(tmp_path, "same", wait_seconds=0.2)
    first.release()
    ReplicaFolder.claim(tmp_path, "same", wait_seconds=0.2).release()  # after it is gone, the id is free


@pytest.mark.parametrize("bad", ["../escape", "a/b", ".alive", "", "-x", "x" * 64, "a b"])
def test_an_unsafe_replica_id_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidReplicaId, match="not a safe folder name"):
        ReplicaFolder.claim(tmp_path, bad)
    with pytest.raises(ValidationError, match="not a safe folder name"):
        Settings(replica_id=bad)
    assert list(tmp_path.iterdir()) == []
