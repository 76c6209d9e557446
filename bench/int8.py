"""INT8 vs FP32 for the default detector: latency of one 448-px mosaic and accuracy, same run.

A v1 is trained on CIFAKE (``--limit-per-class`` per class; the multiscale head on cached
frozen-backbone features), then v2 on v1 plus ``--reports-per-class`` newgen-dev images per class
(the feedback expert), as the loop does. v2 is exported and quantised exactly as the retrain flow
does (``model.export``: optimized FP32 file, static QDQ INT8 calibrated on 32 images spread over
CIFAKE validation and the reports, input stage in float32). A child process without TensorFlow
(it slows onnxruntime down) then scores both files on the CIFAKE test split and on the newgen
images nobody reported, and times one image (batch of one, 2 threads), FP32 and INT8 interleaved
over ``--rounds`` rounds: medians and the speed-up. Prints one JSON object.

    .venv/bin/python bench/int8.py [--limit-per-class 300] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def log(message: str) -> None:
    print(f"[int8 {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build(work: Path, args: argparse.Namespace) -> None:
    """Train v1 and v2, export and quantise v2, write the evaluation sets (TensorFlow here)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import hashlib

    from model.config import DEFAULT_ARCHITECTURE, get_config
    from model.export import calibration_sample, export_onnx, optimize_onnx, quantize_int8
    from model.imagesets import ImageSet, load_images
    from model.preprocess import preprocess
    from model.sources import SourceImage, import_dataset, iter_source
    from model.train import TrainConfig, train
    from storage import LocalStore

    config = get_config(DEFAULT_ARCHITECTURE)
    store = LocalStore(work / "store")
    import_dataset(store, SHARED / "cifake-dev.tar.gz", "cifake", limit_per_class=args.limit_per_class)
    splits = {split: load_images(store, ["cifake"], split) for split in ("train", "val", "test")}
    val = splits["val"].decode(config.image_size, config.input_fit)
    settings = TrainConfig(epochs=10, batch_size=64, patience=10)
    log(f"v1 on {len(splits['train'])} CIFAKE images")
    v1 = train(config, splits["train"], val, settings, store=store, log=lambda _: None).model
    newgen = [i for i in iter_source(SHARED / "newgen-dev.tar.gz") if isinstance(i, SourceImage)]
    y = np.array([1.0 if i.label == "ai" else 0.0 for i in newgen], np.float32)
    rng = np.random.default_rng(args.seed)
    reported = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: args.reports_per_class] for c in (0, 1)])
    held = np.setdiff1d(np.arange(len(y)), reported)
    base = splits["train"]
    both = ImageSet(
        base.images + [newgen[i].data for i in reported],
        np.concatenate([base.y, y[reported]]),
        base.sha256 + [hashlib.sha256(newgen[i].data).hexdigest() for i in reported],
        base.dataset + ["feedback"] * len(reported),
        base.generator + [""] * len(reported),
    )
    log(f"v2 on {len(both)} images ({len(reported)} reported newgen)")
    v2 = train(config, both, val, settings, initial_model=v1, store=store, log=lambda _: None).model
    fp32 = optimize_onnx(export_onnx(v2, work / "raw.onnx", input_fit=config.input_fit), work / "model.onnx")
    # Calibrated as flows.validate does: images spread over the validation set's datasets. The
    # flow's validation set holds the feedback's val share; here the reported images stand in.
    reported_x = np.stack([preprocess(newgen[i].data, config.image_size, config.input_fit) for i in reported])
    pool_x = np.concatenate([val.x, reported_x])
    pool_datasets = list(val.dataset) + ["feedback"] * len(reported)
    pool_y = np.concatenate([val.y, y[reported]])
    spread = calibration_sample(pool_datasets, pool_y, 32)
    quantize_int8(fp32, work / "model.int8.onnx", pool_x[spread])
    test = splits["test"].decode(config.image_size, config.input_fit)
    newgen_x = np.stack([preprocess(newgen[i].data, config.image_size, config.input_fit) for i in held])
    np.savez(work / "eval.npz", cifake_x=test.x, cifake_y=test.y, newgen_x=newgen_x, newgen_y=y[held])


def measure(work: Path, rounds: int) -> dict[str, Any]:
    """Accuracy and latency of both files (no TensorFlow in this process)."""
    from model.inference import OnnxModel

    data = np.load(work / "eval.npz")
    models = {"fp32": OnnxModel(work / "model.onnx", threads=2), "int8": OnnxModel(work / "model.int8.onnx", threads=2)}
    out: dict[str, Any] = {}
    for name, model in models.items():
        scores = {}
        for split in ("cifake", "newgen"):
            p, _ = model.predict(data[f"{split}_x"])
            scores[split] = float(np.mean((p >= 0.5) == (data[f"{split}_y"] >= 0.5)))
        out[name] = {"accuracy_cifake_test": scores["cifake"], "accuracy_newgen_held_out": scores["newgen"]}
    one = data["newgen_x"][:1]
    for model in models.values():
        model.predict(one)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            started = time.perf_counter()
            for _ in range(5):
                model.predict(one)
            times[name].append((time.perf_counter() - started) / 5 * 1000)
    for name in models:
        out[name]["ms_per_image_median"] = round(statistics.median(times[name]), 2)
        out[name]["ms_per_image_runs"] = [round(t, 1) for t in times[name]]
    out["speedup"] = round(out["fp32"]["ms_per_image_median"] / out["int8"]["ms_per_image_median"], 3)
    for split in ("cifake_test", "newgen_held_out"):
        key = f"accuracy_{split}"
        out[f"accuracy_change_{split}"] = out["int8"][key] - out["fp32"][key]
    out["images"] = {"cifake_test": int(len(data["cifake_y"])), "newgen_held_out": int(len(data["newgen_y"]))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit-per-class", type=int, default=300)
    parser.add_argument("--reports-per-class", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="build into this folder and keep it (the ONNX files, the evaluation sets)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child: a folder build() filled
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.rounds)))
        return
    for name in ("cifake-dev.tar.gz", "newgen-dev.tar.gz"):
        if not (SHARED / name).is_file():
            sys.exit(f"missing {SHARED / name}: the benchmark reads ../shared/data")
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        build(work, args)
        log(f"built in {time.perf_counter() - started:.0f} s; measuring without TensorFlow")
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(work), "--rounds", str(args.rounds)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("measure", "keep")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
