"""The flows' lease: renewal, expiry, takeover by entity tag, and a holder that learns it lost.

Most tests drive the lease with an injected clock (no sleeping); the heartbeat and the
crashed-worker tests use real time with TTLs of seconds. The acceptance test SIGKILLs a real
retrain worker process holding the lease.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aidetect.settings import Settings
from flows.lease import Busy, Lease, LeaseLost, LeaseRecord, clear_lease, lease, read_lease, take_lease
from storage import LocalStore, ObjectStore
from storage.base import StoreUnavailable

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FlakyStore(ObjectStore):
    """A real store whose puts fail as if unreachable while ``down`` (fault injection at the edge)."""

    def __init__(self, inner: ObjectStore):
        self.inner, self.url, self.down = inner, inner.url, False

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_with_etag(key)

    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> str:
        if self.down:
            raise StoreUnavailable("connection refused")
        return self.inner.put(key, data, if_match=if_match, if_none_match=if_none_match)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def test_the_record_names_its_holder_and_renewal_moves_only_its_expiry(any_store: ObjectStore) -> None:
    clock = FakeClock()
    held = take_lease(any_store, "retrain", holder="retrain r1", ttl_seconds=10, flow_run_id="fr-1", clock=clock)
    record = read_lease(any_store, "retrain")
    assert record == LeaseRecord(
        "retrain", "retrain r1", "fr-1", socket.gethostname(), os.getpid(), clock.now, clock.now, clock.now + 10
    )
    assert held.renew_every == 2.5  # a quarter of the TTL
    clock.now += 6
    assert held.renew() and not held.lost
    renewed = read_lease(any_store, "retrain")
    assert renewed is not None
    assert (renewed.taken_at, renewed.renewed_at, renewed.expires_at) == (record.taken_at, clock.now, clock.now + 10)
    clock.now += 9  # 15 s after taking it, 9 after the renewal: still live
    with pytest.raises(Busy, match=r"already running \(retrain r1, flow run fr-1, .*expires in 1s"):
        take_lease(any_store, "retrain", holder="retrain r2", ttl_seconds=10, clock=clock)
    held.release()
    assert read_lease(any_store, "retrain") is None


def test_an_expired_lease_is_taken_over_and_its_old_holder_has_lost_it(any_store: ObjectStore) -> None:
    clock = FakeClock()
    first = take_lease(any_store, "retrain", holder="first", ttl_seconds=10, clock=clock)
    clock.now += 10  # no renewal for a whole TTL (the holder hung, or was cut off)
    assert first.lost and "expired" in str(first.lost_reason)
    second = take_lease(any_store, "retrain", holder="second", ttl_seconds=10, clock=clock)
    assert not first.renew()  # it does not take the lease back
    with pytest.raises(LeaseLost, match="lease retrain lost"):
        first.check()
    first.release()  # leaves the new holder's lease alone
    assert read_lease(any_store, "retrain").holder == "second"  # type: ignore[union-attr]
    second.check()
    second.release()


def test_a_renewal_that_finds_the_lease_changed_loses_it(any_store: ObjectStore) -> None:
    clock = FakeClock()
    held = take_lease(any_store, "retrain", holder="first", ttl_seconds=10, clock=clock)
    clear_lease(any_store, "retrain", force=True, now=clock.now)
    other = take_lease(any_store, "retrain", holder="second", ttl_seconds=10, clock=clock)
    clock.now += 3
    assert not held.renew() and held.lost_reason == "taken by second"
    assert read_lease(any_store, "retrain").holder == "second"  # type: ignore[union-attr]
    other.release()
    # cleared and nobody took it since: lost all the same (its body may have been overlapped)
    again = take_lease(any_store, "retrain", holder="third", ttl_seconds=10, clock=clock)
    clear_lease(any_store, "retrain", force=True, now=clock.now)
    assert not again.renew() and again.lost_reason == "taken by nobody (cleared)"
    assert read_lease(any_store, "retrain") is None  # a lost holder does not write it back


def test_an_unreachable_store_loses_the_lease_only_once_it_has_expired(tmp_path: Path) -> None:
    clock = FakeClock()
    store = FlakyStore(LocalStore(tmp_path / "store"))
    held = take_lease(store, "retrain", holder="first", ttl_seconds=10, clock=clock)
    store.down = True
    clock.now += 5
    assert held.renew() and not held.lost  # a failed renewal within the TTL: tried again later
    clock.now += 5
    assert not held.renew() and held.lost  # the last good renewal has expired
    store.down = False
    clock.now += 1
    assert not held.renew() and held.lost  # lost for good: another run may have started meanwhile
    with pytest.raises(LeaseLost, match="expired"):
        held.check()


def test_two_takers_of_an_expired_lease_cannot_both_win(tmp_path: Path) -> None:
    clock = FakeClock()
    inner = LocalStore(tmp_path / "store")
    take_lease(inner, "retrain", holder="dead", ttl_seconds=10, clock=clock)
    clock.now += 60

    class Racing(FlakyStore):
        """Between this taker's read of the expired copy and its conditional put, another takes it."""

        def get_with_etag(self, key: str) -> tuple[bytes, str]:
            found = self.inner.get_with_etag(key)
            take_lease(self.inner, "retrain", holder="quicker", ttl_seconds=10, clock=clock)
            return found

    with pytest.raises(Busy, match="taken by another run at the same moment"):
        take_lease(Racing(inner), "retrain", holder="slower", ttl_seconds=10, clock=clock)
    assert read_lease(inner, "retrain").holder == "quicker"  # type: ignore[union-attr]


