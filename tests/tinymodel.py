"""A tiny, valid guaita model bundle built with the `onnx` helper API (no torch, milliseconds).

Graph: image float32 [N,3,32,32] → GlobalAveragePool → Flatten → Gemm(W, bias) → Softmax →
probs [N,2], classes ["meteor", "not_meteor"]. With the default ``sensitivity=0`` the weights are
zero, so every input scores exactly ``softmax(bias)[0]``: models built with different biases give
distinguishable constant outputs (swap tests), and a large meteor bias makes every frame a
detection (rate-guard tests). ``sensitivity > 0`` makes the meteor logit grow with the mean of the
g1 difference channels, so a bright new streak scores higher than a still sky.

``broken`` builds a bundle that passes ``load_bundle`` but must fail later:
  "wrong_shape"  the graph outputs [N,3] for 2 classes
  "garbage"      model.onnx is random bytes (sha256 in the manifest matches them)
  "nan"          the graph outputs NaN
  "tampered"     model.onnx was changed after the manifest was written (sha256 mismatch;
                 load_bundle itself refuses this one)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.bundle import MODEL_NAME, write_bundle

SIZE = 32
CLASSES = ["meteor", "not_meteor"]
BROKEN = ("wrong_shape", "garbage", "nan", "tampered")


def tiny_onnx(bias: tuple[float, ...] = (0.0, 0.0), sensitivity: float = 0.0,
              outputs: int = 2, nan: bool = False) -> bytes:
    """Serialized ONNX model; see the module docstring."""
    weights = np.zeros((3, outputs), np.float32)
    # Channels 0 and 1 of g1 are the normalised difference: they light up for something new.
    weights[0, 0] = weights[1, 0] = sensitivity / 255.0
    bias_arr = np.array(bias, np.float32)
    if bias_arr.shape != (outputs,):
        bias_arr = np.resize(bias_arr, outputs).astype(np.float32)
    if nan:
        bias_arr[:] = np.nan
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", outputs])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias_arr, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the edge supports
    onnx.checker.check_model(model)
    return model.SerializeToString()


def meteor_probability(bias: tuple[float, float]) -> float:
    """What a ``sensitivity=0`` tiny model scores for any input."""
    exps = [math.exp(b) for b in bias]
    return exps[0] / sum(exps)


def make_tiny_bundle(
    directory: str | Path,
    *,
    version: str = "1",
    bias: tuple[float, float] = (0.0, 0.0),
    broken: str | None = None,
    name: str = "tiny",
    threshold: float = 0.5,
    sensitivity: float = 0.0,
    min_guaita_version: str = "0.1.0",
) -> Path:
    """Write a tiny bundle directory and return its path. ``bias`` = (meteor, not_meteor) logits."""
    if broken is not None and broken not in BROKEN:
        raise ValueError(f"broken must be one of {BROKEN}, got {broken!r}")
    if broken == "garbage":
        onnx_bytes = np.random.default_rng(7).bytes(2048)
    else:
        onnx_bytes = tiny_onnx(bias, sensitivity, outputs=3 if broken == "wrong_shape" else 2,
                               nan=broken == "nan")
    root = Path(directory)
    write_bundle(root, onnx_bytes, {
        "name": name,
        "version": version,
        "preprocessing": {"id": "g1", "size": SIZE},
        "input": {"name": "image", "shape": [1, 3, SIZE, SIZE], "dtype": "float32",
                  "range": [0, 255]},
        "classes": CLASSES,
        "recommended_threshold": threshold,
        "metrics": {"note": "tiny test model"},
        "training": {"builder": "tests/tinymodel.py", "bias": list(bias)},
        "min_guaita_version": min_guaita_version,
    })
    if broken == "tampered":
        model = root / MODEL_NAME
        model.write_bytes(tiny_onnx((bias[0] + 1.0, bias[1]), sensitivity))
    return root
