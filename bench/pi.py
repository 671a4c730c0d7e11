"""A Raspberry Pi 4 estimate from published anchors and ratios measured here. An ESTIMATE.

Anchor: ncnn's benchmark on a Raspberry Pi 4 (Cortex-A72, 1.5 GHz, 4 threads): ResNet18 at
224×224 takes 176 ms in fp32 and 98 ms in int8. We run the same network (torchvision ResNet18,
224×224, random weights: speed does not depend on them) here with onnxruntime on one thread,
fp32 and int8 (QDQ, per channel), which gives two scale factors, Pi-ms per here-ms:

    k_fp32 = 176 ms × T / (ResNet18 fp32 here)        k_int8 = 98 ms × T / (ResNet18 int8 here)

where T = 3 turns the anchor's 4 threads into the one thread guaita uses on the Pi (the others
are AllSky's); ncnn scales about 3× from 1 to 4 A72 cores. A detector's Pi time per frame is
then its inference time here × k_int8 (int8 models) or × k_fp32, plus everything else it does
(decode, preprocessing, suppression) × k_fp32. Caveats, all pointing the same way: ordinary
OpenCV/numpy code is usually less far from x86 than vectorised fp32 convolutions, so k_fp32
overstates the rest; but onnxruntime on the A72 (no dot-product instructions) gains less from
int8 than ncnn does, so the int8 figure is also given with no int8 gain at all (upper bound).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

PI_R18_FP32_MS_4T = 176.0
PI_R18_INT8_MS_4T = 98.0
THREADS_FACTOR = 3.0  # 4 A72 threads → 1 thread


def build_anchor(cache: Path) -> tuple[Path, Path]:
    """ResNet18 224×224 fp32 and int8 ONNX (random weights), cached."""
    folder = cache / "anchor"
    fp32, int8 = folder / "resnet18-224-fp32.onnx", folder / "resnet18-224-int8.onnx"
    if fp32.is_file() and int8.is_file():
        return fp32, int8
    import onnx
    import torch
    import torchvision
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).eval()
    example = torch.rand(1, 3, 224, 224)
    raw = folder / "raw.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(raw), input_names=["image"],
                          output_names=["logits"], opset_version=18, dynamo=True)
    onnx.save(onnx.load(str(raw)), str(fp32))  # weights inline, not in a side file
    for side in folder.glob("raw.onnx*"):
        side.unlink()
    pre = folder / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.items = iter([{"image": rng.random((1, 3, 224, 224), dtype=np.float32)}
                               for _ in range(8)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    pre.unlink(missing_ok=True)
    return fp32, int8


def scale_factors(anchor_fp32_ms: float, anchor_int8_ms: float) -> dict[str, float]:
    return {
        "k_fp32": PI_R18_FP32_MS_4T * THREADS_FACTOR / anchor_fp32_ms,
        "k_int8": PI_R18_INT8_MS_4T * THREADS_FACTOR / anchor_int8_ms,
    }


def estimate(total_ms: float, inference_ms: float | None, int8: bool,
             k: dict[str, float], inference_fp32_ms: float | None = None) -> dict[str, Any]:
    """Pi 4 ms per frame on one thread: (low, high). `total_ms` is the detector's CPU time per
    frame here, `inference_ms` its network's share (None: no network). For int8 models the
    high end assumes no int8 gain on the Pi (its fp32 twin's inference time × k_fp32)."""
    if inference_ms is None:
        value = total_ms * k["k_fp32"]
        return {"low": value, "high": value}
    rest = max(total_ms - inference_ms, 0.0) * k["k_fp32"]
    if not int8:
        value = rest + inference_ms * k["k_fp32"]
        return {"low": value, "high": value}
    low = rest + inference_ms * k["k_int8"]
    high = rest + (inference_fp32_ms if inference_fp32_ms is not None else inference_ms) * \
        k["k_fp32"]
    return {"low": min(low, high), "high": max(low, high)}
