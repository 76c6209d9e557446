"""Leases in the store (``locks/<name>.json``): one run of a flow at a time, across machines.

A lease is short (``lease_ttl_seconds``, 2 minutes by default) and renewed by a heartbeat
thread every quarter of it, each time with a put conditional on the entity tag the holder
last wrote. A holder that dies (SIGKILL, a lost machine) stops renewing, and the next run
takes the lease over once it has expired, again by entity tag, so that two takers cannot
both win. A holder whose renewal finds the lease changed (taken over, cleared) or that
cannot reach the store until its lease has expired has *lost* it: it must not go on to
write what only one run may write (register, promote), and ``Lease.check`` says so.

The lock file records who holds it (holder, flow run id, host, pid) and when it was taken,
last renewed and expires; ``aidetect lock show`` and ``aidetect lock clear`` read it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

from storage import ObjectStore
from storage.base import NotFound, PreconditionFailed, StoreError
from storage.layout import LOCKS, lock_key

Clock = Callable[[], float]


class Busy(RuntimeError):
    """Another run holds the lease."""


class LeaseLost(RuntimeError):
    """This run no longer holds its lease: another run may be doing the same work."""


class LeaseLive(RuntimeError):
    """The lease is held and renewed: clearing it needs ``force``."""


@dataclass(frozen=True)
class LeaseRecord:
    """The content of ``locks/<name>.json``. Times are Unix seconds (UTC)."""

    name: str
    holder: str
    flow_run_id: str | None
    host: str
    pid: int
    taken_at: float
    renewed_at: float
    expires_at: float

    def stale(self, now: float) -> bool:
        """Expired: its holder stopped renewing it (crashed, or cut off from the store)."""
        return self.expires_at <= now

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, name: str, data: bytes) -> LeaseRecord:
        """The record; one that cannot be read (an older format, garbage) counts as expired."""
        try:
            raw = json.loads(data)
            return cls(
                name=name,
                holder=str(raw.get("holder", "?")),
                flow_run_id=raw.get("flow_run_id"),
                host=str(raw.get("host", "?")),
                pid=int(raw.get("pid", 0)),
                taken_at=float(raw.get("taken_at", 0)),
                renewed_at=float(raw.get("renewed_at", raw.get("taken_at", 0))),
                expires_at=float(raw.get("expires_at", 0)),
            )
        except (ValueError, TypeError, AttributeError):
            return cls(name, "unreadable lock file", None, "?", 0, 0.0, 0.0, 0.0)


class Lease:
    """A lease this process holds, renewed from a daemon thread until ``stop``.

    ``lost`` turns true (for good) when a renewal finds the lease changed, or when the last
    successful renewal's expiry passes without another one succeeding (store unreachable):
    from then on another run may hold it.
    """

    def __init__(
        self,
        store: ObjectStore,
        record: LeaseRecord,
        etag: str,
        *,
        ttl_seconds: float,
        renew_every: float,
        clock: Clock = time.time,
    ):
        self.store = store
        self.record = record
        self.ttl_seconds = ttl_seconds
        self.renew_every = renew_every
        self._etag = etag
        self._clock = clock
        self._lost: str | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    @property
    def key(self) -> str:
        return lock_key(self.record.name)

    @property
    def lost(self) -> bool:
        """Whether another run may hold the lease now."""
        return self.lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        with self._mutex:
            if self._lost is None and self.record.stale(self._clock()):
                self._lost = f"not renewed since {_utc(self.record.renewed_at)}: it expired"
            return self._lost

    def check(self) -> None:
        """Raise LeaseLost unless the lease is still this run's."""
        reason = self.lost_reason
        if reason is not None:
            raise LeaseLost(f"lease {self.record.name} lost ({reason}); stopping before another run's work is undone")

    def renew(self) -> bool:
        """One renewal (a put conditional on the last entity tag); False once the lease is lost."""
        if self.lost:
            return False
        now = self._clock()
        renewed = replace(self.record, renewed_at=now, expires_at=now + self.ttl_seconds)
        try:
            etag = self.store.put(self.key, renewed.encode(), if_match=self._etag)
        except (PreconditionFailed, NotFound):  # S3 answers a conditional put on a deleted key with 404
            self._lose(f"taken by {self._current_holder()}")
            return False
        except Exception:  # unreachable, or any other failure: retried until the lease expires
            return not self.lost
        lost = self.lost  # expired while the put was in flight: lost for good all the same
        with self._mutex:
            self._etag = etag  # this run's copy either way, so that release deletes it
            if not lost:
                self.record = renewed
        return not lost

    def start(self) -> None:
        """Renew every ``renew_every`` seconds from a daemon thread until ``stop``."""
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.record.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.ttl_seconds)  # a renewal stuck on the store does not hold up the exit

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this run's (else leave it be)."""
        self.stop()
        try:
            _, current = self.store.get_with_etag(self.key)
            if current == self._etag:
                self.store.delete(self.key)
        except StoreError:  # gone or unreachable: it expires on its own
            pass

    def _heartbeat(self) -> None:
        while not self._stopping.wait(self.renew_every):
            if not self.renew():
                return

    def _lose(self, reason: str) -> None:
        with self._mutex:
            self._lost = self._lost or reason

    def _current_holder(self) -> str:
        try:
            current = read_lease(self.store, self.record.name)
        except StoreError:
            return "another run"
        return current.holder if current else "nobody (cleared)"


