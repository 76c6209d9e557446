"""The loop, measured: does feedback on a new generator fix the detector on images it never saw?

Start from a model trained on CIFAKE only (v1, promoted). Draw ``--splits`` random stratified
splits of ``newgen-dev``: ``--reports-per-class`` images of each label are reported, the rest
held out (never reported). For each split, on a copy of the store as v1 left it:

1. serving (real uvicorn) answers every reported image;
2. independent clients file feedback with the true label for every one of them, through
   ``POST /v1/feedback`` (accepted by agreement of two clients, no reviewer): a labelled sample
   of the new generator, right answers of v1 included. Two pairs of clients (127.0.0.1 + .2,
   127.0.0.3 + .4) share the images, as a client's credit is capped (``Policy.max_per_client``,
   50 images accepted by agreement);
3. ``gather-feedback`` (``misclassified_only=False``) and ``retrain`` run as flows (the gate
   decides; v2 warm-starts from v1);
4. serving hot-swaps to v2 if it was promoted, and answers the held-out images again.

Held-out accuracy as served, before (v1) and after (whatever serving answers with), per split
with mean and spread. The CIFAKE test accuracy of v1 and each v2 (from the registry) shows what
the fix cost on the old data. Prints one JSON object.

    .venv/bin/python bench/loop.py [--splits 5] [--limit-per-class 2500] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._serving import start_server  # noqa: E402
from cli.loop import (  # noqa: E402
    LabelledImage,
    accuracy,
    labelled_images,
    predict_all,
    retrain_with_feedback,
    train_first_version,
    wait_for_version,
)
from storage import configured_store  # noqa: E402


def log(message: str) -> None:
    print(f"[loop {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_fold(
    fold: int,
    base_home: Path,
    work: Path,
    feedback_images: list[LabelledImage],
    held_out: list[LabelledImage],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from aidetect.settings import get_settings
    from flows.gather import gather_feedback
    from model.imagesets import load_images
    from model.registry import Registry

    home = work / f"fold{fold}"
    shutil.copytree(base_home, home, symlinks=True)
    os.environ["AIDETECT_HOME"] = str(home)
    get_settings.cache_clear()
    store = configured_store(get_settings())
    v1 = Registry(store).alias("production")[0].version  # type: ignore[union-attr]
    env = {
        "AIDETECT_HOME": str(home),
        "AIDETECT_ALIAS_POLL_SECONDS": "1",
        "AIDETECT_FEEDBACK_BURST": "1000",  # the clients below file their reports at once
        "AIDETECT_ORT_SHARED_POOL": "true",
    }
    server = start_server("serving.app:create_app", env, home / "serving.log")
    try:
        clients = [
            httpx.Client(base_url=server.url, timeout=60, transport=httpx.HTTPTransport(local_address=address))
            for address in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
        ]
        before = predict_all(clients[0], held_out)
        seen = predict_all(clients[0], feedback_images)
        wrong = [r for r in seen if r["label"] != r["truth"]]
        for i, r in enumerate(seen):
            for client in clients[2 * (i % 2) : 2 * (i % 2) + 2]:  # each image by one pair of clients
                client.post("/v1/feedback", data={"prediction_id": r["id"], "label": r["truth"]}).raise_for_status()
        log(f"split {fold}: v1 held-out accuracy {accuracy(before):.3f}; {len(seen)} reported ({len(wrong)} wrong)")
        feedback_version = gather_feedback(retrain_after=10**9, misclassified_only=False)
        ref = f"feedback@{feedback_version}"
        taken = {split: len(load_images(store, [ref], split)) for split in ("train", "val", "test")}
        log(f"split {fold}: feedback@{feedback_version} took {sum(taken.values())} images {taken}")
        second = retrain_with_feedback(
            args.architecture, args.epochs, args.max_train_images, reason=f"bench split {fold}"
        )
        verdict = "promoted" if second["promoted"] else "rejected: " + "; ".join(second["verdict"]["reasons"])
        log(f"split {fold}: v2 {verdict}")
        live = wait_for_version(clients[0], second["version"], 120) if second["promoted"] else v1
        after = predict_all(clients[0], held_out)
        log(f"split {fold}: held-out accuracy as served {accuracy(before):.3f} -> {accuracy(after):.3f} ({live})")
        for client in clients:
            client.close()
    finally:
        server.stop()
    return {
        "fold": fold,
        "held_out_images": len(held_out),
        "feedback_images_seen": len(seen),
        "reported": len(seen),
        "v1_wrong_among_reported": len(wrong),
        "feedback_dataset": f"feedback@{feedback_version}",
        "feedback_images_by_split": taken,
        "v2": second["version"],
        "v2_promoted": second["promoted"],
        "gate_reasons": second["verdict"]["reasons"],
        "gate_notes": second["verdict"]["notes"],
        "serving_after": live,
        "held_out_accuracy": {"before": accuracy(before), "after": accuracy(after)},
        "held_out_correct": {
            "before": sum(r["label"] == r["truth"] for r in before),
            "after": sum(r["label"] == r["truth"] for r in after),
        },
        "regression_set": second["metrics"].get("regression"),
        "cifake_test_accuracy_v2": second["metrics"]["by_dataset"]["cifake"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifake", default=str(ROOT.parent / "shared/data/cifake-dev.tar.gz"))
    parser.add_argument("--newgen", default=str(ROOT.parent / "shared/data/newgen-dev.tar.gz"))
    from model.config import DEFAULT_ARCHITECTURE

    parser.add_argument("--architecture", default=DEFAULT_ARCHITECTURE)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--reports-per-class", type=int, default=40)
    parser.add_argument("--limit-per-class", type=int, default=2500, help="CIFAKE images imported per class")
    parser.add_argument("--max-train-images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in (args.cifake, args.newgen):
        if not Path(path).exists():
            sys.exit(f"bench/loop.py: {path} not found (see ../shared/data/README.md)")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from prefect.testing.utilities import prefect_test_harness

    from aidetect.settings import get_settings
    from model.sources import import_dataset

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="aidetect-loop-"))
    base_home = work / "base"
    os.environ["AIDETECT_HOME"] = str(base_home)
    os.environ.pop("AIDETECT_STORE_URL", None)
    get_settings.cache_clear()
    newgen = labelled_images(Path(args.newgen))
    labels = np.array([label for _, label, _ in newgen])
    splits = []
    for k in range(args.splits):
        rng = np.random.default_rng((args.seed, k))
        reported = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[: args.reports_per_class] for c in ("ai", "real")]
        )
        splits.append((reported, np.setdiff1d(np.arange(len(newgen)), reported)))
    with prefect_test_harness(server_startup_timeout=120):
        log(f"importing {args.cifake} ({args.limit_per_class} per class)")
        imported = import_dataset(
            configured_store(get_settings()), Path(args.cifake), "cifake", limit_per_class=args.limit_per_class
        )
        log(f"training v1 on cifake@{imported.version}")
        first = train_first_version(args.architecture, args.epochs, args.max_train_images, reason="bench v1")
        assert first["promoted"], first["verdict"]
        results = []
        for k, (reported, held) in enumerate(splits):
            results.append(run_fold(k, base_home, work, [newgen[i] for i in reported], [newgen[i] for i in held], args))
    before_each = [r["held_out_accuracy"]["before"] for r in results]
    after_each = [r["held_out_accuracy"]["after"] for r in results]

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(values)), "std": float(np.std(values)), "min": min(values), "max": max(values)}

    print(
        json.dumps(
            {
                "benchmark": "loop",
                "newgen_images": len(newgen),
                "architecture": args.architecture,
                "splits": args.splits,
                "reports_per_class": args.reports_per_class,
                "cifake_images": imported.taken,
                "epochs": args.epochs,
                "v1": first["version"],
                "cifake_test_accuracy_v1": first["metrics"]["by_dataset"]["cifake"]["accuracy"],
                "held_out_accuracy": {"v1": spread(before_each), "served_after": spread(after_each)},
                "v2_better_in": sum(a > b for a, b in zip(after_each, before_each, strict=True)),
                "promoted_splits": sum(r["v2_promoted"] for r in results),
                "per_fold": results,
                "wall_seconds": round(time.monotonic() - started, 1),
                "work_dir": str(work),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
