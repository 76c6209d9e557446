"""Drift of the prediction log against a model version's reference, measured with Evidently.

A model version carries two files for this: ``reference.parquet``, one row per validation image
with the prediction log's columns (image statistics, ``probability``, ``raw_score``, ``label``,
``embedding``), computed exactly as serving computes them; and ``drift_calibration.json``, the
thresholds below and the false-alarm rate they were measured to give.

Three parts are compared, each by Evidently (one report holds them all):

- ``image_stats``: ``width`` ... ``jpeg_quality`` by Kolmogorov-Smirnov and ``format`` by
  chi-square, in a ``DataDriftPreset``. Score: the smallest p-value.
- ``embedding``: ``EmbeddingsDrift`` with the MMD method, on the first ``PCA_COMPONENTS``
  principal components of the embedding (fitted on the reference). Score: MMD²ᵤ. Its spread
  under no drift shrinks as ``1/m + 1/n`` for windows of m and n rows, so the calibrated
  threshold is stored for ``1/m + 1/n = 1`` and scaled to each comparison's row counts.
- ``prediction``: ``ValueDrift`` of ``probability`` (the calibrated P(ai)), Kolmogorov-Smirnov.
  Score: the p-value.

Rule: drift is detected when any part crosses its threshold (a p-value below it, the MMD above
it). ``calibrate`` gives each part a third of the target false-alarm rate (1% by default) and
sets the thresholds on windows drawn from the reference itself, then measures the rule's
false-alarm rate on reference windows it did not use to set them; both go in the calibration
file. Windows over ``MAX_ROWS`` rows are sampled down (seeded): the report stays quick, and a busy
day's harmless, tiny shifts do not become significant by sheer volume.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model.calibration import Calibration
from model.features import FEATURE_NAMES, image_statistics
from model.preprocess import InvalidImage, decode_image, to_model_input
from storage.predictions import REFERENCE_SCHEMA

DEFAULT_CALIBRATION = Calibration()
REFERENCE_FILE = "reference.parquet"
DRIFT_CALIBRATION_FILE = "drift_calibration.json"

NUMERIC_STATS: tuple[str, ...] = FEATURE_NAMES
CATEGORICAL_STATS: tuple[str, ...] = ("format",)
PREDICTION = "probability"
EMBEDDING = "embedding"
PARTS = ("image_stats", "embedding", "prediction")

PCA_COMPONENTS = 20
MAX_ROWS = 1000  # per side of one comparison
MIN_ROWS = 10  # per side: fewer cannot be compared
MIN_REFERENCE_ROWS = 100  # calibration splits the reference four ways
CALIBRATION_WINDOW = (400, 200)  # (reference, current) rows of a calibration split, at most
TAIL_FACTOR = 10  # thresholds are read where no-drift scores are this many times likelier than the target
BATCH = 256  # images decoded and scored at a time when building a reference

# --- reference --------------------------------------------------------------------------------


def reference_rows(
    onnx_path: Path | str, images: Sequence[bytes], calibration: Calibration = DEFAULT_CALIBRATION
) -> pd.DataFrame:
    """One row per image, with the prediction log's columns computed as serving computes them.

    Images that serving would refuse (``InvalidImage``) are left out, as they never reach the log.
    """
    from model.inference import OnnxModel

    model = OnnxModel(onnx_path, tile_shortcut=True)  # a thumbnail scored as one tile: the same numbers
    rows: list[dict[str, Any]] = []
    embeddings: list[np.ndarray] = []
    for start in range(0, len(images), BATCH):
        chunk_rows, pixels = [], []
        for data in images[start : start + BATCH]:
            try:
                image = decode_image(data)
            except InvalidImage:
                continue
            chunk_rows.append({**image_statistics(image, data), "bytes": len(data)})
            pixels.append(to_model_input(image, model.image_size, model.input_fit))
        if not pixels:
            continue
        raw, embedding = model.predict(np.stack(pixels))
        for row, score in zip(chunk_rows, raw, strict=True):
            label, p = calibration(float(score))
            row.update(probability=p, raw_score=float(score), label=label)
        rows.extend(chunk_rows)
        embeddings.extend(embedding.astype(np.float16))
    return _arrow(rows, embeddings).to_pandas()


def _arrow(rows: list[dict[str, Any]], embeddings: list[np.ndarray]) -> pa.Table:
    columns = {name: [row.get(name) for row in rows] for name in REFERENCE_SCHEMA.names if name != EMBEDDING}
    columns[EMBEDDING] = [e.tolist() for e in embeddings]
    return pa.table(columns, schema=REFERENCE_SCHEMA)


def reference_parquet(reference: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    table = pa.Table.from_pandas(reference[REFERENCE_SCHEMA.names], preserve_index=False)
    pq.write_table(table.cast(REFERENCE_SCHEMA), buffer, compression="zstd")
    return buffer.getvalue()


def read_reference(data: bytes) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(data)).to_pandas()


def build_reference_files(
    onnx_path: Path | str, images: Sequence[bytes], calibration: Calibration = DEFAULT_CALIBRATION
) -> dict[str, bytes]:
    """``{REFERENCE_FILE: parquet, DRIFT_CALIBRATION_FILE: json}`` for a model version's files."""
    reference = reference_rows(onnx_path, images, calibration)
    return {
        REFERENCE_FILE: reference_parquet(reference),
        DRIFT_CALIBRATION_FILE: json.dumps(calibrate(reference), indent=2).encode(),
    }