def take_lease(
    store: ObjectStore,
    name: str,
    *,
    holder: str,
    ttl_seconds: float,
    flow_run_id: str | None = None,
    clock: Clock = time.time,
) -> Lease:
    """Take ``locks/<name>.json`` (not renewed yet: ``Lease.start`` does that), or raise Busy.

    Taken with a create-only put; an expired lease is taken over with a put conditional on
    the expired copy's entity tag, so two runs that both find it expired cannot both win.
    """
    key = lock_key(name)
    now = clock()
    record = LeaseRecord(name, holder, flow_run_id, socket.gethostname(), os.getpid(), now, now, now + ttl_seconds)
    try:
        etag = store.put(key, record.encode(), if_none_match=True)
    except PreconditionFailed:
        try:
            data, stale_tag = store.get_with_etag(key)
        except NotFound:  # released in between: try once more
            etag = _put_or_busy(store, name, record, if_none_match=True)
        else:
            current = LeaseRecord.decode(name, data)
            if not current.stale(now):
                raise Busy(f"{name} is already running ({describe(current, now)})") from None
            etag = _put_or_busy(store, name, record, if_match=stale_tag)
    return Lease(store, record, etag, ttl_seconds=ttl_seconds, renew_every=ttl_seconds / 4, clock=clock)


@contextmanager
def lease(
    store: ObjectStore,
    name: str,
    *,
    holder: str,
    ttl_seconds: float,
    flow_run_id: str | None = None,
    clock: Clock = time.time,
) -> Iterator[Lease]:
    """Hold the lease for the duration, renewed every ``ttl_seconds / 4``; released on exit,
    also when the body raises. The body calls ``check()`` before work only one run may do."""
    held = take_lease(store, name, holder=holder, ttl_seconds=ttl_seconds, flow_run_id=flow_run_id, clock=clock)
    held.start()
    try:
        yield held
    finally:
        held.release()


def _put_or_busy(
    store: ObjectStore, name: str, record: LeaseRecord, *, if_match: str | None = None, if_none_match: bool = False
) -> str:
    try:
        return store.put(lock_key(name), record.encode(), if_match=if_match, if_none_match=if_none_match)
    except PreconditionFailed:
        raise Busy(f"{name} was taken by another run at the same moment") from None


def read_lease(store: ObjectStore, name: str) -> LeaseRecord | None:
    """The lease on ``name`` (None when free)."""
    try:
        return LeaseRecord.decode(name, store.get(lock_key(name)))
    except NotFound:
        return None


def list_leases(store: ObjectStore) -> list[LeaseRecord]:
    """Every lease in the store, by name."""
    names = [key[len(LOCKS) : -len(".json")] for key in store.list(LOCKS) if key.endswith(".json")]
    return [record for record in (read_lease(store, n) for n in names) if record is not None]


def clear_lease(store: ObjectStore, name: str, *, force: bool = False, now: float | None = None) -> LeaseRecord:
    """Delete an expired lease (a live one only with ``force``); returns what was cleared.

    A live holder cleared by force finds out at its next renewal and stops before it
    registers or promotes anything. Raises KeyError when there is no lease, LeaseLive when
    it is live and ``force`` is not given.
    """
    record = read_lease(store, name)
    if record is None:
        raise KeyError(f"no lock {name!r}")
    if not force and not record.stale(time.time() if now is None else now):
        raise LeaseLive(f"{name} is live ({describe(record, now)})")
    store.delete(lock_key(name))
    return record


def describe(record: LeaseRecord, now: float | None = None) -> str:
    """``holder, flow run, host:pid, taken <n> ago (<when>), renewed <n> ago, expires in <n>`` (or expired)."""
    now = time.time() if now is None else now
    remaining = record.expires_at - now
    expiry = f"expires in {_duration(remaining)}" if remaining > 0 else f"expired {_duration(-remaining)} ago"
    return (
        f"{record.holder}, flow run {record.flow_run_id or '-'}, {record.host}:{record.pid}, "
        f"taken {_duration(now - record.taken_at)} ago ({_utc(record.taken_at)}), "
        f"renewed {_duration(now - record.renewed_at)} ago, {expiry}"
    )


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _utc(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))
