"""PNG figures for training and evaluation reports.

matplotlib is imported inside each function (serving and the light flows never pay for it), and
figures are drawn on the Agg canvas directly rather than through pyplot, so no global backend is
switched and nothing is left open in pyplot's figure registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.evaluation import expected_calibration_error, reliability_table, roc_auc, roc_curve


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Training loss (left axis) and validation accuracy / F1 (right axis) per epoch."""
    fig = _figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title("Training curves")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    # Rows may lack a metric (e.g. an epoch without validation): plot what each row has.
    epochs = [float(row.get("epoch", i + 1)) for i, row in enumerate(history)]

    def series(key: str) -> tuple[list[float], list[float]]:
        pairs = [(e, float(row[key])) for e, row in zip(epochs, history, strict=True) if row.get(key) is not None]
        return [e for e, _ in pairs], [v for _, v in pairs]

    lines = []
    xs, ys = series("loss")
    lines += ax.plot(xs, ys, marker="o", color="tab:red", label="loss")
    right = ax.twinx()
    right.set_ylabel("validation metric")
    for key, color, label in (("val_accuracy", "tab:blue", "val accuracy"), ("val_f1", "tab:green", "val F1")):
        xs, ys = series(key)
        lines += right.plot(xs, ys, marker="s", color=color, label=label)
    if not history:
        ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_confusion_matrix(confusion: dict[str, int], path: Path) -> Path:
    """2x2 counts: rows the true class, columns the predicted class, real first."""
    matrix = np.array(
        [[confusion.get("tn", 0), confusion.get("fp", 0)], [confusion.get("fn", 0), confusion.get("tp", 0)]],
        dtype=np.int64,
    )
    fig = _figure(4.8, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    classes = ["real", "ai"]
    ax.set_xticks([0, 1], classes)
    ax.set_yticks([0, 1], classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (n = {int(matrix.sum())})")
    half = matrix.max() / 2
    for i in range(2):
        for j in range(2):
            # White on dark cells, black on light ones, so every count stays legible.
            ax.text(
                j, i, str(matrix[i, j]), ha="center", va="center", color="white" if matrix[i, j] > half else "black"
            )
    return _save(fig, path)


def plot_roc(
    y_true: Any,
    p_ai: Any,
    path: Path,
    label: str = "model",
    others: dict[str, tuple[Any, Any]] | None = None,
) -> Path:
    """ROC curves on shared axes: this model and each of ``others`` ({name: (y_true, p_ai)}), AUC in the legend."""
    fig = _figure(5.5, 5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    curves = [(label, y_true, p_ai)] + [(name, y, p) for name, (y, p) in (others or {}).items()]
    for name, y, p in curves:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, linewidth=2, label=f"{name} (AUC = {roc_auc(y, p):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (real called ai)")
    ax.set_ylabel("true positive rate (ai caught)")
    ax.set_title("ROC curve")
    ax.legend(loc="lower right")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_reliability(y_true: Any, p_ai: Any, path: Path, bins: int = 10) -> Path:
    """Reliability diagram: share of ai per P(ai) bin against the mean P(ai), with the diagonal, and counts below."""
    rows = reliability_table(y_true, p_ai, bins=bins)
    # The same ECE (default bins) that evaluate_scores reports, so the figure and the numbers agree.
    ece = expected_calibration_error(y_true, p_ai)
    fig = _figure(5.5, 6)
    ax = fig.add_axes((0.14, 0.36, 0.8, 0.56))
    hist = fig.add_axes((0.14, 0.08, 0.8, 0.18), sharex=ax)
    width = 1.0 / bins
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.bar(
        [r["lower"] for r in rows],
        [r["fraction_ai"] for r in rows],
        width=width,
        align="edge",
        alpha=0.35,
        edgecolor="tab:blue",
        label="share of ai in bin",
    )
    ax.plot(
        [r["mean_predicted"] for r in rows],
        [r["fraction_ai"] for r in rows],
        marker="o",
        color="tab:blue",
        label="model",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)  # headroom so a marker at 1.0 is not clipped
    ax.set_ylabel("fraction actually ai")
    ax.tick_params(labelbottom=False)  # the counts panel below carries the shared x axis
    ax.set_title(f"Reliability diagram (ECE = {ece:.3f})")
    ax.legend(loc="upper left")
    ax.grid(True, alpha=0.3)
    hist.bar([r["lower"] for r in rows], [r["count"] for r in rows], width=width, align="edge", color="tab:grey")
    hist.set_xlabel("predicted P(ai)")
    hist.set_ylabel("images")
    # tight_layout does not manage hand-placed axes; save directly.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def evaluation_plots(
    y_true: Any,
    p_ai: Any,
    metrics: dict[str, Any],
    out_dir: Path,
    label: str = "model",
    others: dict[str, tuple[Any, Any]] | None = None,
) -> dict[str, Path]:
    """The evaluation's pictures (confusion matrix, ROC, reliability) in ``out_dir``, by file name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "confusion_matrix.png": plot_confusion_matrix(metrics["confusion"], out_dir / "confusion_matrix.png"),
        "roc.png": plot_roc(y_true, p_ai, out_dir / "roc.png", label=label, others=others),
        "reliability.png": plot_reliability(y_true, p_ai, out_dir / "reliability.png"),
    }


def plot_drift(
    reference_p: Any, current_p: Any, severity: dict[str, float], drifted: dict[str, bool], path: Path
) -> Path:
    """monitor-drift's picture: P(ai) in the window against the reference (left), and each part's
    score on the scale where its threshold is 1 and drift is above it (right)."""
    fig = _figure(9, 3.8)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    bins = np.linspace(0, 1, 21)
    for values, label, color in ((reference_p, "reference", "tab:grey"), (current_p, "window", "tab:blue")):
        values = np.asarray(values, dtype=np.float64)
        left.hist(values, bins=bins, density=True, alpha=0.5, color=color, label=f"{label} (n = {len(values)})")
    left.set_xlim(0, 1)
    left.set_xlabel("P(ai)")
    left.set_ylabel("density")
    left.set_title("Predictions: window against reference")
    left.legend(loc="upper center")
    parts = list(severity)
    colors = ["tab:red" if drifted.get(part) else "tab:green" for part in parts]
    right.barh(parts, [severity[part] for part in parts], color=colors)
    right.axvline(1.0, color="black", linestyle="--")
    right.set_xscale("symlog", linthresh=1.0)  # a p-value of 1e-100 is ~70 thresholds: keep both on the page
    right.set_xlabel("score / threshold (drift above 1)")
    right.set_title("Drift by part (red: drifted)")
    right.invert_yaxis()
    right.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)
