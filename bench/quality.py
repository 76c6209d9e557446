"""Detection quality: train a named configuration on CIFAKE, evaluate it on the test split.

The baseline, trained in the same run on the same data and budget: for a network trained end
to end, the same backbone with a pooled head instead of the Swin stages (``--baseline-head
pool``), so the numbers show what the Swin head adds; for the multiscale detector (the default:
a head on frozen pretrained features), the same detector without its noise-residual stream.
Reports the full evaluation (accuracy, F1, AUC, AP, ECE after temperature scaling, per-class
recall, robustness tiers). The multiscale detector is scored as serving scores it (mosaic
input, tiles averaged). ``--limit-per-class`` is the budget: ``make demo`` imports 4,000 per
class. For orientation: the CIFAKE paper's CNN reached 92.98% on the full test set. Prints one
JSON object.

    .venv/bin/python bench/quality.py [--architecture effnet-lite0-multiscale] [--limit-per-class 4000] [--epochs 10]
    .venv/bin/python bench/quality.py --architecture tiny --epochs 5 --max-train-images 30000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifake-dev.tar.gz"


def _scorer(model: Any, config: Any, store: Any, log: Any) -> Any:
    """(pixels, keys) -> P(ai) per image, as the exported graph computes it.

    The multiscale detector: its tiles' features (each distinct tile once, in memory) through
    the head, averaged per image (``model.multiscale``, the code its validation uses), with
    the feature cache training filled (validation's features are not computed again).
    """
    import numpy as np

    from model.train import predict_scores

    if config.head != "multiscale":
        return lambda x, keys: predict_scores(model, x)
    from model.architectures import HEAD
    from model.imagesets import ArrayData
    from model.multiscale import FeatureCache, extractor_id, image_scores, tile_features

    cache = FeatureCache(store, extractor_id(model, config))

    def score(x: Any, keys: list[str]) -> Any:
        data = ArrayData(x, np.zeros(len(x), np.float32), list(keys), [""] * len(x), [""] * len(x))
        return image_scores(model.get_layer(HEAD), tile_features(model, config, data, cache, log=log))

    return score


def run(config: Any, store: Any, args: argparse.Namespace) -> dict[str, Any]:
    from model.calibration import apply_temperature, fit_temperature
    from model.evaluation import evaluate_scores
    from model.imagesets import load_images
    from model.metrics import binary_metrics
    from model.robustness import TIERS, tier_pixels
    from model.train import TrainConfig, train

    train_set = load_images(store, ["cifake"], "train", limit=args.max_train_images)
    val = load_images(store, ["cifake"], "val").decode(config.image_size, config.input_fit)
    test = load_images(store, ["cifake"], "test", limit=args.max_test_images)
    settings = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        augment={} if args.augment else None,
        patience=args.epochs,
        workers=os.cpu_count() or 1,
    )
    started = time.perf_counter()
    name = f"{config.name}/{config.head}" + ("" if config.residual_stream else "/rgb-only")

    def log(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    result = train(config, train_set, val, settings, store=store, log=log)
    seconds = time.perf_counter() - started
    score = _scorer(result.model, config, store, log)
    temperature = fit_temperature(val.y, score(val.x, val.sha256))
    tiers = {
        tier: apply_temperature(
            score(
                tier_pixels(test.images, config.image_size, tier, fit=config.input_fit),
                [f"{tier}:{sha}" for sha in test.sha256],  # the feature cache's keys: one per tier
            ),
            temperature,
        )
        for tier in TIERS
    }
    metrics = evaluate_scores(test.y, tiers["clean"], beta=result.beta)
    metrics.pop("slices", None)
    return {
        "architecture": config.name,
        "head": config.head,
        "residual_stream": config.residual_stream,
        "image_size": config.image_size,
        "parameters": int(result.model.count_params()),
        "train_images": len(train_set),
        "test_images": len(test),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "train_seconds": round(seconds, 1),
        "temperature": round(float(temperature), 3),
        "test": metrics,
        "robustness_accuracy": {tier: binary_metrics(test.y, p)["accuracy"] for tier, p in tiers.items()},
        "history": result.history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from model.config import DEFAULT_ARCHITECTURE

    parser.add_argument("--architecture", default=DEFAULT_ARCHITECTURE)
    parser.add_argument("--limit-per-class", type=int, default=None, help="CIFAKE images imported per class")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--max-test-images", type=int, default=None)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument(
        "--baseline-head",
        default="pool",
        help="'pool', or 'none' to skip the baseline (the multiscale detector's baseline drops its residual stream)",
    )
    args = parser.parse_args()
    if not Path(args.data).exists():
        raise SystemExit(f"no dataset at {args.data}: pass --data (a folder or .tar.gz laid out as ai/ and real/)")

    from model.config import get_config
    from model.sources import import_dataset
    from storage import LocalStore

    config = get_config(args.architecture, **({"image_size": args.image_size} if args.image_size else {}))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store")
        report = import_dataset(store, Path(args.data), "cifake", limit_per_class=args.limit_per_class)
        runs = [run(config, store, args)]
        if args.baseline_head != "none" and config.head == "multiscale":
            runs.append(run(dataclasses.replace(config, residual_stream=False), store, args))
        elif args.baseline_head != "none" and args.baseline_head != config.head:
            runs.append(run(dataclasses.replace(config, head=args.baseline_head), store, args))
    print(
        json.dumps(
            {
                "benchmark": "quality",
                "data": args.data,
                "dataset_images": report.taken,
                "augment": args.augment,
                "epochs": args.epochs,
                "limit_per_class": args.limit_per_class,
                "wall_seconds": round(time.perf_counter() - started, 1),
                "reference": {"CIFAKE paper CNN accuracy": 0.9298},
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
