"""The steps of the feedback loop that ``make demo`` (cli/demo.py) and bench/loop.py both take.

Labelled images as (name, label, bytes); serving's answers to them and their accuracy; the
version serving answers with; the first version, trained on the base data alone, and the
retrain on base data + feedback that follows it. The flows are imported when called: the
demo points Prefect at its own server first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

LabelledImage = tuple[str, str, bytes]  # (file name, "ai" or "real", the encoded image)


def labelled_images(source: Path) -> list[LabelledImage]:
    """(name, label, bytes) for every image under ai/ or real/ of an archive or folder."""
    from model.sources import SourceImage, iter_source

    return [(Path(i.path).name, i.label, i.data) for i in iter_source(source) if isinstance(i, SourceImage)]


def predict_all(client: httpx.Client, images: list[LabelledImage]) -> list[dict[str, Any]]:
    """Serving's answer to each image (``POST /v1/predict``), with its ``name``, ``truth`` and ``data``."""
    results = []
    for name, label, data in images:
        response = client.post("/v1/predict", files={"file": (name, data)})
        response.raise_for_status()
        results.append({**response.json(), "name": name, "truth": label, "data": data})
    return results


def accuracy(results: list[dict[str, Any]]) -> float:
    """The share of ``predict_all``'s answers whose label is the truth (0 for none)."""
    return sum(r["label"] == r["truth"] for r in results) / max(1, len(results))


def serving_version(client: httpx.Client) -> str:
    """The model version serving answers with now."""
    return str(client.get("/v1/model").json()["version"])


def wait_for_version(client: httpx.Client, version: str, timeout: float) -> str:
    """Poll until serving answers with ``version`` or ``timeout`` s have passed; the version it answers with."""
    deadline = time.monotonic() + timeout
    live = serving_version(client)
    while live != version and time.monotonic() < deadline:
        time.sleep(0.5)
        live = serving_version(client)
    return live


def train_first_version(
    architecture: str, epochs: int, max_train_images: int, reason: str = "manual"
) -> dict[str, Any]:
    """``retrain`` from scratch on the base dataset ``cifake`` alone, without augmentation.

    Augmentation is for the images a network sees end to end; the multiscale head trains on
    cached features of the images as they are (and the tiny model's three CPU epochs were too
    few for it to pay off: 84.9% clean CIFAKE test accuracy with it, 90.7% without).
    """
    from flows.retrain import retrain

    return retrain(
        datasets=["cifake"],
        architecture=architecture,
        epochs=epochs,
        max_train_images=max_train_images,
        warm_start=False,
        augment=False,
        reason=reason,
    )


def retrain_with_feedback(
    architecture: str, epochs: int, max_train_images: int, reason: str = "manual"
) -> dict[str, Any]:
    """``retrain`` on every dataset (the base data and the gathered feedback), warm-started from the
    champion, without augmentation (as ``train_first_version``)."""
    from flows.retrain import retrain

    return retrain(
        architecture=architecture, epochs=epochs, max_train_images=max_train_images, augment=False, reason=reason
    )
