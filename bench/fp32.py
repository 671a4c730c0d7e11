"""guaita's fp32 twin of the shipped int8 bundle, for the cost comparison.

Preferred: the fp32 ONNX the export step wrote next to the trained model
(``$WORK/model/export/fp32.onnx`` of the shipped recipe), when the int8 graph the export step
left beside it is byte for byte the bundle's (another training run's folder holds another model).
Otherwise (a fresh clone) the int8 QDQ graph is turned back into an fp32 graph: every weight's
DequantizeLinear is folded into a float initializer and every activation
QuantizeLinear→DequantizeLinear pair is bypassed, restoring the ReLU the quantizer fused into
it where its range starts at 0. The result has the same operators and shapes
as the exported fp32 graph (whose BatchNorms the int8 graph had already folded), so it costs
the same to run; its scores differ from the true fp32 model by the int8 rounding of the weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge.bundle import Bundle, write_bundle


def _clamps_at_zero(quant: onnx.NodeProto, inits: dict) -> bool:
    """A QuantizeLinear whose zero point is its type's minimum: it clips negatives to 0."""
    if len(quant.input) < 3 or quant.input[2] not in inits:
        return False
    zero = numpy_helper.to_array(inits[quant.input[2]])
    low = {np.dtype(np.int8): -128, np.dtype(np.uint8): 0}.get(zero.dtype)
    return low is not None and bool(np.all(zero == low))


def strip_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float graph computing what the QDQ graph computes without the (de)quantization."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = list(graph.node)
    produced_by = {out: n for n in nodes for out in n.output}
    rename: dict[str, str] = {}
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    relus: list[onnx.NodeProto] = []

    for node in nodes:
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        if source in inits:  # a stored weight or bias: fold into a float initializer
            q = numpy_helper.to_array(inits[source]).astype(np.float32)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
                    if len(node.input) > 2 and node.input[2] else np.float32(0))
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and q.ndim > 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), np.reshape(zero, shape if np.ndim(zero) else ())
            new_inits.append(numpy_helper.from_array((q - zero) * scale, node.output[0]))
            drop.add(id(node))
            continue
        quant = produced_by.get(source)
        if quant is not None and quant.op_type == "QuantizeLinear":
            drop.update((id(node), id(quant)))
            if _clamps_at_zero(quant, inits):
                # The quantizer fused a ReLU away (its range starts at 0): put it back.
                relus.append(helper.make_node("Relu", [quant.input[0]], [node.output[0]],
                                              name=f"{node.output[0]}_relu"))
            else:
                rename[node.output[0]] = quant.input[0]

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    # Each restored ReLU goes where its DequantizeLinear was (topological order kept).
    by_output = {r.output[0]: r for r in relus}
    kept: list[onnx.NodeProto] = []
    for n in nodes:
        if id(n) not in drop:
            kept.append(n)
        elif n.op_type == "DequantizeLinear" and n.output[0] in by_output:
            kept.append(by_output[n.output[0]])
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = resolve(name)
    outputs = {o.name for o in graph.output}
    bridges = [helper.make_node("Identity", [resolve(name)], [name])
               for name in outputs if name in rename]
    used = {name for n in kept + bridges for name in n.input}
    keep_inits = [i for i in graph.initializer if i.name in used] + \
        [i for i in new_inits if i.name in used]
    del graph.node[:]
    graph.node.extend(kept + bridges)
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    onnx.checker.check_model(model)
    return model


def _exported_with(int8: Bundle, exported: Path) -> bool:
    """Whether `exported` is the fp32 graph the bundle's int8 graph was quantized from: the
    export step left that int8 graph, byte for byte, in the same folder."""
    return any(hashlib.sha256(f.read_bytes()).hexdigest() == int8.manifest.sha256
               for f in exported.parent.glob("int8-*.onnx"))


def fp32_bundle(int8: Bundle, out_dir: Path, exported: Path | None = None) -> tuple[Bundle, str]:
    """Write an fp32 bundle with the int8 bundle's manifest; returns it and where it came from."""
    if exported is not None and exported.is_file() and _exported_with(int8, exported):
        data = onnx.load(str(exported)).SerializeToString()  # weights may sit in a .data file
        origin = f"the export step's own fp32 graph ({exported})"
    else:
        data = strip_qdq(onnx.load(str(int8.model_path))).SerializeToString()
        origin = "the shipped int8 graph with its quantization removed (bench/fp32.py)"
        if exported is not None and exported.is_file():  # another training run's folder
            origin += f"; {exported} belongs to another model, not used"
    fields = int8.manifest.to_dict()
    fields["name"] = f"{int8.manifest.name}-fp32"
    fields["training"] = dict(fields.get("training") or {}) | {"precision": "fp32"}
    # The trail classifier's graph (fp32 already) goes along unchanged: the twin differs in
    # the network's precision only.
    extra = {name: (int8.root / name).read_bytes() for name, _ in int8.manifest.extra_files}
    return write_bundle(out_dir, data, fields, extra), origin
