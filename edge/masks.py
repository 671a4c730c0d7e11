"""Where not to look: static masks from the config, a learned mask of busy pixels, and how much of
the sky is visible (a cheap cloudiness measure).

Mask convention everywhere: uint8, 0 = ignore, 255 = use (the same as ``detection.mask`` images:
black = ignore), so a mask can be passed straight to ``edge.preprocess.apply_mask``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

AUTO_MASK_FILE = "automask.npz"  # in the state directory
log = logging.getLogger(__name__)


class MaskError(ValueError):
    """A mask image or rectangle list that cannot be used."""


def build_static_mask(
    shape: tuple[int, int],
    mask_image_path: str | Path | None = None,
    rects: list[list[int]] | None = None,
) -> np.ndarray | None:
    """The configured mask for frames of `shape` (height, width); None when nothing is masked.

    The mask image (black = ignore) is resized to the frame with nearest-neighbour sampling, so
    one image drawn on a thumbnail works for the full frame; ``rects`` are ``[x, y, w, h]`` in
    frame pixels, clipped to the frame.
    """
    if len(shape) != 2 or shape[0] <= 0 or shape[1] <= 0:
        raise MaskError(f"shape must be (height, width), got {shape}")
    h, w = shape
    mask: np.ndarray | None = None
    if mask_image_path:
        image = cv2.imread(str(Path(mask_image_path).expanduser()), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise MaskError(f"{mask_image_path}: cannot read mask image")
        if image.shape != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_NEAREST)
        mask = np.where(image >= 128, 255, 0).astype(np.uint8)
    for i, rect in enumerate(rects or []):
        if len(rect) != 4 or rect[2] <= 0 or rect[3] <= 0:
            raise MaskError(f"mask rectangle {i} must be [x, y, width, height], got {rect}")
        if mask is None:
            mask = np.full((h, w), 255, np.uint8)
        x, y, rw, rh = (int(v) for v in rect)
        mask[max(y, 0):max(y + rh, 0), max(x, 0):max(x + rw, 0)] = 0
    return mask


def combine_masks(*masks: np.ndarray | None) -> np.ndarray | None:
    """Pixel-wise AND of masks of the same shape (None = nothing masked)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        if m.shape != out.shape:
            m = cv2.resize(m, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
        out = np.minimum(out, m)
    return out


def _changed(diff: np.ndarray, k_sigma: float) -> np.ndarray:
    """Pixels above median + k·(q84 − median): works for a clipped or a downscaled difference."""
    step = max(1, int(np.sqrt(diff.size / 60_000)))
    q50, q84 = np.percentile(diff[::step, ::step], (50, 84))
    return diff > q50 + k_sigma * max(float(q84 - q50), 0.5)


class AutoMask:
    """Learns the pixels that change in a large share of frames (overlay digits, flickering hot
    pixels, trees in wind) and masks them once it has seen `warmup` frames.

    `update(diff)` takes each frame's difference (or a boolean map of changed pixels). Changes
    are max-pooled to about `learn_width` pixels wide (a single hot pixel still marks its cell)
    and averaged over about `window` frames, so a tree that stops moving is released again.
    Frames where more than `max_changed` of the cells changed (flashes, moving clouds) are not
    counted: they would teach it to mask the sky. `mask` is returned at the resolution `update`
    receives; `mask_for(shape)` at any other.
    """

    def __init__(self, share: float = 0.25, warmup: int = 60, window: int = 2000,
                 k_sigma: float = 3.0, grow: int = 1, learn_width: int = 640,
                 max_changed: float = 0.05) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        if warmup < 1 or window < 1 or learn_width < 16:
            raise ValueError("warmup and window must be >= 1, learn_width >= 16")
        if not 0 < max_changed <= 1:
            raise ValueError(f"max_changed must be in (0, 1], got {max_changed}")
        self.share, self.warmup, self.window = share, warmup, window
        self.k_sigma, self.grow, self.learn_width = k_sigma, grow, learn_width
        self.max_changed = max_changed
        self.rate: np.ndarray | None = None  # per cell, learned resolution
        self.shape: tuple[int, int] | None = None  # resolution of the updates
        self.frames = 0
        self.skipped = 0
        self._masks: dict[tuple[int, int], np.ndarray] = {}

    @property
    def ready(self) -> bool:
        return self.rate is not None and self.frames >= self.warmup

    def _cells(self, shape: tuple[int, int]) -> tuple[int, int]:
        f = max(1, round(shape[1] / self.learn_width))
        return max(1, shape[0] // f), max(1, shape[1] // f)

    def update(self, diff: np.ndarray) -> bool:
        """Count one frame; False when it was not counted (too much of it changed). A new
        resolution starts learning again."""
        if diff.ndim != 2 or diff.size == 0:
            raise ValueError("update needs a non-empty 2-D array")
        shape = (int(diff.shape[0]), int(diff.shape[1]))
        hit = diff if diff.dtype == bool else _changed(diff, self.k_sigma)
        ch, cw = self._cells(shape)
        if (ch, cw) != shape:  # any changed pixel marks its cell (area mean > 0)
            hit = cv2.resize(hit.astype(np.uint8), (cw, ch), interpolation=cv2.INTER_AREA) > 0
        if self.rate is None or self.shape != shape:
            self.rate = np.zeros((ch, cw), np.float32)
            self.shape, self.frames = shape, 0
        if np.count_nonzero(hit) > self.max_changed * hit.size:
            self.skipped += 1
            return False
        self.frames += 1
        alpha = 1.0 / min(self.frames, self.window)
        self.rate *= 1.0 - alpha
        self.rate += alpha * hit
        self._masks.clear()
        return True

    @property
    def mask(self) -> np.ndarray | None:
        """uint8 mask at the updates' resolution (0 = busy pixel), None during warm-up."""
        return self.mask_for(self.shape) if self.shape is not None else None

    def mask_for(self, shape: tuple[int, int]) -> np.ndarray | None:
        """The mask at (height, width), e.g. the decider's analysis image; None in warm-up."""
        if not self.ready:
            return None
        shape = (int(shape[0]), int(shape[1]))
        if shape not in self._masks:
            assert self.rate is not None
            busy = (self.rate >= self.share).astype(np.uint8)
            if self.grow > 0:
                size = 2 * self.grow + 1
                busy = cv2.dilate(busy, np.ones((size, size), np.uint8))
            cells = np.where(busy > 0, 0, 255).astype(np.uint8)
            if cells.shape != shape:
                cells = cv2.resize(cells, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
            self._masks[shape] = cells
        return self._masks[shape]

    @property
    def masked_share(self) -> float:
        if not self.ready:
            return 0.0
        assert self.rate is not None
        m = self.mask_for(self.rate.shape)
        return 0.0 if m is None else float(np.count_nonzero(m == 0)) / m.size

    def save(self, path: str | Path) -> None:
        """Write atomically (a crash mid-write leaves the previous file)."""
        if self.rate is None or self.shape is None:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".automask-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, rate=self.rate, frames=np.int64(self.frames),
                                    shape=np.array(self.shape, np.int64))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path, *, discard_corrupt: bool = False,
             **params: float | int) -> AutoMask:
        """A mask restored from `save`; a fresh one when the file does not exist. A corrupt
        file raises MaskError, or with `discard_corrupt` logs a warning and starts afresh (a
        daemon should not crash-loop on a cache file)."""
        auto = cls(**params)  # type: ignore[arg-type]
        path = Path(path)
        if not path.exists():
            return auto
        try:
            return cls._read(path, auto)
        except MaskError as exc:
            if not discard_corrupt:
                raise
            log.warning("%s; learning the auto mask again", exc)
            return auto

    @staticmethod
    def _read(path: Path, auto: AutoMask) -> AutoMask:
        try:
            with np.load(path) as data:
                rate = data["rate"].astype(np.float32)
                frames = int(data["frames"])
                shape = tuple(int(v) for v in data["shape"])
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise MaskError(f"{path}: not a guaita auto mask ({exc})") from None
        if (rate.ndim != 2 or frames < 0 or len(shape) != 2 or not np.all(np.isfinite(rate))
                or rate.shape != auto._cells(shape)):  # type: ignore[arg-type]
            raise MaskError(f"{path}: corrupt auto mask (or saved with another learn_width)")
        auto.rate, auto.frames, auto.shape = rate, frames, shape  # type: ignore[assignment]
        return auto


def star_visibility(gray: np.ndarray, delta: float = 20.0) -> float:
    """Star-like pixels (more than `delta` above their 5×5 median) per 10,000 pixels of the
    central half of the frame. Clear skies give tens, thin cloud a few, overcast about zero
    (docs/suppression.md has the reference figures)."""
    if gray.dtype != np.uint8 or gray.ndim != 2 or gray.size == 0:
        raise ValueError("star_visibility needs a 2-D uint8 grey image")
    h, w = gray.shape
    centre = gray[h // 4: h - h // 4, w // 4: w - w // 4]
    if centre.shape[0] < 5 or centre.shape[1] < 5:
        return 0.0
    local = cv2.medianBlur(centre, 5)
    stars = np.count_nonzero(centre.astype(np.int16) - local > delta)
    return 10_000.0 * stars / centre.size
