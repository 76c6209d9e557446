"""Running an exported model with onnxruntime (no TensorFlow): serving, gate and canaries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup (container) quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:  # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(-(-int(quota) // int(period)))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


_SHARED_POOL = False


def share_thread_pool(threads: int = 0) -> bool:
    """Make every later session in this process use one process-wide onnxruntime thread pool.

    Serving calls this once at start. A session created later (the next model, built while the
    live one serves) then starts no threads of its own: all inference runs on the same pool,
    instead of two pools of spinning threads fighting for the cores during a swap. Returns
    whether the shared pool is in use (False if this process already made sessions its own way).
    """
    global _SHARED_POOL
    if _SHARED_POOL:
        return True
    from onnxruntime.capi import _pybind_state

    try:
        _pybind_state.set_global_thread_pool_sizes(threads or available_cores(), 1)
    except Exception as exc:  # pools made earlier in this process: keep per-session threads
        if "already been created" not in str(exc):
            return False
    _SHARED_POOL = True
    return True


INPUT_FIT_KEY = "aidetect.input_fit"
BATCH_PIXELS = 2**21
SHORTCUT_CHUNK = 256  # mosaics the tile shortcut sorts at once


def tile_graph(path: Path | str) -> bytes | None:
    """The part of a mosaic detector's graph that scores single tiles, or None if it has none.

    A mosaic model cuts its input into tiles (``pixels -> Reshape -> Transpose -> Reshape``),
    scores each, and averages per image (``Reshape -> ReduceMean`` before each output). The
    graph between the two (tiles -> per-tile P(ai) and embedding) is what this returns,
    serialised, so a thumbnail's mosaic, four copies of one tile, can be scored as one tile: the
    mean of four equal numbers is that number. Needs the ``onnx`` package (the train extra).
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer_index = {out: i for i, node in enumerate(graph.node) for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    tiles = _mosaic_tiles_tensor(graph)
    if tiles is None:
        return None
    cut = _per_tile_values(graph, {out: graph.node[i] for out, i in producer_index.items()})
    if cut is None:
        return None
    per_tile, requantize = cut
    made = {out for node in requantize for out in node.output}
    wanted = [name for name in [node.input[0] for node in requantize] + per_tile if name not in made]
    needed = _nodes_between(graph, producer_index, initializers, tiles, wanted)
    if needed is None:
        return None
    nodes = [graph.node[i] for i in sorted(needed)] + requantize
    used = {name for node in nodes for name in node.input}
    cut_graph = onnx.helper.make_graph(
        nodes,
        f"{graph.name}_tile",
        [onnx.helper.make_tensor_value_info(tiles, onnx.TensorProto.UINT8, ["tiles", None, None, 3])],
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in per_tile],
        [initializers[name] for name in initializers if name in used],
    )
    tile_model = onnx.helper.make_model(cut_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return bytes(tile_model.SerializeToString())


def _mosaic_tiles_tensor(graph: onnx.GraphProto) -> str | None:
    """The tensor of tiles that the input's ``Reshape -> Transpose -> Reshape`` cuts, or None."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tensor = graph.input[0].name
    for op in ("Reshape", "Transpose", "Reshape"):
        after = consumers.get(tensor, [])
        if len(after) != 1 or after[0].op_type != op:
            return None
        tensor = after[0].output[0]
    return tensor


def _per_tile_values(
    graph: onnx.GraphProto, producers: dict[str, onnx.NodeProto]
) -> tuple[list[str], list[onnx.NodeProto]] | None:
    """Per output, the per-tile value its ``Reshape -> ReduceMean`` averages, and the Q/DQ nodes to repeat on it.

    An INT8 file quantises the per-tile values between the cut and the mean: elementwise with
    one scale, so the same Q/DQ applied to the tile's value gives what the mean sees. None if an
    output is not such a mean.
    """
    import onnx

    per_tile: list[str] = []
    requantize: list[onnx.NodeProto] = []
    for output in graph.output:
        mean = producers.get(output.name)
        if mean is None or mean.op_type != "ReduceMean":
            return None
        chain: list[onnx.NodeProto] = []
        cut = producers.get(mean.input[0])
        while cut is not None and cut.op_type in ("QuantizeLinear", "DequantizeLinear"):
            chain.append(cut)
            cut = producers.get(cut.input[0])
        if cut is None or cut.op_type != "Reshape":
            return None
        value = cut.input[0]
        for step in reversed(chain):
            requantize.append(
                onnx.helper.make_node(step.op_type, [value, *step.input[1:]], [f"{value}/tile_{step.op_type}"])
            )
            value = requantize[-1].output[0]
        per_tile.append(value)
    return per_tile, requantize


def _nodes_between(
    graph: onnx.GraphProto,
    producer_index: dict[str, int],
    initializers: dict[str, onnx.TensorProto],
    start: str,
    wanted: list[str],
) -> set[int] | None:
    """Indices of the nodes that compute ``wanted`` from ``start`` and the initialisers, or None.

    Found by walking back from ``wanted`` (onnx.utils.Extractor wants shapes that shape
    inference does not give tf2onnx's reshapes).
    """
    needed: set[int] = set()
    stack = list(wanted)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name == start or name in initializers or not name:
            continue
        seen.add(name)
        if name not in producer_index:  # reaches the mosaic input some other way: no clean cut
            return None
        needed.add(producer_index[name])
        stack.extend(graph.node[producer_index[name]].input)
    return needed


class OnnxModel:
    """An onnxruntime session over a detector exported by ``model.export``.

    ``tile_shortcut``: for a mosaic model, score the mosaic of a thumbnail (one tile repeated)
    as that one tile, with ``tile_graph`` (a quarter of the work, the same numbers). For
    evaluating many thumbnails (the gate); not for timing what serving runs.
    ``optimized``: ``path`` is a graph onnxruntime already optimised and saved in its own
    format (``serving.optimized``): loaded as it is, without optimising it again.
    """

    def __init__(self, path: Path | str, *, threads: int = 0, tile_shortcut: bool = False, optimized: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if _SHARED_POOL:
            options.use_per_session_threads = False
        else:
            options.intra_op_num_threads = threads or available_cores()
            options.inter_op_num_threads = 1
        if optimized:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.add_session_config_entry("session.load_model_format", "ORT")
        else:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
            raise ValueError(f"{path}: expected one uint8 NHWC input, got {[(i.name, i.type) for i in inputs]}")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        if not (isinstance(shape[1], int) and shape[1] == shape[2] and shape[3] == 3):
            raise ValueError(f"{path}: expected a (batch, size, size, 3) input, got shape {shape}")
        self.image_size = int(shape[1])
        # How preprocessing fits an image to the input (model.preprocess.FITS), written by model.export
        self.input_fit = self.session.get_modelmeta().custom_metadata_map.get(INPUT_FIT_KEY, "resize")
        self.output_names = [o.name for o in self.session.get_outputs()]
        if len(self.output_names) != 2:
            raise ValueError(f"{path}: expected two outputs (P(ai), embedding), got {self.output_names}")
        self.tiles = None
        if tile_shortcut and self.input_fit == "mosaic":
            self.tiles = self._tile_session(ort, options)

    def _tile_session(self, ort: Any, options: Any) -> Any:
        """The tile graph's session, if the cut works and scores a repeated-tile mosaic as the whole
        graph does (one probe image: a cut that is not what ``tile_graph`` assumes is not used)."""
        from model.preprocess import MOSAIC_GRID

        graph = tile_graph(self.path)
        if graph is None:
            return None
        try:
            tiles = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime refuses the cut: score whole mosaics
            return None
        side = self.image_size // MOSAIC_GRID
        tile = np.random.default_rng(0).integers(0, 256, (1, side, side, 3), dtype=np.uint8)
        mosaic = np.tile(tile, (1, MOSAIC_GRID, MOSAIC_GRID, 1))
        expected, (p, emb) = _run(self.session, mosaic, None), _run(tiles, tile, None)
        if p.shape != expected[0].shape or emb.shape != expected[1].shape:
            return None
        if not (np.allclose(p, expected[0], atol=1e-6) and np.allclose(emb, expected[1], atol=1e-5)):
            return None
        return tiles

    def predict(self, pixels: np.ndarray, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (n, size, size, 3) -> (P(ai) of shape (n,), embeddings of shape (n, d)).

        By default a batch holds at most ``BATCH_PIXELS`` input pixels: 256 thumbnails, but ten
        448-px mosaics (onnxruntime's arena grows to the largest batch's activations: 18 GB at 256).
        """
        if self.tiles is not None and len(pixels):
            return self._predict_repeated_tiles(pixels, batch_size)
        return _run(self.session, pixels, batch_size)

    def _predict_repeated_tiles(self, pixels: np.ndarray, batch_size: int | None) -> tuple[np.ndarray, np.ndarray]:
        # In chunks: the comparison and the copies below would otherwise hold a whole split twice
        if len(pixels) > SHORTCUT_CHUNK:
            chunks = [
                self._predict_repeated_tiles(pixels[i : i + SHORTCUT_CHUNK], batch_size)
                for i in range(0, len(pixels), SHORTCUT_CHUNK)
            ]
            return np.concatenate([p for p, _ in chunks]), np.concatenate([e for _, e in chunks])
        from model.preprocess import MOSAIC_GRID, repeated_tile

        n, side = len(pixels), self.image_size // MOSAIC_GRID
        repeated = repeated_tile(pixels)
        parts = []
        if repeated.any():
            parts.append((repeated, _run(self.tiles, np.ascontiguousarray(pixels[repeated, :side, :side]), None)))
        if not repeated.all():
            parts.append((~repeated, _run(self.session, pixels[~repeated], batch_size)))
        dims = parts[0][1][1].shape[1]
        scores, embeddings = np.zeros((n,), np.float32), np.zeros((n, dims), np.float32)
        for rows, (p, emb) in parts:
            scores[rows], embeddings[rows] = p, emb
        return scores, embeddings


def _run(session: object, pixels: np.ndarray, batch_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A session over ``pixels`` in batches of at most ``BATCH_PIXELS`` input pixels (256 images at most)."""
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    side = int(pixels.shape[1]) if pixels.ndim == 4 else 1
    batch_size = batch_size or max(1, min(256, BATCH_PIXELS // (side * side)))
    scores, embeddings = [], []
    for start in range(0, len(pixels), batch_size):
        p, emb = session.run(None, {name: pixels[start : start + batch_size]})  # type: ignore[attr-defined]
        scores.append(p.reshape(-1))
        embeddings.append(emb)
    if not scores:
        return np.zeros((0,), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(scores), np.concatenate(embeddings)


def check_canaries(
    model: OnnxModel, canaries: dict[str, np.ndarray], tolerance: float = 1e-4, expected: str = "expected"
) -> float:
    """Run the canary inputs stored at export; return the max abs difference or raise.

    ``expected`` names the recorded outputs to compare with: ``expected`` (the Keras model's,
    for the FP32 file) or ``expected_int8`` (the INT8 file's own, recorded at export).
    """
    scores, _ = model.predict(canaries["inputs"])
    return compare_canaries(scores, canaries, tolerance, expected)


def compare_canaries(
    scores: np.ndarray, canaries: dict[str, np.ndarray], tolerance: float = 1e-4, expected: str = "expected"
) -> float:
    """The max abs difference between ``scores`` and the recorded canary outputs, or ValueError."""
    reference = canaries[expected].reshape(-1)
    if scores.shape != reference.shape:
        raise ValueError(f"canaries gave {scores.shape[0]} scores, {reference.shape[0]} were recorded")
    diff = float(np.max(np.abs(scores - reference))) if len(scores) else 0.0
    if not np.isfinite(diff) or diff > tolerance:
        raise ValueError(f"canary outputs differ from those recorded at export by {diff:.2e} (> {tolerance:.0e})")
    return diff


def median_latency_ms(model: OnnxModel, pixels: np.ndarray, runs: int = 30) -> float:
    """Median milliseconds to score one image (batch of one), after a warm-up run."""
    import time

    one = pixels[:1]
    model.predict(one)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict(one)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))
