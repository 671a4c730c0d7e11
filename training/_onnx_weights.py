"""Recover trainable torch weights from a guaita model bundle (fp32 or int8 QDQ ONNX).

So an observatory can fine-tune the shipped model on its own nights without a separate
PyTorch checkpoint: the bundle is the checkpoint. Two things the export did are undone:

* int8 weights are dequantized (``DequantizeLinear`` on the stored initializers), which returns
  the weights to within half a quantization step;
* the exporter folded each BatchNorm into the convolution before it (W' = W·γ/σ, b' = β − μγ/σ).
  The folded conv is put back as conv weight W' plus a BatchNorm that adds b'. Its statistics are
  then re-estimated on the new training images (``recalibrate_bn``) so that, in training mode,
  the BatchNorm neither rescales the folded activations nor shifts them: the network starts
  fine-tuning computing what the bundle computed.

Parameter names survive export (``model.<module path>.weight``); a bundle this code did not
write, or an architecture that does not match, is refused with the names that are missing.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training._common import TrainingError


def _graph_values(path: Path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}

    def resolve(name: str) -> np.ndarray | None:
        if name in inits:
            return inits[name].astype(np.float32)
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Identity":
            return resolve(node.input[0])
        if node.op_type == "DequantizeLinear":
            q = inits.get(node.input[0])
            if q is None:
                return None
            scale = inits[node.input[1]].astype(np.float32)
            zero = inits[node.input[2]].astype(np.float32) if len(node.input) > 2 else 0.0
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if np.ndim(scale) == 1 and q.ndim > 1:
                shape[axis] = -1
                scale = scale.reshape(shape)
                zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
            return (q.astype(np.float32) - zero) * scale
        return None

    by_op: dict[str, list] = {}
    for node in model.graph.node:
        by_op.setdefault(node.op_type, []).append(node)
    return resolve, by_op


def _base(name: str) -> str:
    for suffix in ("_DequantizeLinear_Output", "_quantized"):
        name = name.removesuffix(suffix)
    return name.removeprefix("model.")


def _conv_bn_pairs(model: nn.Module) -> dict[str, tuple[nn.Conv2d, str, nn.BatchNorm2d]]:
    """conv path → (conv, bn path, bn): each conv followed by its BatchNorm in module order."""
    named = list(model.named_modules())
    pairs = {}
    for (name, module), (next_name, following) in itertools.pairwise(named):
        if isinstance(module, nn.Conv2d) and isinstance(following, nn.BatchNorm2d):
            pairs[name] = (module, next_name, following)
    return pairs


@torch.no_grad()
def load_from_bundle(model: nn.Module, source: Path) -> str:
    """Fill `model` (fastai resnet + head) from a bundle folder or its model.onnx."""
    from edge.bundle import MODEL_NAME, BundleError, load_bundle

    path = source
    if source.is_dir():
        try:
            path = load_bundle(source).model_path
        except BundleError as exc:
            raise TrainingError(f"--init-from {source}: {exc}") from None
        path = source / MODEL_NAME if not path.is_file() else path
    if path.suffix != ".onnx" or not path.is_file():
        raise TrainingError(f"--init-from {source}: not a train folder, .pth, bundle or .onnx")
    resolve, by_op = _graph_values(path)
    state = model.state_dict()
    filled: set[str] = set()

    def put(key: str, value: np.ndarray) -> None:
        if key not in state:
            raise TrainingError(f"{path}: has {key!r}, which this architecture lacks")
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        if tuple(tensor.shape) != tuple(state[key].shape):
            raise TrainingError(f"{path}: {key} has shape {tuple(tensor.shape)}, the model "
                                f"{tuple(state[key].shape)} (another architecture or size?)")
        state[key].copy_(tensor)
        filled.add(key)

    pairs = _conv_bn_pairs(model)
    for node in by_op.get("Conv", []):
        conv_path = _base(node.input[1]).removesuffix(".weight")
        if conv_path not in pairs:
            raise TrainingError(f"{path}: convolution {conv_path!r} not in this architecture")
        weight = resolve(node.input[1])
        bias = resolve(node.input[2]) if len(node.input) > 2 else None
        if weight is None:
            raise TrainingError(f"{path}: cannot read the weights of {conv_path}")
        _, bn_path, bn = pairs[conv_path]
        put(f"{conv_path}.weight", weight)
        channels = weight.shape[0]
        put(f"{bn_path}.weight", np.ones(channels, np.float32))
        put(f"{bn_path}.bias", bias if bias is not None else np.zeros(channels, np.float32))
        put(f"{bn_path}.running_mean", np.zeros(channels, np.float32))
        put(f"{bn_path}.running_var", np.full(channels, 1.0 - bn.eps, np.float32))
    for node in by_op.get("Gemm", []):
        key = _base(node.input[1])
        weight = resolve(node.input[1])
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        if weight is None:
            raise TrainingError(f"{path}: cannot read {key}")
        put(key, weight if trans_b else weight.T)
        if len(node.input) > 2 and node.input[2]:
            put(key.removesuffix(".weight") + ".bias", resolve(node.input[2]))
    for node in by_op.get("BatchNormalization", []):
        for key, name in zip(("weight", "bias", "running_mean", "running_var"), node.input[1:5],
                             strict=True):
            value = resolve(name)
            if value is None:
                raise TrainingError(f"{path}: cannot read {name}")
            put(f"{_base(node.input[1]).rsplit('.', 1)[0]}.{key}", value)
    missing = [k for k in state if k not in filled and not k.endswith("num_batches_tracked")]
    if missing:
        raise TrainingError(f"{path}: the bundle lacks {len(missing)} weights of this "
                            f"architecture (first: {missing[:3]})")
    model.load_state_dict(state)
    model.guaita_folded_bn = list(pairs)  # recalibrate_bn's to-do list
    return f"bundle {path} (dequantized, BatchNorm unfolded)"


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> int:
    """Give each unfolded BatchNorm the statistics of its conv's output on real images.

    With mean μ and std σ of the conv output z, setting running stats (μ, σ²) and affine
    (γ = σ, β = μ + b) keeps eval mode exactly z + b and makes training mode (batch statistics)
    start from the same function instead of renormalising every layer at step 0.
    """
    todo = set(getattr(model, "guaita_folded_bn", []))
    if not todo:
        return 0
    pairs = {k: v for k, v in _conv_bn_pairs(model).items() if k in todo}
    sums: dict[str, list] = {k: [0.0, 0.0, 0] for k in pairs}
    hooks = []
    for name, (conv, _, _) in pairs.items():
        def hook(_m, _i, out, name=name):
            s = sums[name]
            s[0] = s[0] + out.sum(dim=(0, 2, 3)).double()
            s[1] = s[1] + (out.double() ** 2).sum(dim=(0, 2, 3))
            s[2] += out.shape[0] * out.shape[2] * out.shape[3]
        hooks.append(conv.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, (_, _, bn) in pairs.items():
        total, squares, n = sums[name]
        if not n:
            continue
        mean = total / n
        var = (squares / n - mean**2).clamp_min(1e-6)
        bias = bn.bias.detach().double().clone()  # the folded conv bias b
        std = (var + bn.eps).sqrt()
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.float())
        bn.weight.copy_(std.float())
        bn.bias.copy_((mean + bias).float())
    del model.guaita_folded_bn
    return len(pairs)
