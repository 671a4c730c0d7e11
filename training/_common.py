"""Small shared pieces of the training pipeline: the index contract and image files on disk.

The preprocessed training images are written as PNG (lossless) in the channel order the edge's
``Preprocessor`` produces. PIL reads and writes them (not OpenCV, whose BGR convention would
silently swap channels 0 and 2 between what fastai trains on and what the edge feeds).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

METEOR = "meteor"
NOT_METEOR = "no-meteor"
SPLITS = ("train", "valid", "test")
INDEX_NAME = "index.csv"
DATASET_META = "dataset.json"
TRAIN_META = "train.json"
WEIGHTS_NAME = "model.pth"
LEARNER_NAME = "learner.pkl"
SEGMENT_COLUMNS = ("meteor_x1", "meteor_y1", "meteor_x2", "meteor_y2")  # the simulator's truth


class TrainingError(RuntimeError):
    """A problem the operator must fix (bad input, missing weights); the message says what."""


def save_input(path: Path, image: np.ndarray) -> None:
    """Write a uint8 HWC preprocessed image (C = 1 or 3) as PNG, atomically."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected uint8 HWC with 1 or 3 channels, got {image.shape}")
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A crash mid-write must not leave a truncated PNG the resumable indexer would trust.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            pil.save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_input(path: str | Path, channels: int) -> np.ndarray:
    """Read a preprocessed PNG back as uint8 HWC in the edge's channel order."""
    with Image.open(path) as pil:
        array = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
    return array[:, :, None] if channels == 1 else array


def meteor_segment(row) -> tuple[float, float, float, float] | None:
    """An index row's true meteor segment (x1, y1, x2, y2) in frame pixels, None where the labels
    carry none (an operator's folders, or a frame without a meteor)."""
    try:
        values = tuple(float(row[c]) for c in SEGMENT_COLUMNS)
    except (KeyError, TypeError, ValueError):
        return None
    return None if any(np.isnan(v) for v in values) else values  # type: ignore[return-value]


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainingError(f"{path} not found") from None
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path}: not valid JSON: {exc}") from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def load_index(data_dir: str | Path):
    """index.csv + dataset.json of a `guaita dataset index` output; paths made absolute."""
    import pandas as pd

    root = Path(data_dir)
    if root.is_file():
        root = root.parent
    index_path = root / INDEX_NAME
    if not index_path.is_file():
        raise TrainingError(f"{index_path} not found: run `guaita dataset index` first")
    meta = read_json(root / DATASET_META)
    df = pd.read_csv(index_path, dtype={"night": str})
    for column in ("path", "label", "night", "split"):
        if column not in df.columns:
            raise TrainingError(f"{index_path}: missing column {column!r}")
    df["path"] = [str((root / p).resolve()) for p in df["path"]]
    return df, meta


def set_threads(threads: int | None) -> None:
    """Cap torch's CPU threads (the box may be shared); None leaves torch's default."""
    import torch

    if threads:
        torch.set_num_threads(threads)
