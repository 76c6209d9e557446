"""Replica folders on a volume shared by all replicas: a dead replica's unsent data is adopted.

Each replica keeps data not yet in the store on local disk: the prediction journal, the
prediction-log spool and the feedback outbox. With ``AIDETECT_REPLICAS_DIR`` set (a volume all
replicas mount), replica ``<id>`` keeps them under ``<dir>/<id>/`` and holds an exclusive
``flock`` on ``<dir>/<id>/.alive`` for its lifetime; the kernel frees it when the process dies
(SIGKILL too), and flock works across containers of one host sharing the volume. Now and then
each replica looks at its siblings: a folder whose lock it can take belongs to a dead replica,
and while holding that lock it adopts the folder: the journal's records are logged again through
this replica's prediction log (durable in its spool before the segments go), spool Parquet files
and outbox entries are moved into this replica's folders (renames, fsynced), then the folder is
removed. The lock decides between two live replicas adopting at once. A crash half-way through
an adoption leaves the rest for the next adopter: a record logged twice is kept once by
``storage.predictions.read_window``, a report sent twice lands once (create-only puts).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path

from aidetect.settings import check_replica_id
from serving.journal import fsync_dir, read_segment
from serving.predlog import PredictionLog

log = logging.getLogger("aidetect.serving")

ALIVE = ".alive"
JOURNAL = Path("journal", "predictions")
SPOOL = Path("spool", "predictions")
OUTBOX = Path("outbox", "feedback")


class ReplicaFolderBusy(RuntimeError):
    """Another live process holds this replica id's folder."""


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def try_lock(folder: Path) -> int | None:
    """An exclusive flock on ``folder/.alive`` (created if missing), or None if a live process holds it
    or the folder went (adopted meanwhile). The returned descriptor holds the lock until closed."""
    path = folder / ALIVE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not _same_file(fd, path):  # an adopter removed it between our open and our lock
        os.close(fd)
        return None
    return fd


def _move(source: Path, target_dir: Path) -> bool:
    """Rename ``source`` into ``target_dir`` (same volume); an entry of that name there already wins."""
    target = target_dir / source.name
    if target.exists():
        source.unlink(missing_ok=True)
        return False
    source.replace(target)
    return True


class ReplicaFolder:
    """This replica's folder under the shared ``root``, locked while the process lives."""

    def __init__(self, root: Path, replica_id: str, fd: int):
        self.root = root
        self.replica_id = replica_id
        self.folder = root / replica_id
        self._fd: int | None = fd
        self.adopted_folders = 0

    @classmethod
    def claim(cls, root: Path, replica_id: str, wait_seconds: float = 30.0) -> ReplicaFolder:
        """Create and lock ``root/<replica_id>``; waits for an adoption of it in progress (a replica
        restarted in place while a sibling adopts what it left), raises ``ReplicaFolderBusy`` if a
        live process keeps it (two replicas with one id) and ``InvalidReplicaId`` for an unsafe id."""
        check_replica_id(replica_id)
        folder = root / replica_id
        deadline = time.monotonic() + wait_seconds
        while True:
            folder.mkdir(parents=True, exist_ok=True)
            fd = try_lock(folder)
            if fd is not None:
                break
            if time.monotonic() > deadline:
                raise ReplicaFolderBusy(
                    f"{folder / ALIVE} is locked by another live process: two replicas with the id {replica_id!r}? "
                    "(the id is AIDETECT_REPLICA_ID, else the hostname)"
                )
            time.sleep(0.1)
        fsync_dir(folder)
        fsync_dir(root)
        return cls(root, replica_id, fd)

    @property
    def journal_dir(self) -> Path:
        return self.folder / JOURNAL

    @property
    def spool_dir(self) -> Path:
        return self.folder / SPOOL

    @property
    def outbox_dir(self) -> Path:
        return self.folder / OUTBOX

    def release(self) -> None:
        """Give up the lock (at shutdown); what is left here is adopted by a sibling unless we come back."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def siblings(self) -> list[Path]:
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        return [
            p for p in entries if p.name != self.replica_id and _safe_name(p.name) and p.is_dir() and not p.is_symlink()
        ]

    def adopt_dead(self, predlog: PredictionLog | None) -> int:
        """Adopt every sibling folder whose lock can be taken (its replica is dead); returns folders adopted."""
        adopted = 0
        for sibling in self.siblings():
            fd = try_lock(sibling)
            if fd is None:
                continue  # alive, or adopted by another replica just now
            try:
                if self._adopt(sibling, predlog):
                    adopted += 1
            finally:
                os.close(fd)
        self.adopted_folders += adopted
        return adopted

    def _adopt(self, sibling: Path, predlog: PredictionLog | None) -> bool:
        segments = sorted((sibling / JOURNAL).glob("*.jsonl"))
        if segments and predlog is None:
            log.warning("replica %s: journal left in place (this replica has no prediction log)", sibling.name)
            return False
        records = [record for segment in segments for record in read_segment(segment)]
        if records and predlog is not None:
            predlog.log_again(records)  # durable in our spool when this returns (raises OSError otherwise)
        spooled = self._move_all(sibling / SPOOL, self.spool_dir, "*.parquet")
        spooled += self._move_all(sibling / SPOOL / "bad", self.spool_dir / "bad", "*")
        reports = 0
        for entry in sorted((sibling / OUTBOX).glob("*.json")):  # the image first: the JSON is the commit point
            image = entry.with_suffix(".img")
            self.outbox_dir.mkdir(parents=True, exist_ok=True)
            if image.exists():
                _move(image, self.outbox_dir)
            reports += _move(entry, self.outbox_dir)
        for folder in (self.spool_dir, self.spool_dir / "bad", self.outbox_dir):
            if folder.is_dir():
                fsync_dir(folder)
        for child in sibling.iterdir():  # what is left: sent segments, .part files, empty folders
            if child.name == ALIVE:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink(missing_ok=True)
        (sibling / ALIVE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a replica of that id came back meanwhile: its folder stays
            sibling.rmdir()
        fsync_dir(self.root)
        log.warning(
            "replica %s adopted dead replica %s: %d journaled prediction(s), %d spooled file(s), %d feedback report(s)",
            self.replica_id,
            sibling.name,
            len(records),
            spooled,
            reports,
        )
        return True

    @staticmethod
    def _move_all(source: Path, target: Path, pattern: str) -> int:
        files = [p for p in sorted(source.glob(pattern)) if p.is_file() and not p.name.endswith(".part")]
        if not files:
            return 0
        target.mkdir(parents=True, exist_ok=True)
        return sum(_move(path, target) for path in files)


def _safe_name(name: str) -> bool:
    try:
        check_replica_id(name)
    except ValueError:
        return False
    return True