def test_the_heartbeat_keeps_a_live_holder_past_its_ttl(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ttl = 1.5
    with lease(store, "retrain", holder="live", ttl_seconds=ttl) as held:
        taken = read_lease(store, "retrain")
        deadline = time.time() + 2.5 * ttl
        while time.time() < deadline:
            with pytest.raises(Busy):
                take_lease(store, "retrain", holder="intruder", ttl_seconds=ttl)
            time.sleep(0.1)
        current = read_lease(store, "retrain")
        assert current is not None and taken is not None
        assert current.holder == "live" and current.renewed_at > taken.expires_at  # renewed well past the first TTL
        held.check()
    assert read_lease(store, "retrain") is None  # released on exit


def test_a_retrain_that_lost_its_lease_registers_nothing(tmp_path: Path) -> None:
    from flows.retrain import _register_and_promote

    clock = FakeClock()
    held = take_lease(LocalStore(tmp_path / "store"), "retrain", holder="me", ttl_seconds=10, clock=clock)
    clock.now += 11
    nothing: Any = None  # the check comes before any of them is looked at
    with pytest.raises(LeaseLost):
        _register_and_promote(nothing, {}, nothing, nothing, held)


WORKER = """
import sys, time
from pathlib import Path

import flows.retrain


def hold(plan, run_id, held):  # the flow's body, replaced: it 'trains' while holding the lease
    Path(sys.argv[2]).write_text(held.record.holder)
    time.sleep(600)


flows.retrain._retrain = hold
flows.retrain.retrain(store_url=sys.argv[1])
"""


def test_a_crashed_retrain_leaves_retraining_possible_within_5_minutes(
    tmp_path: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    import flows.retrain

    default_ttl = Settings.model_fields["lease_ttl_seconds"].default
    assert default_ttl <= 300  # a crashed run frees retraining within one TTL of its last renewal
    ttl = 4.0  # renewed every second: a worker starved for 3 s still keeps it
    store = LocalStore(tmp_path / "store")
    started = tmp_path / "started"
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "AIDETECT_HOME": str(tmp_path / "home"),
        "AIDETECT_LEASE_TTL_SECONDS": str(ttl),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("AIDETECT_STORE_URL", None)
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(store.root), str(started)], env=env, stdout=log, stderr=log, cwd=ROOT
        )
    try:
        deadline = time.time() + 180
        while not started.exists():
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.time() < deadline, "the worker never took the lease"
            time.sleep(0.1)
        taken = read_lease(store, "retrain")
        assert taken is not None and taken.holder == started.read_text()
        assert (taken.pid, taken.host) == (worker.pid, socket.gethostname()) and taken.flow_run_id
        assert taken.expires_at - taken.renewed_at == ttl

        # alive, its heartbeat keeps the lease for longer than the TTL: nobody takes it over
        time.sleep(1.25 * ttl)
        with pytest.raises(Busy, match="already running"):
            take_lease(store, "retrain", holder="too early", ttl_seconds=ttl)
        renewed = read_lease(store, "retrain")
        assert renewed is not None and renewed.renewed_at > taken.expires_at

        os.kill(worker.pid, signal.SIGKILL)  # half-way through 'training'
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    killed_at = time.time()
    orphan = read_lease(store, "retrain")
    assert orphan is not None and orphan.pid == worker.pid  # the crash left its lease behind
    assert orphan.expires_at <= killed_at + ttl

    # the next retrain (the real flow, its body replaced) gets the lease once the TTL has passed
    while time.time() < orphan.expires_at:
        time.sleep(0.05)

    def body(plan: Any, run_id: str, held: Lease) -> dict[str, Any]:
        held.check()
        return {"lock": read_lease(store, "retrain"), "holder": held.record.holder}

    monkeypatch.setattr(flows.retrain, "_retrain", body)
    result = flows.retrain.retrain(store_url=str(store.root))
    assert result["lock"].holder == result["holder"] != orphan.holder
    assert result["lock"].pid == os.getpid() and result["lock"].flow_run_id
    assert read_lease(store, "retrain") is None  # released when the run ended