# --- the compared columns ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    """The compared values of a window: statistics and probability by column, the embedding's components."""

    columns: dict[str, np.ndarray]
    components: np.ndarray

    def take(self, rows: np.ndarray) -> _Prepared:
        return _Prepared({name: values[rows] for name, values in self.columns.items()}, self.components[rows])

    def values(self, name: str) -> np.ndarray:
        """The column without its missing values (Evidently drops them too)."""
        values = self.columns[name]
        return values[pd.notna(values)]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns)

    def __len__(self) -> int:
        return len(self.components)


def _embedding_matrix(frame: pd.DataFrame) -> np.ndarray:
    values = frame[EMBEDDING].to_numpy()
    if len(values) == 0:
        return np.zeros((0, 0), np.float32)
    try:
        return np.stack([np.asarray(v, dtype=np.float32) for v in values])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"embeddings are missing or of different lengths: {exc}") from None


def _projection(reference: pd.DataFrame) -> Any:
    """PCA of the reference embedding (seeded: the same reference always gives the same projection)."""
    from sklearn.decomposition import PCA

    matrix = _embedding_matrix(reference)
    components = max(1, min(PCA_COMPONENTS, matrix.shape[1], matrix.shape[0] - 1))
    return PCA(n_components=components, random_state=0).fit(matrix)


def _prepare(frame: pd.DataFrame, projection: Any) -> _Prepared:
    columns = {name: pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64) for name in NUMERIC_STATS}
    columns.update({name: frame[name].to_numpy(object) for name in CATEGORICAL_STATS})
    columns[PREDICTION] = frame[PREDICTION].to_numpy(np.float64)
    return _Prepared(columns, projection.transform(_embedding_matrix(frame)).astype(np.float64))


def _testable(reference: _Prepared, current: _Prepared) -> list[str]:
    """The statistics with values on both sides (``jpeg_quality`` has none in a window of PNGs)."""
    return [
        name
        for name in (*NUMERIC_STATS, *CATEGORICAL_STATS)
        if len(reference.values(name)) and len(current.values(name))
    ]


def _component_names(count: int) -> list[str]:
    return [f"embedding_pc{i + 1:02d}" for i in range(count)]


def _mmd_scale(reference_rows: int, current_rows: int) -> float:
    return 1.0 / reference_rows + 1.0 / current_rows


# --- scores, as Evidently computes them -------------------------------------------------------


