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


def tiny_trail_onnx(gain: float = 1.0, offset: float = 0.0) -> bytes:
    """A trail classifier graph: logit = gain · max over the strip's channel 0 + offset (the
    brightest new light along the candidate, in log noise units), scalars ignored but required."""
    from edge.trail_strip import ACROSS, ALONG, CHANNELS, SCALARS

    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["strips", "c0", "c1", "axis"], ["appeared"]),
            helper.make_node("ReduceMax", ["appeared", "axes"], ["peak"], keepdims=0),
            helper.make_node("Mul", ["peak", "gain"], ["scaled"]),
            helper.make_node("ReduceSum", ["scalars", "one"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["ignored"]),
            helper.make_node("Add", ["scaled", "offset"], ["shifted"]),
            helper.make_node("Add", ["shifted", "ignored"], ["logits"]),
        ],
        "tiny-trail",
        [helper.make_tensor_value_info("strips", TensorProto.FLOAT,
                                       ["N", CHANNELS, ACROSS, ALONG]),
         helper.make_tensor_value_info("scalars", TensorProto.FLOAT, ["N", len(SCALARS)])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N"])],
        initializer=[
            numpy_helper.from_array(np.array([0], np.int64), "c0"),
            numpy_helper.from_array(np.array([1], np.int64), "c1"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array(gain, np.float32), "gain"),
            numpy_helper.from_array(np.array(offset, np.float32), "offset"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_tiny_classifier_bundle(directory: str | Path, *, gain: float = 1.0,
                                offset: float = 0.0, weights=(1.0, 0.0, 0.0),
                                empty_logit: float = -12.0, **kwargs) -> Path:
    """A tiny bundle (above) with a trail classifier stage holding `tiny_trail_onnx`;
    `weights` = (trail, network, bias) of the bundle's score."""
    import hashlib
    import json

    from edge.bundle import MANIFEST_NAME
    from edge.trail_classifier import MODEL_FILE, TrailClassifier

    root = make_tiny_bundle(directory, **kwargs)
    trail = tiny_trail_onnx(gain, offset)
    stage = TrailClassifier(sha256=hashlib.sha256(trail).hexdigest(), trail_weight=weights[0],
                            network_weight=weights[1], bias=weights[2], empty_logit=empty_logit)
    data = json.loads((root / MANIFEST_NAME).read_text())
    data["trail_stage"] = stage.to_dict()
    write_bundle(root, (root / MODEL_NAME).read_bytes(), data, {MODEL_FILE: trail})
    return root
