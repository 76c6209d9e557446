"""Background clients for load tests and benchmarks (tests/deploy/test_rollout.py, bench/compose_rollout.py).

``ClientThreads`` owns the threads and their shutdown; what each client sends and records is
the subclass's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Self


class ClientThreads:
    """Client threads that run while a ``with`` block does.

    Entering starts every thread; leaving sets ``done`` (the clients' signal to return) and
    waits up to 60 s for each. ``lock`` guards what the clients record.
    """

    def __init__(self, *clients: Callable[[], None]) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=client, daemon=True) for client in clients]

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(60)