@dataclass(frozen=True)
class _Scores:
    stats_p: dict[str, float]
    prediction_p: float
    mmd: float
    reference_rows: int
    current_rows: int

    @property
    def stats_min_p(self) -> float:
        return min(self.stats_p.values(), default=1.0)

    @property
    def mmd_scaled(self) -> float:
        return self.mmd / _mmd_scale(self.reference_rows, self.current_rows)

    def drifted(self, thresholds: dict[str, float]) -> dict[str, bool]:
        return {
            "image_stats": self.stats_min_p < thresholds["image_stats"],
            "embedding": self.mmd_scaled > thresholds["embedding"],
            "prediction": self.prediction_p < thresholds["prediction"],
        }


def _p_value(value: Any) -> float:
    """Evidently's chi-square gives NaN when both sides hold one and the same category: no evidence."""
    p = float(value)
    return 1.0 if math.isnan(p) else p


def _scores(reference: _Prepared, current: _Prepared) -> _Scores:
    """The three parts' scores by the same Evidently functions the report runs (to calibrate)."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.metrics.embeddings import MMDDriftMethod

    def p_value(name: str) -> float:
        kind = ColumnType.Categorical if name in CATEGORICAL_STATS else ColumnType.Numerical
        ref, cur = reference.values(name), current.values(name)
        if kind == ColumnType.Categorical:  # counted with pandas
            ref, cur = pd.Series(ref), pd.Series(cur)
        return _p_value(get_stattest(ref, cur, kind, _method(name))(ref, cur, kind, 0.05).drift_score)

    stats = {name: p_value(name) for name in _testable(reference, current)}
    mmd, _, _ = MMDDriftMethod()(pd.DataFrame(current.components), pd.DataFrame(reference.components))
    return _Scores(stats, p_value(PREDICTION), float(mmd), len(reference), len(current))


def _method(name: str) -> str:
    return "chisquare" if name in CATEGORICAL_STATS else "ks"


# --- calibration ------------------------------------------------------------------------------


def calibrate(
    reference: pd.DataFrame,
    *,
    target_false_alarm: float = 0.01,
    pick_splits: int = 300,
    heldout_splits: int = 300,
    seed: int = 0,
) -> dict[str, Any]:
    """Thresholds that keep false alarms under ``target_false_alarm``, and the rate measured.

    The reference rows are shuffled into two halves. In each ``pick_splits`` times, a random
    window pair (2 rows to 1, at most ``CALIBRATION_WINDOW``) drawn from the first half is
    scored; each part's threshold is where a third of the target share of these no-drift scores
    would lie beyond it (p-values: below, MMD: above), read off the tail where it is well sampled
    (``_low_threshold``, ``_high_threshold``). Then as many window pairs drawn from the second
    half, which the thresholds never saw, measure the false-alarm rate of the whole rule.
    """
    if not 0 < target_false_alarm <= 0.1:
        raise ValueError(f"target_false_alarm must be in (0, 0.1], got {target_false_alarm}")
    if len(reference) < MIN_REFERENCE_ROWS:
        raise ValueError(f"a drift reference needs at least {MIN_REFERENCE_ROWS} images, got {len(reference)}")
    started = time.perf_counter()
    prepared = _prepare(reference, _projection(reference))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(prepared))
    pick, held = order[: len(order) // 2], order[len(order) // 2 :]
    ref_rows = min(2 * len(pick) // 3, CALIBRATION_WINDOW[0])
    cur_rows = min(len(pick) - ref_rows, CALIBRATION_WINDOW[1])

    def null_scores(pool: np.ndarray, splits: int) -> list[_Scores]:
        scores = []
        for _ in range(splits):
            rows = rng.permutation(pool)[: ref_rows + cur_rows]
            scores.append(_scores(prepared.take(rows[:ref_rows]), prepared.take(rows[ref_rows:])))
        return scores

    with _quiet():
        picked = null_scores(pick, pick_splits)
        level = target_false_alarm / len(PARTS)
        thresholds = {
            "image_stats": _low_threshold([s.stats_min_p for s in picked], level),
            "embedding": _high_threshold([s.mmd_scaled for s in picked], level),
            "prediction": _low_threshold([s.prediction_p for s in picked], level),
        }
        alarms = [s.drifted(thresholds) for s in null_scores(held, heldout_splits)]
    return {
        "version": 1,
        "thresholds": thresholds,
        "threshold_rules": {
            "image_stats": "smallest p-value (KS; chi-square for format) < threshold",
            "embedding": "MMD^2_u on the embedding's principal components > threshold * (1/m + 1/n)",
            "prediction": "KS p-value of probability < threshold",
        },
        "rule": "drift when any part crosses its threshold",
        "pca_components": int(prepared.components.shape[1]),
        "target_false_alarm_rate": target_false_alarm,
        "false_alarm_rate": float(np.mean([any(a.values()) for a in alarms])),
        "false_alarm_rate_by_part": {part: float(np.mean([a[part] for a in alarms])) for part in PARTS},
        "measured_on": {
            "reference_rows": len(prepared),
            "pick_splits": pick_splits,
            "heldout_splits": heldout_splits,
            "window_rows": [ref_rows, cur_rows],
            "seed": seed,
        },
        "seconds": round(time.perf_counter() - started, 2),
    }


def _low_threshold(p_values: list[float], level: float) -> float:
    """The p-value that no-drift windows go below with probability ``level``.

    A few hundred splits hold one or two scores that rare, so the quantile is read where they are
    ``TAIL_FACTOR`` times as common and carried down the lower tail of p-values, which is linear.
    """
    anchor = TAIL_FACTOR * level
    return float(np.quantile(p_values, anchor)) * level / anchor


def _high_threshold(scores: list[float], level: float) -> float:
    """The score that no-drift windows exceed with probability ``level``, along an exponential upper tail.

    The tail (MMD's is a weighted sum of chi-squares) is fitted between the quantiles exceeded with
    probability ``3 * TAIL_FACTOR * level`` and ``TAIL_FACTOR * level``, then extended to ``level``.
    """
    anchor = TAIL_FACTOR * level
    outer, inner = np.quantile(scores, [1.0 - 3.0 * anchor, 1.0 - anchor])
    scale = max(float(inner - outer), 0.0) / math.log(3.0)
    return float(inner) + scale * math.log(anchor / level)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Run Evidently's methods without their warnings and without a thread pool per call.

    Constant columns (every CIFAKE image is 32x32) make numpy and scipy warn, rightly and
    harmlessly. The MMD method asks scikit-learn for all cores on every call; starting a pool
    for a few hundred rows costs more than it saves (calibration runs hundreds of them).
    """
    from joblib import parallel_config

    with warnings.catch_warnings(), parallel_config(backend="sequential"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


# --- detection --------------------------------------------------------------------------------


def _sample(prepared: _Prepared, rng: np.random.Generator) -> _Prepared:
    if len(prepared) <= MAX_ROWS:
        return prepared
    return prepared.take(np.sort(rng.choice(len(prepared), MAX_ROWS, replace=False)))


def detect_drift(
    reference: pd.DataFrame, current: pd.DataFrame, calibration: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """Compare a window of predictions with the reference: (JSON-able summary, Evidently HTML report)."""
    current = current[current[EMBEDDING].notna()].reset_index(drop=True)
    for name, frame in (("reference", reference), ("current", current)):
        if len(frame) < MIN_ROWS:
            raise ValueError(f"the {name} window has {len(frame)} rows; drift needs at least {MIN_ROWS}")
    projection = _projection(reference)
    if _embedding_matrix(current).shape[1] != projection.n_features_in_:
        raise ValueError(
            f"current embeddings have {_embedding_matrix(current).shape[1]} dimensions, "
            f"the reference {projection.n_features_in_}: not the same model"
        )
    rng = np.random.default_rng(0)
    ref = _sample(_prepare(reference, projection), rng)
    cur = _sample(_prepare(current, projection), rng)
    thresholds = calibration["thresholds"]
    mmd_threshold = thresholds["embedding"] * _mmd_scale(len(ref), len(cur))
    with _quiet():
        snapshot = _report(ref, cur, _testable(ref, cur), thresholds, mmd_threshold)
        html = snapshot.get_html_str(as_iframe=False)
    scores = _report_scores(snapshot.dict(), len(ref), len(cur))
    drifted = scores.drifted(thresholds)
    drifted_columns = sorted(name for name, p in scores.stats_p.items() if p < thresholds["image_stats"])
    summary = {
        "drift_detected": any(drifted.values()),
        "drifted_parts": [part for part in PARTS if drifted[part]],
        "drifted_columns": drifted_columns,
        "parts": {
            "image_stats": {
                "score": scores.stats_min_p,
                "threshold": thresholds["image_stats"],
                "drifted": drifted["image_stats"],
                "p_values": scores.stats_p,
                "untested_columns": sorted(set(NUMERIC_STATS + CATEGORICAL_STATS) - set(scores.stats_p)),
            },
            "embedding": {
                "score": scores.mmd,
                "threshold": mmd_threshold,
                "drifted": drifted["embedding"],
                "method": "mmd",
                "pca_components": int(ref.components.shape[1]),
            },
            "prediction": {
                "score": scores.prediction_p,
                "threshold": thresholds["prediction"],
                "drifted": drifted["prediction"],
            },
        },
        "rows": {
            "reference": len(reference),
            "current": len(current),
            "compared_reference": len(ref),
            "compared_current": len(cur),
        },
        "mean_probability": {
            "reference": float(reference[PREDICTION].mean()),
            "current": float(current[PREDICTION].mean()),
        },
        "false_alarm_rate": calibration.get("false_alarm_rate"),
        "target_false_alarm_rate": calibration.get("target_false_alarm_rate"),
    }
    return summary, html


def _report(
    ref: _Prepared, cur: _Prepared, columns: list[str], thresholds: dict[str, float], mmd_threshold: float
) -> Any:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift
    from evidently.metrics.embeddings import MMDDriftMethod
    from evidently.presets import DataDriftPreset

    names = _component_names(ref.components.shape[1])
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c in NUMERIC_STATS] + [PREDICTION],
        categorical_columns=[c for c in columns if c in CATEGORICAL_STATS],
        embeddings={EMBEDDING: names},
    )

    def dataset(prepared: _Prepared) -> Any:
        components = pd.DataFrame(prepared.components, columns=names)
        return Dataset.from_pandas(pd.concat([prepared.frame(), components], axis=1), data_definition=definition)

    report = Report(
        [
            DataDriftPreset(
                columns=columns,
                num_method="ks",
                cat_method="chisquare",
                threshold=thresholds["image_stats"],
                drift_share=1.0 / len(columns),  # the preset's dataset verdict: any column
            ),
            EmbeddingsDrift(embeddings_name=EMBEDDING, drift_method=MMDDriftMethod(threshold=mmd_threshold)),
            ValueDrift(column=PREDICTION, method="ks", threshold=thresholds["prediction"]),
        ]
    )
    return report.run(current_data=dataset(cur), reference_data=dataset(ref))


def _report_scores(report: dict[str, Any], reference_rows: int, current_rows: int) -> _Scores:
    stats: dict[str, float] = {}
    prediction_p = mmd = None
    for metric in report["metrics"]:
        config = metric.get("config", {})
        kind = str(config.get("type", "")).rsplit(":", 1)[-1]
        if kind == "ValueDrift" and config["column"] == PREDICTION:
            prediction_p = _p_value(metric["value"])
        elif kind == "ValueDrift":
            stats[config["column"]] = _p_value(metric["value"])
        elif kind == "EmbeddingsDrift":
            mmd = float(metric["value"])
    if prediction_p is None or mmd is None:
        raise RuntimeError("the Evidently report lacks the prediction or embedding drift result")
    return _Scores(stats, prediction_p, mmd, reference_rows, current_rows)
