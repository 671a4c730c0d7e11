"""THE preprocessing: one definition, imported by training and by the edge.

A model bundle records the variant id and parameters it was trained with; the edge rebuilds the
same `Preprocessor` from the manifest, so a frame is always scored exactly as the model saw its
training images.

Every variant takes two decoded grayscale frames of the same night (previous, current) as uint8
arrays and returns a uint8 HWC image (C = 1 or 3) of the model's input size. Normalisation to the
network's range is baked into the ONNX graph, so the edge feeds these pixels and nothing else.

Variants
--------
``v4``  The 2021 reference: subtract previous (negative → 0), threshold at 3.5 grey levels to
        0/255, resize to size×size with INTER_AREA (aspect stretched). One channel.
``g1``  guaita's variant, built for cameras whose per-pixel noise (σ≈3, so σ≈4.2 in a
        difference) makes a fixed 3.5 threshold pass ~20 % of pure-noise pixels:
          c0  positive difference after a 3×3 box blur, in units of its own robust noise σ
              (so faint streaks look the same on a noisy and a quiet camera), soft-thresholded
              at ``k_sigma`` and area-resized;
          c1  the same normalised difference max-pooled to the output size, so a streak one
              pixel wide and a few grey levels bright survives the 5× downscale;
          c2  the current frame itself, area-resized: context for clouds, moon and twilight,
              which the 2021 author proposed giving the model.
``g2``  g1 with its noisy max-pooled channel replaced by a *line map*, so that at 160 px the
        network sees thin streaks and little else (channels in g1's order, so a g1 model is a
        sensible starting point for fine-tuning):
          c0  g1's c0 (the soft-thresholded normalised difference, area-resized);
          c1  line response: the normalised difference, area-downscaled to about
              ``line_width`` px wide (a 1-px line keeps its signal-to-noise ratio), diffuse
              change (clouds, glows) removed by a running median, then for each of 8
              directions the *smaller* of the mean along the two half-lines either side of a
              pixel. A star's or a hot pixel's dot lights one half only, noise averages down,
              a streak lights both; max over directions, in its own noise σ, soft-thresholded
              at ``line_k`` and max-pooled to the output size;
          c2  the current frame, area-resized.
``m1``  candidate mosaic: instead of shrinking the whole sky 8x (where a 1-px streak a few
        grey levels bright all but vanishes), the g2 line map *proposes* where a streak might
        be and the network sees those places at full resolution. The ``tiles`` x ``tiles``
        strongest line-map maxima (non-maximum suppressed within ``nms_radius`` line-map px,
        ranked row by row) each give one ``size / tiles`` px tile cut from the full-resolution
        frame:
          c0  what appeared: g1's soft-thresholded normalised difference;
          c1  what vanished: the same of the negated difference (a moving cloud edge or the
              previous frame's satellite lights it; a meteor does not);
          c2  the current frame (local context: stars, cloud texture, moon glow).
        Fewer candidates than tiles leave black tiles. On held-out simulated nights the 16
        strongest maxima held 92 % of the meteors peaking at 15 grey levels or more.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

REFERENCE_THRESHOLD = 3.5  # grey levels, from Cecil & Campbell-Brown via the 2021 thesis


class PreprocessError(ValueError):
    """Frames that cannot be preprocessed (wrong dtype, empty, mismatched sizes)."""


@dataclass(frozen=True)
class PreprocessSpec:
    """Which variant and with which parameters; serialised into the model bundle."""

    id: str = "g1"
    size: int = 224
    threshold: float = REFERENCE_THRESHOLD  # v4 only
    k_sigma: float = 2.0  # g1: soft-threshold knee, in noise σ
    gain: float = 24.0  # g1: grey levels per σ above the knee
    blur: int = 3  # g1/g2: box blur before differencing (odd, 1 = none)
    line_width: int = 320  # g2: width the line detector works at, px
    line_length: int = 9  # g2: line kernel side, in downscaled px (odd)
    line_k: float = 2.5  # g2: line-map knee, in σ of the line response
    line_gain: float = 12.0  # g2: grey levels per σ above the knee
    tiles: int = 4  # m1: mosaic of tiles x tiles candidate crops
    nms_radius: int = 12  # m1: candidates at least this far apart, in line-map px
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return VARIANT_CHANNELS[self.id]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise PreprocessError(f"unknown preprocessing parameters: {sorted(unknown)}")
        spec = cls(**data)
        if spec.id not in VARIANT_CHANNELS:
            raise PreprocessError(
                f"unknown preprocessing id {spec.id!r}; known: {sorted(VARIANT_CHANNELS)}"
            )
        if spec.size < 16:
            raise PreprocessError(f"preprocessing size must be >= 16, got {spec.size}")
        if spec.blur < 1 or spec.blur % 2 == 0:
            raise PreprocessError(f"preprocessing blur must be odd and >= 1, got {spec.blur}")
        if spec.line_length < 3 or spec.line_length % 2 == 0:
            raise PreprocessError(
                f"preprocessing line_length must be odd and >= 3, got {spec.line_length}")
        if spec.line_width < 16:
            raise PreprocessError(f"preprocessing line_width must be >= 16, got {spec.line_width}")
        if spec.id == "m1" and (spec.tiles < 1 or spec.size % spec.tiles
                                or spec.size // spec.tiles < 8):
            raise PreprocessError(
                f"m1 needs size divisible by tiles into tiles of >= 8 px, got size {spec.size}, "
                f"tiles {spec.tiles}")
        if spec.nms_radius < 1:
            raise PreprocessError(f"preprocessing nms_radius must be >= 1, got {spec.nms_radius}")
        return spec

    def fingerprint(self) -> str:
        """Short stable hash: cache keys for preprocessed training images."""
        params = self.to_dict()
        if self.id != "m1":  # m1's own knobs do not change other variants' images (or caches)
            for name in M1_ONLY:
                params.pop(name)
        blob = json.dumps(params, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


VARIANT_CHANNELS = {"v4": 1, "g1": 3, "g2": 3, "m1": 3}
M1_ONLY = ("tiles", "nms_radius")


def to_gray(image: np.ndarray) -> np.ndarray:
    """BGR/BGRA/gray uint8 → gray uint8 (OpenCV's luma weights, as the reference did)."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise PreprocessError(f"unsupported image shape {image.shape}")


def decode_gray(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes → gray uint8; raises PreprocessError on a corrupt or partial file."""
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if buf.size else None
    if image is None:
        raise PreprocessError("image could not be decoded (corrupt or truncated)")
    return image


def read_gray(path: str) -> np.ndarray:
    with open(path, "rb") as fh:
        data = fh.read()
    # A JPEG that cp has not finished writing lacks its End Of Image marker; OpenCV would
    # decode it with a grey bottom, so refuse it explicitly.
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise PreprocessError(f"{path}: truncated JPEG (no end-of-image marker)")
    try:
        return decode_gray(data)
    except PreprocessError as exc:
        raise PreprocessError(f"{path}: {exc}") from None


def positive_difference(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """current − previous, saturating at 0 (what appeared in this frame), uint8."""
    return cv2.subtract(current, previous)


def _integer_median(values: np.ndarray) -> float:
    """np.median of integers by counting them: several times faster than its partition, and
    the same value (the mean of the two middle integers is exact in float32)."""
    flat = values.ravel().astype(np.intp)
    low = int(flat.min())
    below = np.cumsum(np.bincount(flat - low))  # how many are <= each value

    def ranked(k: int) -> int:  # the k-th smallest, from 0
        return int(np.searchsorted(below, k, side="right")) + low

    n = flat.size
    return float(ranked(n // 2)) if n % 2 else (ranked(n // 2 - 1) + ranked(n // 2)) / 2


def robust_centre_sigma(values: np.ndarray, step: int = 4) -> tuple[float, float]:
    """(median, noise σ from the median absolute deviation) of a subsample (fast on a Pi)."""
    sample = values[::step, ::step]
    if np.issubdtype(sample.dtype, np.integer) and sample.size:
        median = _integer_median(sample)
        # |x − median| is a multiple of 1/2: count it in halves.
        mad = _integer_median(np.abs(2 * sample.astype(np.intp) - round(2 * median))) / 2
    else:
        sample = sample.astype(np.float32)
        median = float(np.median(sample))
        mad = float(np.median(np.abs(sample - median)))
    return median, max(1.4826 * mad, 0.5)


def robust_sigma(values: np.ndarray, step: int = 4) -> float:
    """Noise σ from the median absolute deviation of a subsample (fast on a Pi)."""
    return robust_centre_sigma(values, step)[1]


def _check_pair(previous: np.ndarray, current: np.ndarray) -> None:
    for name, image in (("previous", previous), ("current", current)):
        if image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
            raise PreprocessError(f"{name} frame must be a non-empty 2-D uint8 array")
    if previous.shape != current.shape:
        raise PreprocessError(f"frame sizes differ: {previous.shape} vs {current.shape}")


def apply_mask(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Zero the pixels where mask == 0 (overlay text, trees, hot pixels)."""
    if mask is None:
        return image
    if mask.shape != image.shape:
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    return np.where(mask > 0, image, 0).astype(image.dtype)


def _v4(spec: PreprocessSpec, previous, current, mask) -> np.ndarray:
    diff = apply_mask(positive_difference(previous, current), mask)
    binary = np.where(diff > spec.threshold, 255, 0).astype(np.uint8)
    small = cv2.resize(binary, (spec.size, spec.size), interpolation=cv2.INTER_AREA)
    return small[:, :, None]


def _max_pool(image: np.ndarray, size: int) -> np.ndarray:
    """Downscale by taking the max over each output cell (keeps thin faint lines)."""
    h, w = image.shape
    ys = np.linspace(0, h, size + 1).astype(int)
    xs = np.linspace(0, w, size + 1).astype(int)
    rows = np.maximum.reduceat(image, ys[:-1], axis=0)
    return np.maximum.reduceat(rows, xs[:-1], axis=1)


def normalised_difference(spec: PreprocessSpec, previous, current, mask) -> np.ndarray:
    """Blurred signed difference in units of its own robust noise σ, float32."""
    if spec.blur > 1:
        k = (spec.blur, spec.blur)
        prev_s, cur_s = cv2.blur(previous, k), cv2.blur(current, k)
    else:
        prev_s, cur_s = previous, current
    signed = cur_s.astype(np.int16) - prev_s.astype(np.int16)
    signed = apply_mask(signed, mask)
    # σ of the signed difference (symmetric around 0 where nothing changed).
    return signed.astype(np.float32) / robust_sigma(signed)


def _soft(level: np.ndarray, knee: float, gain: float) -> np.ndarray:
    return np.clip((level - knee) * gain, 0, 255).astype(np.uint8)


def _g1(spec: PreprocessSpec, previous, current, mask) -> np.ndarray:
    norm = _soft(normalised_difference(spec, previous, current, mask), spec.k_sigma, spec.gain)
    size = (spec.size, spec.size)
    c0 = cv2.resize(norm, size, interpolation=cv2.INTER_AREA)
    c1 = _max_pool(norm, spec.size)
    c2 = cv2.resize(current, size, interpolation=cv2.INTER_AREA)
    return np.dstack([c0, c1, c2])


@lru_cache(maxsize=4)
def _half_line_kernels(length: int, directions: int = 8) -> tuple[tuple[np.ndarray, ...], ...]:
    """For each direction, two kernels averaging the half-lines either side of the centre."""
    c = length // 2
    yy, xx = np.mgrid[0:length, 0:length]
    pairs = []
    for i in range(directions):
        a = math.pi * i / directions
        line = np.zeros((length, length), np.float32)
        for t in np.linspace(-c, c, 4 * length):
            line[round(c + float(t) * math.sin(a)), round(c + float(t) * math.cos(a))] = 1.0
        line[c, c] = 0.0
        side = (xx - c) * math.cos(a) + (yy - c) * math.sin(a)
        halves = []
        for keep in (side > 0, side < 0):
            half = np.where(keep, line, 0.0).astype(np.float32)
            halves.append(half / max(float(half.sum()), 1.0))
        pairs.append(tuple(halves))
    return tuple(pairs)


def line_response(norm: np.ndarray, spec: PreprocessSpec, directions: int = 8) -> np.ndarray:
    """Line map of a normalised difference at about ``line_width`` px wide, in its own σ
    (`directions` line orientations; 8 is what g2 and m1 were trained with)."""
    h, w = norm.shape
    factor = max(1, round(w / spec.line_width))
    small = norm
    if factor > 1:
        small = cv2.resize(norm, (max(1, w // factor), max(1, h // factor)),
                           interpolation=cv2.INTER_AREA)
    small = small / robust_sigma(small, step=2)  # area averaging changed the noise
    # Diffuse change (cloud edges, glows, twilight) out: subtract a running median (8-bit, as
    # OpenCV's median filter needs for windows over 5; 1/8 σ steps).
    coded = np.clip(small * 8.0 + 128.0, 0, 255).astype(np.uint8)
    background = (cv2.medianBlur(coded, 9).astype(np.float32) - 128.0) / 8.0
    ridge = small - background
    response = None
    for half_a, half_b in _half_line_kernels(spec.line_length, directions):
        r = np.minimum(cv2.filter2D(ridge, -1, half_a), cv2.filter2D(ridge, -1, half_b))
        response = r if response is None else np.maximum(response, r)
    median, sigma = robust_centre_sigma(response, step=2)
    return (response - median) / sigma


def _g2(spec: PreprocessSpec, previous, current, mask) -> np.ndarray:
    norm = normalised_difference(spec, previous, current, mask)
    size = (spec.size, spec.size)
    lines = _soft(line_response(norm, spec), spec.line_k, spec.line_gain)
    c0 = cv2.resize(_soft(norm, spec.k_sigma, spec.gain), size, interpolation=cv2.INTER_AREA)
    c1 = _max_pool(lines, spec.size)
    c2 = cv2.resize(current, size, interpolation=cv2.INTER_AREA)
    return np.dstack([c0, c1, c2])


def line_candidates(response: np.ndarray, count: int, radius: int) -> list[tuple[int, int]]:
    """The `count` strongest positive local maxima of a line map, (row, col), strongest first."""
    if count <= 0 or response.size == 0:
        return []
    window = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    peaks = (response >= cv2.dilate(response, window)) & (response > 0)
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-response[ys, xs], kind="stable")
    chosen: list[tuple[int, int]] = []
    for i in order:  # plateaus give several equal maxima: keep them `radius` apart too
        y, x = int(ys[i]), int(xs[i])
        if all(max(abs(y - cy), abs(x - cx)) > radius for cy, cx in chosen):
            chosen.append((y, x))
            if len(chosen) == count:
                break
    return chosen


def _windows(spec: PreprocessSpec, norm: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Top-left corners (y0, x0), full-resolution px, of the `count` strongest line-map maxima's
    side x side windows (side = size // tiles), strongest first; each is centred on its maximum
    and shifted to stay inside the frame when it can."""
    lines = line_response(norm, spec)
    side = spec.size // spec.tiles
    h, w = norm.shape
    fy, fx = h / lines.shape[0], w / lines.shape[1]
    corners = []
    for y, x in line_candidates(lines, count, spec.nms_radius):
        cy, cx = int((y + 0.5) * fy), int((x + 0.5) * fx)
        corners.append((min(max(cy - side // 2, 0), max(h - side, 0)),
                        min(max(cx - side // 2, 0), max(w - side, 0))))
    return corners


def candidate_windows(spec: PreprocessSpec, previous: np.ndarray, current: np.ndarray,
                      mask: np.ndarray | None = None, count: int | None = None,
                      ) -> list[tuple[int, int]]:
    """Where m1 looks: the top-left corners (y0, x0) of its candidate windows in this pair,
    strongest first; `count` of them (default tiles², the ones the model sees). More than that
    tells how many windows a wider mosaic would need to hold a streak."""
    previous, current = to_gray(previous), to_gray(current)
    _check_pair(previous, current)
    norm = normalised_difference(spec, previous, current, mask)
    return _windows(spec, norm, spec.tiles**2 if count is None else count)


def _cut(image: np.ndarray, y0: int, x0: int, side: int) -> np.ndarray:
    """The side x side window at (y0, x0), zero-padded where the frame is smaller than a tile."""
    window = image[y0:y0 + side, x0:x0 + side]
    if window.shape == (side, side):
        return window
    out = np.zeros((side, side), image.dtype)
    out[:window.shape[0], :window.shape[1]] = window
    return out


def _m1(spec: PreprocessSpec, previous, current, mask) -> np.ndarray:
    norm = normalised_difference(spec, previous, current, mask)
    side = spec.size // spec.tiles
    mosaic = np.zeros((spec.size, spec.size, 3), np.uint8)
    for k, (y0, x0) in enumerate(_windows(spec, norm, spec.tiles**2)):
        level = _cut(norm, y0, x0, side)
        row, col = divmod(k, spec.tiles)
        tile = mosaic[row * side:(row + 1) * side, col * side:(col + 1) * side]
        tile[:, :, 0] = _soft(level, spec.k_sigma, spec.gain)
        tile[:, :, 1] = _soft(-level, spec.k_sigma, spec.gain)
        tile[:, :, 2] = _cut(current, y0, x0, side)
    return mosaic


_VARIANTS = {"v4": _v4, "g1": _g1, "g2": _g2, "m1": _m1}


@dataclass(frozen=True)
class Preprocessor:
    """Callable (previous, current[, mask]) → uint8 HWC model input."""

    spec: PreprocessSpec

    def __call__(
        self, previous: np.ndarray, current: np.ndarray, mask: np.ndarray | None = None
    ) -> np.ndarray:
        previous, current = to_gray(previous), to_gray(current)
        _check_pair(previous, current)
        return _VARIANTS[self.spec.id](self.spec, previous, current, mask)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.spec.channels, self.spec.size, self.spec.size)


def to_nchw(images: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """uint8 HWC image(s) → float32 NCHW batch in 0..255, the ONNX input contract."""
    batch = np.stack(images) if isinstance(images, list) else images
    if batch.ndim == 3:
        batch = batch[None]
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
