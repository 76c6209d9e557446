"""How far from the gate's thresholds do the test suite's short training runs land?

A test that trains a model and asserts that the gate blesses (or rejects) it depends on where
a stochastic run lands. On another machine the same seed gives a different run (floating-point
order), so the margin over several seeds is what tells whether a threshold is safe.

Scenarios, each run with ``--seeds`` seeds through the real ``retrain`` flow (a temporary Prefect
API), on the test suite's CIFAKE subset (600 images per class, as ``tests/conftest.py``):

- ``retrain-gate``: ``tests/flows/test_retrain.py`` - a first model (default gate) and one
  trained on flipped labels (must be rejected as worse than the champion and below a floor);
- ``loop``: ``tests/e2e/test_loop.py`` - v1 (3 epochs, augmented) and v2, warm-started on the
  newgen-dev images v1 gets wrong, all in the train split as the test gathers them.

For every gate metric: each seed's value, the worst over seeds and its distance to the
threshold the test uses. Prints one JSON object.

    .venv/bin/python bench/test_margins.py [--seeds 5] [--scenario retrain-gate loop] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import extract_subset  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
METRICS = ("accuracy", "recall_ai", "recall_real", "ece", "mean_prediction_minus_beta")


def log(message: str) -> None:
    print(f"[margins {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _gate_metrics(result: dict[str, Any]) -> dict[str, float]:
    test = result["metrics"]["test"] if "test" in result["metrics"] else result["metrics"]
    out = {name: float(test[name]) for name in METRICS if name in test}
    out["blessed"] = float(result["verdict"]["blessed"])
    return out


def _flipped(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder / "real", dest / "ai")
    shutil.copytree(folder / "ai", dest / "real")
    return dest


def retrain_gate(seed: int, work: Path, cifake: Path, epochs: int) -> dict[str, Any]:
    from flows.retrain import retrain
    from model.sources import import_dataset
    from storage import LocalStore

    store = LocalStore(work / "store")
    import_dataset(store, cifake, "cifake")
    import_dataset(store, _flipped(cifake, work / "flipped"), "flipped")
    settings = {
        "architecture": "tiny",
        "epochs": epochs,
        "batch_size": 32,
        "augment": False,
        "reference_images": 300,
        "seed": seed,
    }
    first = retrain(datasets=["cifake"], warm_start=False, store_url=str(store.root), **settings)
    flipped = retrain(
        datasets=["flipped"], test_datasets=["cifake"], warm_start=False, store_url=str(store.root), **settings
    )
    return {"first": _gate_metrics(first), "flipped": _gate_metrics(flipped)}


def loop(seed: int, work: Path, cifake: Path, newgen: Path, epochs: int) -> dict[str, Any]:
    from flows.retrain import retrain
    from model.datasets import split_of, write_dataset_version
    from model.inference import OnnxModel
    from model.preprocess import preprocess
    from model.registry import Registry
    from model.sources import import_dataset
    from storage import LocalStore
    from storage.layout import put_image

    store = LocalStore(work / "store")
    import_dataset(store, cifake, "cifake")
    url = str(store.root)
    first = retrain(
        datasets=["cifake"],
        architecture="tiny",
        epochs=epochs + 1,
        batch_size=32,
        warm_start=False,
        seed=seed,
        store_url=url,
        gate={"max_ece": 1.0, "min_accuracy": 0.0, "min_class_recall": 0.0, "max_mean_shift": 1.0},
    )
    registry = Registry(store)
    meta = registry.metadata(first["version"])
    model = OnnxModel(registry.download(first["version"], "model.onnx", work / "v1.onnx"))
    rows = []
    for label in ("ai", "real"):
        for path in sorted((newgen / label).iterdir()):
            data = path.read_bytes()
            raw = model.predict(preprocess(data, model.image_size, model.input_fit)[None])[0]
            # served as wrong: the other label, or "uncertain" (the test reports both)
            if meta.calibration(float(raw))[0] != label:
                sha, key = put_image(store, data, path.suffix.lstrip(".").lower() or "png")
                split = split_of(sha, val_share=0.1, test_share=0.0)
                rows.append(
                    {"sha256": sha, "key": key, "label": label, "split": split, "source": "bench", "generator": ""}
                )
    write_dataset_version(store, "feedback", rows, parents=[])
    second = retrain(
        architecture="tiny",
        epochs=epochs,
        batch_size=32,
        seed=seed,
        store_url=url,
        gate={
            "max_ece": 1.0,
            "min_accuracy": 0.0,
            "min_class_recall": 0.0,
            "max_mean_shift": 1.0,
            "max_accuracy_drop": 1.0,
        },
    )
    v1, v2 = _gate_metrics(first), _gate_metrics(second)
    return {"v1": v1, "v2": v2, "wrong_on_newgen": len(rows), "v2_accuracy_drop": v1["accuracy"] - v2["accuracy"]}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model and metric: min and max over seeds."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if isinstance(values[0], dict):
            out[key] = {m: {"min": min(v[m] for v in values), "max": max(v[m] for v in values)} for m in values[0]}
        else:
            out[key] = {"min": min(values), "max": max(values)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scenario", nargs="+", default=["retrain-gate", "loop"], choices=["retrain-gate", "loop"])
    parser.add_argument("--epochs", type=int, default=2, help="the tests' epochs (the loop's v1 trains one more)")
    args = parser.parse_args()
    for name in ("cifake-dev.tar.gz", "newgen-dev.tar.gz"):
        if not (SHARED / name).is_file():
            sys.exit(f"missing {SHARED / name}: the benchmark reads ../shared/data")

    from prefect.testing.utilities import prefect_test_harness

    work = Path(tempfile.mkdtemp(prefix="margins-"))
    cifake = extract_subset(SHARED / "cifake-dev.tar.gz", work / "cifake", per_class=600)
    newgen = extract_subset(SHARED / "newgen-dev.tar.gz", work / "newgen", per_class=None)
    report: dict[str, Any] = {"seeds": args.seeds, "epochs": args.epochs, "scenarios": {}}
    try:
        with prefect_test_harness(server_startup_timeout=120):
            for scenario in args.scenario:
                runs = []
                for seed in range(args.seeds):
                    run_dir = work / f"{scenario}-{seed}"
                    started = time.perf_counter()
                    if scenario == "retrain-gate":
                        run = retrain_gate(seed, run_dir, cifake, args.epochs)
                    else:
                        run = loop(seed, run_dir, cifake, newgen, args.epochs)
                    log(f"{scenario} seed {seed} ({time.perf_counter() - started:.0f} s): {json.dumps(run)}")
                    runs.append(run)
                    shutil.rmtree(run_dir, ignore_errors=True)
                report["scenarios"][scenario] = {"runs": runs, "range": summarise(runs)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
