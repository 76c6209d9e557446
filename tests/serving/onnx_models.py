"""Small hand-built ONNX graphs with the detector's interface, to make broken models on purpose."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def mean_brightness_model(
    path: Path, *, size: int = 32, nan: bool = False, input_type: str = "uint8", embedding_dim: int = 3
) -> Path:
    """pixels (N, size, size, 3) -> P(ai) = mean pixel / 255 (or NaN), embedding = mean per channel
    (``embedding_dim`` != 3: those means times a fixed random matrix, e.g. 768 wide as the real models)."""
    import onnx
    from onnx import TensorProto, helper

    elem = {"uint8": TensorProto.UINT8, "float": TensorProto.FLOAT}[input_type]
    scale = np.array([np.nan if nan else 1 / 255], np.float32)
    nodes = [
        helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Mul", ["m", "scale"], ["ms"]),
        helper.make_node("Reshape", ["ms", "shape"], ["p_ai"]),
        helper.make_node("ReduceMean", ["x"], ["e4"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["e4", "scale"], ["embedding" if embedding_dim == 3 else "e3"]),
    ]
    initializers = [
        helper.make_tensor("scale", TensorProto.FLOAT, [1], scale),
        helper.make_tensor("shape", TensorProto.INT64, [2], np.array([-1, 1], np.int64)),
    ]
    if embedding_dim != 3:
        widen = np.random.default_rng(0).standard_normal((3, embedding_dim)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["e3", "widen"], ["embedding"]))
        initializers.append(helper.make_tensor("widen", TensorProto.FLOAT, [3, embedding_dim], widen))
    graph = helper.make_graph(
        nodes,
        "mean",
        [helper.make_tensor_value_info("pixels", elem, ["N", size, size, 3])],
        [
            helper.make_tensor_value_info("p_ai", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", embedding_dim]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mean_canaries(size: int = 32, n: int = 4) -> dict[str, np.ndarray]:
    inputs = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return {"inputs": inputs, "expected": (inputs.reshape(n, -1).mean(axis=1) / 255).astype(np.float32)}
