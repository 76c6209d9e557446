"""Variants of the serving app for bench/swap_under_load.py (``--app bench._swap_variants:NAME``).

``in_process_app``: each new session is built from the exported file and optimised in process,
on the inference thread (the behaviour before ``serving/optimized.py``): the baseline.
``sleep_app``: a swap after the first keeps the live session and only sleeps as long as a real
swap takes here before it names the new version: everything a swap does around the session
(alias polls, the bench's GET /v1/model, the release of the old model), none of its work, so
its p99 ratio is the noise floor of the measurement on this machine.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import FastAPI

import serving.app
from model.registry import AliasRecord
from serving.hotswap import LiveModel, ModelHolder

# how long a "swap" sleeps; match it to real swaps under the bench's load (about 2 s here) so the
# windows have the same length (the overlap split's length bias grows with the windows)
SLEEP_SWAP_S = float(os.environ.get("AIDETECT_BENCH_SLEEP_SWAP_S", "0.5"))


class _InProcess(ModelHolder):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs, preoptimize=False)


class _SleepSwap(ModelHolder):
    def _load(self, record: AliasRecord) -> LiveModel:
        if self.current is None:
            return super()._load(record)
        time.sleep(SLEEP_SWAP_S)
        return LiveModel(record.version, self.current.card, self.current.model, self.variant)


def in_process_app() -> FastAPI:
    serving.app.ModelHolder = _InProcess  # type: ignore[misc]
    return serving.app.create_app()


def sleep_app() -> FastAPI:
    serving.app.ModelHolder = _SleepSwap  # type: ignore[misc]
    return serving.app.create_app()
