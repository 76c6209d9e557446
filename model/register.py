"""Register a model trained elsewhere: an ONNX file or a Keras ``.keras`` file.

The file must meet the serving contract (``model.inference.OnnxModel``): one uint8 NHWC input
``(batch, size, size, 3)`` and two outputs, P(ai) of shape ``(batch, 1)`` (or ``(batch,)``)
in [0, 1] and an embedding. A ``.keras`` model (pixels -> P(ai), as ``model.architectures``
builds) is exported to ONNX here, and its ONNX file must match it within the export's parity
tolerance. The canaries (synthetic inputs with the model's own outputs) are recorded, so every
serving replica checks the file before it swaps it in. A registered model is not promoted:
``aidetect model evaluate`` it, then ``aidetect model promote`` it.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path

import numpy as np

from model.card import CANARIES_FILE, KERAS_FILE, ONNX_FILE, ModelCard, RegisteredFrom
from model.inference import OnnxModel
from model.preprocess import FITS
from model.registry import Registry
from storage import ObjectStore

CANARY_COUNT = 8


class ContractError(ValueError):
    """The file does not meet the serving contract; the message says how."""


def synthetic_inputs(size: int, n: int = CANARY_COUNT, seed: int = 0) -> np.ndarray:
    """Noise, flat greys and gradients: uint8 ``(n, size, size, 3)`` inputs for canaries and parity."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    if n > 2:
        out[1] = 128
        out[2] = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), -1).astype(np.uint8)
    return out


def _check_scores(scores: np.ndarray, n: int, source: str) -> None:
    if scores.shape != (n,):
        raise ContractError(f"{source}: P(ai) has shape {scores.shape} for {n} images; expected ({n}, 1)")
    if not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        low, high = float(np.min(scores)), float(np.max(scores))
        raise ContractError(f"{source}: P(ai) must be finite and in [0, 1]; got [{low:.3g}, {high:.3g}]")


def _open_onnx(path: Path, source: str) -> OnnxModel:
    try:
        return OnnxModel(path)
    except ValueError as exc:
        raise ContractError(f"{source}: {exc}") from None
    except Exception as exc:  # onnxruntime's own errors: not an ONNX file, unsupported ops
        raise ContractError(f"{source}: onnxruntime cannot load it: {exc}") from None


def _from_keras(path: Path, input_fit: str, work: Path) -> tuple[OnnxModel, dict[str, np.ndarray], float]:
    import importlib

    import keras

    from model.export import PARITY_TOLERANCE, ParityError, check_parity, export_onnx, optimize_onnx

    importlib.import_module("model.layers")  # registers the custom layers the file may use
    try:
        network = keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise ContractError(f"{path.name}: Keras cannot load it: {exc}") from None
    shape = tuple(network.input_shape) if not isinstance(network.input_shape, list) else None
    if shape is None or len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or not isinstance(shape[1], int):
        raise ContractError(f"{path.name}: expected one (batch, size, size, 3) input, got {network.input_shape}")
    if tuple(network.output_shape) != (None, 1):
        raise ContractError(f"{path.name}: expected one output of shape (batch, 1) (P(ai)), got {network.output_shape}")
    dtype = str(network.inputs[0].dtype)
    if "uint8" not in dtype:
        raise ContractError(f"{path.name}: the input must take uint8 pixels, not {dtype}")
    size = int(shape[1])
    inputs = synthetic_inputs(size)
    expected = np.asarray(network.predict(inputs, verbose=0), dtype=np.float32).reshape(-1)
    _check_scores(expected, len(inputs), path.name)
    try:
        onnx_path = optimize_onnx(export_onnx(network, work / "exported.onnx", input_fit=input_fit), work / ONNX_FILE)
    except Exception as exc:  # tf2onnx's errors: an op it cannot convert (e.g. Keras's own gelu)
        raise ContractError(f"{path.name}: the ONNX export failed: {exc}") from None
    onnx_model = _open_onnx(onnx_path, path.name)
    try:
        parity = check_parity(network, onnx_model, inputs, PARITY_TOLERANCE)
    except ParityError as exc:
        raise ContractError(f"{path.name}: {exc}") from None
    return onnx_model, {"inputs": inputs, "expected": expected}, parity


def register_model_file(
    store: ObjectStore,
    path: Path,
    *,
    input_fit: str | None = None,
    threshold: float = 0.5,
    temperature: float = 1.0,
    note: str = "",
) -> str:
    """Check ``path`` against the serving contract, record its canaries, register it; the version.

    ``input_fit`` (``model.preprocess.FITS``) says how images are fitted to the input: for a
    ``.keras`` file it is written into the exported ONNX (default ``resize``); an ONNX file
    carries its own (``aidetect.input_fit``, ``resize`` when absent) and a different one is refused.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if input_fit is not None and input_fit not in FITS:
        raise ContractError(f"input fit {input_fit!r}: expected one of {', '.join(FITS)}")
    if not 0 < threshold < 1 or not temperature > 0:
        raise ContractError(f"threshold must be in (0, 1) and temperature > 0; got {threshold}, {temperature}")
    data = path.read_bytes()
    with tempfile.TemporaryDirectory(prefix="aidetect-register-") as tmp:
        work = Path(tmp)
        files: dict[str, Path | bytes] = {}
        if path.name.endswith(".keras"):
            model, canaries, parity = _from_keras(path, input_fit or "resize", work)
            files[KERAS_FILE] = data
            kind: str = "keras"
            parity_value: float | None = parity
        elif path.suffix == ".onnx":
            onnx_path = work / ONNX_FILE
            onnx_path.write_bytes(data)
            kind, parity_value = "onnx", None
            model = _open_onnx(onnx_path, path.name)
            if input_fit is not None and input_fit != model.input_fit:
                raise ContractError(
                    f"{path.name}: the file says its input fit is {model.input_fit!r}, not {input_fit!r}"
                )
            canaries = {"inputs": synthetic_inputs(model.image_size)}
        else:
            raise ContractError(f"{path.name}: expected a .onnx or .keras file")
        scores, embeddings = model.predict(canaries["inputs"])
        _check_scores(scores, len(canaries["inputs"]), path.name)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(scores):
            raise ContractError(f"{path.name}: the embedding output has shape {embeddings.shape}; expected (batch, d)")
        canaries.setdefault("expected", scores.astype(np.float32))  # an ONNX file's own outputs
        buffer = io.BytesIO()
        np.savez_compressed(buffer, inputs=canaries["inputs"], expected=canaries["expected"])
        files[ONNX_FILE] = model.path.read_bytes()
        files[CANARIES_FILE] = buffer.getvalue()
        card = ModelCard(
            input_size=model.image_size,
            input_fit=model.input_fit,
            threshold=float(threshold),
            temperature=float(temperature),
            parity_max_abs_diff=parity_value,
            embedding_dim=int(embeddings.shape[1]),
            registered_from=RegisteredFrom(file=path.name, kind=kind, sha256=hashlib.sha256(data).hexdigest()),
            note=note,
        )
        return Registry(store).register(files, card)
