"""The network, in torch: building it, loading trained weights, and the deployable wrapper.

The deployable wrapper is what gets exported to ONNX: it takes the preprocessed image exactly as
the edge produces it (float32 NCHW, 0..255, 1 or 3 channels), does what fastai's DataLoaders did
during training (grey → 3 channels, /255, ImageNet mean/std), runs the network and returns softmax
probabilities. So the edge feeds pixels and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from training._common import TRAIN_META, WEIGHTS_NAME, TrainingError, read_json

ARCHS = ("resnet18", "resnet34")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def arch_fn(name: str):
    import torchvision.models as tvm

    if name not in ARCHS:
        raise TrainingError(f"unknown architecture {name!r}; choose from {', '.join(ARCHS)}")
    return getattr(tvm, name)


def imagenet_weights_file(name: str) -> Path:
    """Where torchvision's ImageNet weights for `name` live in the local torch hub cache."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(name).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def build_model(arch: str, n_out: int = 2) -> nn.Module:
    """fastai's vision model (torchvision body + fastai head), randomly initialised."""
    from fastai.vision.learner import create_vision_model

    return create_vision_model(arch_fn(arch), n_out, pretrained=False)


class Deployable(nn.Module):
    """uint8-range NCHW image → class probabilities, normalisation baked in."""

    def __init__(self, model: nn.Module, channels: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.model = model
        self.channels = channels
        self.register_buffer("scale", torch.tensor(std).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.channels == 1:  # fastai opened the grey PNGs as RGB: replicate
            image = image.expand(-1, 3, -1, -1)
        # (x/255 - mean)/std, folded into one subtract and one divide
        x = (image - self.shift) / self.scale
        return torch.softmax(self.model(x), dim=1)


def load_trained(train_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a `guaita train` output folder, in eval mode on CPU, and its train.json."""
    root = Path(train_dir)
    meta = read_json(root / TRAIN_META)
    model = build_model(meta["arch"], len(meta["classes"]))
    state = torch.load(root / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), meta


def deployable_from(train_dir: str | Path) -> tuple[Deployable, dict[str, Any]]:
    model, meta = load_trained(train_dir)
    norm = meta.get("normalization", {})
    mean = tuple(norm.get("mean", IMAGENET_MEAN))
    std = tuple(norm.get("std", IMAGENET_STD))
    wrapped = Deployable(model, int(meta["channels"]), mean, std)
    return wrapped.eval(), meta


@torch.no_grad()
def predict(net: nn.Module, images, batch_size: int = 64) -> torch.Tensor:
    """Deployable on a list/array of uint8 HWC images → probabilities [N, classes] (CPU)."""
    import numpy as np

    out = []
    for i in range(0, len(images), batch_size):
        batch = np.stack(images[i : i + batch_size]).transpose(0, 3, 1, 2)
        out.append(net(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))))
    return torch.cat(out) if out else torch.zeros((0, 2))
