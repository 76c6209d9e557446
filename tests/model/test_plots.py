"""Each plot writes a real PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from model.plots import plot_confusion_matrix, plot_drift, plot_reliability, plot_roc, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, expected: Path) -> None:
    assert path == expected
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000  # a blank canvas is smaller than a figure with axes, text and lines


def scores(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)


def test_drift_picture(tmp_path: Path) -> None:
    _, reference = scores(1)
    _, window = scores(2, 50)
    severity = {"image_stats": 140.0, "embedding": 0.4, "prediction": 1.5}  # symlog: 140 and 0.4 on one axis
    target = tmp_path / "drift.png"
    drifted = {"image_stats": True, "embedding": False, "prediction": True}
    assert_png(plot_drift(reference, window, severity, drifted, target), target)
    assert Image.open(target).size == (900, 380)


def test_training_curves(tmp_path: Path) -> None:
    history = [
        {"epoch": 1, "loss": 0.69, "val_accuracy": 0.6, "val_f1": 0.55},
        {"epoch": 2, "loss": 0.5, "val_accuracy": 0.75, "val_f1": 0.72},
        {"epoch": 3, "loss": 0.4, "val_accuracy": 0.8, "val_f1": 0.79},
    ]
    target = tmp_path / "nested" / "curves.png"
    assert_png(plot_training_curves(history, target), target)
    empty = tmp_path / "empty.png"
    assert_png(plot_training_curves([], empty), empty)


def test_confusion_matrix(tmp_path: Path) -> None:
    target = tmp_path / "confusion.png"
    assert_png(plot_confusion_matrix({"tp": 40, "fp": 5, "fn": 10, "tn": 45}, target), target)


def test_roc_with_a_champion(tmp_path: Path) -> None:
    y, p = scores(0)
    y2, p2 = scores(1)
    target = tmp_path / "roc.png"
    assert_png(plot_roc(y, p, target, label="challenger", others={"champion": (y2, p2)}), target)


def test_reliability(tmp_path: Path) -> None:
    y, p = scores(2)
    target = tmp_path / "reliability.png"
    assert_png(plot_reliability(y, p, target, bins=10), target)


def test_importing_is_light() -> None:
    # Serving imports calibration, flows import plots: none of these may pull in heavy packages at import time.
    code = (
        "import sys, model.plots, model.calibration, model.evaluation; "
        "print(sorted(m for m in ('matplotlib', 'scipy', 'sklearn', 'tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plots_do_not_touch_pyplot(tmp_path: Path) -> None:
    # Figures are built on the Agg canvas directly, so callers' pyplot state (open figures, backend) is untouched.
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_confusion_matrix({"tp": 1, "fp": 2, "fn": 3, "tn": 4}, tmp_path / "c.png")
    assert plt.get_fignums() == before
