"""Streak geometry in a difference image: line segments, dotted rows, and how two of them relate.

Everything here is pure (arrays in, values out). The work is split so that the per-frame cost
stays low on a Raspberry Pi 4:

* every frame: one area downscale of the difference to about ``analysis_width`` pixels wide and a
  robust noise estimate (``DiffAnalysis.__init__``), used by the flash gate and the auto mask;
* candidate frames and their neighbours only: connected components of the noise-normalised
  downscaled difference, a PCA line fit per component, endpoint refinement and the brightness
  profile on the full-resolution difference (``DiffAnalysis.streaks``).

Area downscaling keeps the signal-to-noise ratio of a one-pixel line (signal and noise both drop
by the factor), so faint streaks survive it, while the image to label is 4–9× smaller.

Coordinates in a `Streak` are full-frame pixels (x right, y down), endpoints ordered so that
``x1 <= x2``; ``angle_deg`` is ``atan2(y2 - y1, x2 - x1)`` in (-90, 90].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

_KERNEL3 = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class StreakParams:
    """Detection parameters, in full-frame pixels and noise σ (see docs/suppression.md)."""

    analysis_width: int = 640  # downscale the difference to about this width
    k_sigma: float = 3.0  # pixel threshold, in σ of the downscaled difference
    seed_k_sigma: float = 5.0  # a component must peak at least this high
    line_k_sigma: float = 3.0  # ... and stay this bright (median) all along its line
    min_length_px: float = 24.0  # shorter blobs are stars, hot pixels, twinkling
    min_elongation: float = 4.0  # length / width of a line-like streak
    max_streaks: int = 24  # keep the strongest per frame (cloudy frames have many edges)
    max_components: int = 60  # large components examined per frame (cloudy frames have many)
    dot_k_sigma: float = 5.0  # isolated dots (aircraft strobes) must peak this high
    min_dots: int = 5  # a dotted row needs this many regularly spaced dots
    max_dot_spacing_px: float = 30.0
    tile: int = 40  # local noise is measured in tiles of this many downscaled pixels
    ridge_window: int = 11  # median window that removes diffuse change (odd, downscaled px)
    edge_k_sigma: float = 3.0  # endpoint refinement level on the full-resolution profile

    def __post_init__(self) -> None:
        if self.analysis_width < 32:
            raise ValueError(f"analysis_width must be >= 32, got {self.analysis_width}")
        if self.ridge_window < 3 or self.ridge_window % 2 == 0:
            raise ValueError(f"ridge_window must be odd and >= 3, got {self.ridge_window}")
        if self.min_dots < 3:
            raise ValueError(f"min_dots must be >= 3, got {self.min_dots}")
        for name in ("k_sigma", "seed_k_sigma", "line_k_sigma", "min_length_px", "min_elongation",
                     "dot_k_sigma", "max_dot_spacing_px", "edge_k_sigma"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class Streak:
    """A line segment (or a row of dots) in one difference image, full-frame pixels."""

    x1: float
    y1: float
    x2: float
    y2: float
    width_px: float
    peak: float  # brightest value along it in the difference, grey levels
    kind: str = "line"  # "line" or "dotted"
    dots: int = 0  # periodic peaks or dots found along it
    period_px: float = 0.0  # their median spacing
    fwhm_px: float = 0.0  # width of the light across it at half maximum, 0 = unknown
    # Downscaled pixels that make it up (for mask tests); not part of its identity.
    pixels: tuple[np.ndarray, np.ndarray] = field(
        default=(np.zeros(0, np.int32), np.zeros(0, np.int32)), compare=False, repr=False
    )

    @property
    def length_px(self) -> float:
        return math.hypot(self.x2 - self.x1, self.y2 - self.y1)

    @property
    def angle_deg(self) -> float:
        return math.degrees(math.atan2(self.y2 - self.y1, self.x2 - self.x1))

    @property
    def elongation(self) -> float:
        return self.length_px / max(self.width_px, 1.0)

    @property
    def strength(self) -> float:
        return self.length_px * max(self.peak, 1.0)

    @property
    def dotted(self) -> bool:
        return self.kind == "dotted"

    def bbox(self, shape: tuple[int, int] | None = None) -> list[float]:
        """[x, y, w, h] around the segment, padded by half its width, clipped to `shape`."""
        pad = self.width_px / 2
        x0, x1 = min(self.x1, self.x2) - pad, max(self.x1, self.x2) + pad
        y0, y1 = min(self.y1, self.y2) - pad, max(self.y1, self.y2) + pad
        if shape is not None:
            x0, y0 = max(x0, 0.0), max(y0, 0.0)
            x1, y1 = min(x1, shape[1] - 1.0), min(y1, shape[0] - 1.0)
        return [round(float(v), 1) for v in (x0, y0, x1 - x0, y1 - y0)]

    def to_event(self, shape: tuple[int, int] | None = None) -> dict[str, float | list[float]]:
        """The event schema's ``streak`` object (exactly its keys)."""
        return {
            "x1": round(float(self.x1), 1), "y1": round(float(self.y1), 1),
            "x2": round(float(self.x2), 1), "y2": round(float(self.y2), 1),
            "length_px": round(self.length_px, 1),
            "angle_deg": round(self.angle_deg, 2),
            "bbox": self.bbox(shape),
            "peak": round(float(self.peak), 1),
        }


@dataclass(frozen=True)
class TrailLight:
    """The light along a streak (`DiffAnalysis.steadiness`): is it a steady light cut off at
    both ends (a satellite) or a meteor's rise and fade?"""

    box: float = 0.0  # 1 = uniformly bright between abrupt ends; a meteor's 0.2-0.5
    snr: float = 0.0  # plateau over the noise of the smoothed profile
    # The profile on the trail, scaled by its 95th percentile (so 1 = its brightest light):
    end_light: float = 0.0  # the dimmer end quarter's mean
    end_imbalance: float = 0.0  # |first - last end quarter|
    end_bright: float = 0.0  # the brighter end quarter's mean
    middle: float = 0.0  # the middle half's mean
    variation: float = 0.0  # standard deviation over mean
    peak_offset: float = 0.0  # the brightest point's distance from the middle: 0 centre, 1 an end
    # Light left past the found ends, as an SNR against the sky beside the trail: a
    # satellite's trail is cut off (≈ 0 at both ends); the ends are found where the light falls
    # to half its level, so a meteor's fainter rise and fade lie past them (docs/training.md,
    # "Light past the trail's ends").
    beyond_dim: float = 0.0  # the dimmer end's
    beyond_bright: float = 0.0  # the brighter end's


def _ordered(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
    if (x2, y2) < (x1, y1):
        return x2, y2, x1, y1
    return x1, y1, x2, y2


# ------------------------------------------------------------------ relations between segments


@dataclass(frozen=True)
class Relation:
    """How segment b sits relative to segment a."""

    angle_deg: float  # 0..90, undirected
    gap_px: float  # along their common axis: > 0 apart, < 0 overlapping
    offset_px: float  # perpendicular distance between the lines at the junction
    length_ratio: float  # longer / shorter


def relate(a: Streak, b: Streak) -> Relation:
    ua = np.array([a.x2 - a.x1, a.y2 - a.y1], float)
    ub = np.array([b.x2 - b.x1, b.y2 - b.y1], float)
    la, lb = float(np.hypot(*ua)), float(np.hypot(*ub))
    ua = ua / la if la > 0 else np.array([1.0, 0.0])
    ub = ub / lb if lb > 0 else ua
    if float(ua @ ub) < 0:
        ub = -ub
    angle = math.degrees(math.acos(min(1.0, abs(float(ua @ ub)))))
    axis = ua + ub
    axis /= np.hypot(*axis)
    pa = np.array([[a.x1, a.y1], [a.x2, a.y2]])
    pb = np.array([[b.x1, b.y1], [b.x2, b.y2]])
    ta, tb = np.sort(pa @ axis), np.sort(pb @ axis)
    gap = float(max(tb[0] - ta[1], ta[0] - tb[1]))
    # Perpendicular distance, measured at the ends that face each other.
    if tb[0] - ta[1] >= ta[0] - tb[1]:  # b after a along the axis
        ea, eb = pa[np.argmax(pa @ axis)], pb[np.argmin(pb @ axis)]
    else:
        ea, eb = pa[np.argmin(pa @ axis)], pb[np.argmax(pb @ axis)]
    na = np.array([-ua[1], ua[0]])
    nb = np.array([-ub[1], ub[0]])
    offset = max(abs(float((eb - pa[0]) @ na)), abs(float((ea - pb[0]) @ nb)))
    ratio = max(la, lb) / max(min(la, lb), 1e-6)
    return Relation(angle, gap, offset, ratio)


def angle_between(a: Streak, b: Streak) -> float:
    """Undirected angle between two segments, degrees 0..90."""
    d = abs(a.angle_deg - b.angle_deg) % 180.0
    return min(d, 180.0 - d)


def merge(a: Streak, b: Streak) -> Streak:
    """One segment spanning both (collinear fragments of the same streak)."""
    pts = np.array([[a.x1, a.y1], [a.x2, a.y2], [b.x1, b.y1], [b.x2, b.y2]], float)
    u = np.array([a.x2 - a.x1, a.y2 - a.y1], float) * a.length_px
    v = np.array([b.x2 - b.x1, b.y2 - b.y1], float) * b.length_px
    if float(u @ v) < 0:
        v = -v
    d = u + v
    d = d / max(float(np.hypot(*d)), 1e-9)
    t = pts @ d
    p, q = pts[np.argmin(t)], pts[np.argmax(t)]
    ys = np.concatenate([a.pixels[0], b.pixels[0]])
    xs = np.concatenate([a.pixels[1], b.pixels[1]])
    kind = "dotted" if (a.dotted or b.dotted) else "line"
    widths = [w for w in (a.fwhm_px, b.fwhm_px) if w > 0]
    return Streak(*_ordered(p[0], p[1], q[0], q[1]), width_px=max(a.width_px, b.width_px),
                  peak=max(a.peak, b.peak), kind=kind, dots=a.dots + b.dots,
                  period_px=max(a.period_px, b.period_px),
                  fwhm_px=min(widths) if widths else 0.0, pixels=(ys, xs))


# ------------------------------------------------------------------ per-frame analysis


def sample_bilinear(image: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                    outside: float = 0.0) -> np.ndarray:
    """`image` at sub-pixel points (xs, ys: any equal shapes), bilinear, `outside` beyond its
    edges, in `image`'s dtype: nearest sampling along a tilted line beats against the pixel
    grid into fake periodic dots."""
    return cv2.remap(image, xs.astype(np.float32), ys.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=outside)


def robust_spread(values: np.ndarray) -> tuple[float, float]:
    """(median, q84 − median): a noise scale that also works on a difference clipped at 0."""
    if values.dtype == np.uint8:  # the same quantiles of the same values, sorted by counting
        counts = np.bincount(values.ravel(), minlength=256)
        values = np.repeat(np.arange(256, dtype=np.uint8), counts)
    q50, q84 = np.percentile(values, (50, 84))
    return float(q50), float(q84 - q50)


def _pca(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Centre, unit direction, variance along and across."""
    c = np.array([xs.mean(), ys.mean()])
    dx, dy = xs - c[0], ys - c[1]
    cxx, cyy, cxy = float(dx @ dx) / len(xs), float(dy @ dy) / len(xs), float(dx @ dy) / len(xs)
    theta = 0.5 * math.atan2(2 * cxy, cxx - cyy)
    half = (cxx + cyy) / 2
    root = math.sqrt(((cxx - cyy) / 2) ** 2 + cxy**2)
    return c, np.array([math.cos(theta), math.sin(theta)]), half + root, max(half - root, 0.0)


def regular_spacing(positions: np.ndarray, tolerance: float = 0.25) -> float:
    """Median spacing if sorted positions are evenly spaced (gaps of whole periods allowed),
    else 0."""
    gaps = np.diff(np.sort(positions))
    if len(gaps) < 2:
        return 0.0
    base = float(np.median(gaps))
    if base <= 0:
        return 0.0
    ratio = gaps / base
    whole = np.round(ratio)
    if np.any(whole < 1) or np.any(np.abs(ratio - whole) > tolerance):
        return 0.0
    if np.count_nonzero(whole == 1) < 0.6 * len(gaps):
        return 0.0
    return base


@dataclass(frozen=True)
class Blob:
    """A large changed region that is not line-like (cloud edge, moon glow, overlay text)."""

    pixels: tuple[np.ndarray, np.ndarray]  # downscaled (ys, xs)
    elongation: float


class DiffAnalysis:
    """One positive difference image, downscaled and noise-normalised; streaks on demand."""

    def __init__(self, difference: np.ndarray, params: StreakParams | None = None) -> None:
        if difference.dtype != np.uint8 or difference.ndim != 2 or difference.size == 0:
            raise ValueError("difference must be a non-empty 2-D uint8 array")
        self.params = params or StreakParams()
        self.difference = difference
        h, w = difference.shape
        self.factor = max(1, round(w / self.params.analysis_width))
        sw, sh = max(1, w // self.factor), max(1, h // self.factor)
        self.scale = (w / sw, h / sh)  # full pixels per downscaled pixel, x and y
        # In float: rounding the block means to integers would quantise the noise (σ ≈ 1.5).
        self.small = difference.astype(np.float32)
        if self.factor > 1:
            self.small = cv2.resize(self.small, (sw, sh), interpolation=cv2.INTER_AREA)
        step = 2 if self.small.size > 40_000 else 1
        self.base, spread = robust_spread(self.small[::step, ::step])
        self.spread = max(spread, 0.25)

    # -- cheap, every frame

    def changed_fraction(self, base: float, spread: float, k: float) -> float:
        """Share of downscaled pixels brighter than base + k·spread."""
        return float(np.count_nonzero(self.small > base + k * spread)) / self.small.size

    def _local_norm(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`image` in units of its *local* noise, and that noise per pixel. Shot noise is
        several times higher near the Moon, in twilight or under lit cloud than in a dark sky:
        one global σ would miss faint streaks in the dark or find noise all around the Moon."""
        t = self.params.tile
        h, w = image.shape
        ny, nx = max(1, h // t), max(1, w // t)
        th, tw = h // ny, w // nx
        tiles = image[: ny * th, : nx * tw].reshape(ny, th, nx, tw)[:, ::2, :, ::2]
        values = tiles.transpose(0, 2, 1, 3).reshape(ny, nx, -1)
        # q75 − q50 (= 0.674 σ) tolerates a bright streak covering up to a quarter of a tile.
        q50, q75 = np.percentile(values, (50, 75), axis=2)
        q50 = q50.astype(np.float32)
        spread = np.maximum((q75 - q50) / 0.674, max(0.7 * self.spread, 0.25)).astype(np.float32)
        size = (w, h)
        base = cv2.resize(q50, size, interpolation=cv2.INTER_LINEAR)
        spread = cv2.resize(spread, size, interpolation=cv2.INTER_LINEAR)
        return (image - base) / spread, spread

    @cached_property
    def norm(self) -> np.ndarray:
        """The downscaled difference in units of its local noise (diffuse changes included)."""
        norm, self._spread_map = self._local_norm(self.small)
        return norm

    @cached_property
    def ridge(self) -> np.ndarray:
        """Thin structure only, in local noise units: the downscaled difference minus its
        running median over ridge_window pixels. The median follows the diffuse change of
        clouds, glows and twilight, so a meteor crossing a moving cloud stands out as it
        would on open sky; lines up to about half the window wide survive."""
        k = self.params.ridge_window
        level = np.clip(self.small + 0.5, 0, 255).astype(np.uint8)
        background = cv2.medianBlur(level, k).astype(np.float32)
        ridge, _ = self._local_norm(self.small - background)
        return ridge

    def _noise_scale(self, x: float, y: float) -> float:
        """Local noise at full-frame (x, y) relative to the frame's typical noise."""
        _ = self.norm  # measures the local noise map
        spread = self._spread_map
        xi = min(max(int(x / self.scale[0]), 0), spread.shape[1] - 1)
        yi = min(max(int(y / self.scale[1]), 0), spread.shape[0] - 1)
        return max(1.0, float(spread[yi, xi]) / self.spread)

    def sigma_at(self, x: float, y: float) -> float:
        """Noise σ of the full-resolution difference at full-frame (x, y)."""
        return self.full_noise[1] * self._noise_scale(x, y)

    def to_full(self, x: float, y: float) -> tuple[float, float]:
        return (x + 0.5) * self.scale[0] - 0.5, (y + 0.5) * self.scale[1] - 0.5

    def to_small(self, x: float, y: float) -> tuple[float, float]:
        return (x + 0.5) / self.scale[0] - 0.5, (y + 0.5) / self.scale[1] - 0.5

    # -- on demand

    @cached_property
    def full_noise(self) -> tuple[float, float]:
        """(median, σ) of the full-resolution difference, from a subsample."""
        base, spread = robust_spread(self.difference[::4, ::4])
        return base, max(spread, 1.0)

    @cached_property
    def _found(self) -> tuple[list[Streak], list[Blob]]:
        lines, blobs = self._components()
        # A row of dots lying on a found line is that line's own texture (the ridge filter
        # pits a wide trail); whether a line is dotted is for its light profile to say.
        rows = [r for r in self._dot_rows() if not any(_covers(s, r) for s in lines)]
        lines = merge_fragments(lines + rows, self.factor, self.remeasure)
        lines = [s for s in lines if s.length_px >= self.params.min_length_px]
        lines.sort(key=lambda s: s.strength, reverse=True)
        return lines[: self.params.max_streaks], blobs

    @property
    def streaks(self) -> list[Streak]:
        """Line-like streaks and dotted rows, strongest first."""
        return self._found[0]

    @property
    def blobs(self) -> list[Blob]:
        """Significant changed regions that are not line-like."""
        return self._found[1]

    def _labels(self, image: np.ndarray, k: float):
        binary = (image >= k).astype(np.uint8)
        grown = cv2.dilate(binary, _KERNEL3)  # bridge one-pixel breaks in faint streaks
        _, labels, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
        extent = np.hypot(stats[1:, 2] - 2, stats[1:, 3] - 2)
        return binary, labels, stats, extent

    def _components(self) -> tuple[list[Streak], list[Blob]]:
        """Line-like components of the ridge image (thin lines, also across moving clouds)
        and of the plain normalised image (wide, bright trails the ridge filter hollows out);
        the rest of the plain image's large components are the diffuse blobs."""
        lines, _ = self._lines_in(self.ridge, hough=True)
        wide, rest = self._lines_in(self.norm, hough=False)
        lines = merge_fragments(lines + wide, self.factor, self.remeasure)
        return lines, self._blobs(rest, lines)

    def _lines_in(self, image: np.ndarray, hough: bool):
        p = self.params
        min_len = p.min_length_px / self.factor
        binary, labels, stats, extent = self._labels(image, p.k_sigma)
        # Half-length pieces too: a faint streak breaks into collinear fragments, merged later.
        big = np.nonzero(extent >= min_len / 2)[0] + 1
        big = big[np.argsort(-stats[big, cv2.CC_STAT_AREA])][: p.max_components]
        lines: list[Streak] = []
        rest: list[tuple[np.ndarray, np.ndarray]] = []
        for i in big:
            x, y, w, h = stats[i, :4]
            crop = (labels[y:y + h, x:x + w] == i) & (binary[y:y + h, x:x + w] > 0)
            ys, xs = np.nonzero(crop)
            if len(xs) < 3 or image[y:y + h, x:x + w][crop].max() < p.seed_k_sigma:
                continue
            ys, xs = ys + y, xs + x
            streak = self._fit_line(xs, ys, image)
            if streak is not None:
                lines.append(streak)
            elif extent[i - 1] >= min_len:
                rest.append((ys, xs))
                if hough and extent[i - 1] >= 2 * min_len:  # lines crossing each other
                    lines += self._hough_lines(xs, ys, x, y, w, h)
        return lines, rest

    def _blobs(self, rest: list[tuple[np.ndarray, np.ndarray]],
               lines: list[Streak]) -> list[Blob]:
        """The non-line components, less the pixels along any streak."""
        near = np.zeros(self.small.shape, np.uint8)
        for s in lines:
            a, b = self.to_small(s.x1, s.y1), self.to_small(s.x2, s.y2)
            cv2.line(near, (round(a[0]), round(a[1])), (round(b[0]), round(b[1])), 1,
                     int(2 * s.width_px / self.factor + 3))
        blobs = []
        for ys, xs in rest:
            keep = near[ys, xs] == 0
            if np.count_nonzero(keep) < 3:
                continue
            ys, xs = ys[keep], xs[keep]
            _, _, l1, l2 = _pca(xs.astype(float), ys.astype(float))
            blobs.append(Blob((ys, xs), math.sqrt(l1 / max(l2, 1 / 12))))
        return blobs

    def _fit_line(self, xs: np.ndarray, ys: np.ndarray, image: np.ndarray) -> Streak | None:
        """A Streak if these downscaled pixels form a line (or a piece of one), else None."""
        p = self.params
        c, d, _, across = _pca(xs.astype(float), ys.astype(float))
        t = (xs - c[0]) * d[0] + (ys - c[1]) * d[1]
        length = float(t.max() - t.min())
        width = max(1.0, math.sqrt(12 * across))
        if length * self.factor < p.min_length_px / 2 or (length + 1) / width < p.min_elongation:
            return None
        a, b = c + t.min() * d, c + t.max() * d
        if self._along(a, b, image) < p.line_k_sigma:
            return None
        return self.measure_segment(a, b, width * self.factor, (ys, xs))

    def _along(self, a: np.ndarray, b: np.ndarray, image: np.ndarray) -> float:
        """Median noise-normalised level along a downscaled segment (best of ±1 px across):
        a streak is bright all along, a chain of noise hanging off a bright star is not."""
        norm = image
        n = max(int(np.hypot(*(b - a))), 2)
        u = (b - a) / max(float(np.hypot(*(b - a))), 1e-9)
        t = np.linspace(0.0, 1.0, n)
        best = np.full(n, -np.inf, np.float32)
        for off in (-1, 0, 1):
            xs = np.clip(np.round(a[0] + t * (b[0] - a[0]) - off * u[1]).astype(int), 0,
                         norm.shape[1] - 1)
            ys = np.clip(np.round(a[1] + t * (b[1] - a[1]) + off * u[0]).astype(int), 0,
                         norm.shape[0] - 1)
            best = np.maximum(best, norm[ys, xs])
        return float(np.median(best))

    def _hough_lines(self, xs, ys, x0, y0, w, h) -> list[Streak]:
        """Straight lines inside a non-linear blob (a streak crossing another streak or a
        cloud edge): segments with full support along them and empty bands beside them."""
        p = self.params
        crop = np.zeros((h, w), np.uint8)
        crop[ys - y0, xs - x0] = 255
        min_len = max(p.min_length_px / self.factor, 8)
        segs = cv2.HoughLinesP(crop, 1, np.pi / 180, int(min_len), minLineLength=min_len,
                               maxLineGap=2)
        out: list[Streak] = []
        if segs is None:
            return out
        taken = np.zeros_like(crop, bool)
        segs = segs.reshape(-1, 4).astype(float)  # OpenCV 4 gives (N, 1, 4), 5 gives (N, 4)
        for sx1, sy1, sx2, sy2 in sorted(segs, key=lambda s: -math.hypot(
                s[2] - s[0], s[3] - s[1]))[:6]:
            length = math.hypot(sx2 - sx1, sy2 - sy1)
            n = max(int(length), 2)
            tx = np.linspace(sx1, sx2, n)
            ty = np.linspace(sy1, sy2, n)
            nx, ny = -(sy2 - sy1) / length, (sx2 - sx1) / length

            def occupancy(off: float, tx=tx, ty=ty, nx=nx, ny=ny) -> float:
                cx = np.clip(np.round(tx + off * nx).astype(int), 0, w - 1)
                cy = np.clip(np.round(ty + off * ny).astype(int), 0, h - 1)
                return float(np.mean(crop[cy, cx] > 0))

            on = max(occupancy(0), occupancy(-0.7), occupancy(0.7))
            side = max(occupancy(-3.5), occupancy(3.5))
            cx = np.clip(np.round(tx).astype(int), 0, w - 1)
            cy = np.clip(np.round(ty).astype(int), 0, h - 1)
            if on < 0.8 or side > 0.3 or taken[cy, cx].mean() > 0.5:
                continue
            a = np.array([sx1 + x0, sy1 + y0], float)
            b = np.array([sx2 + x0, sy2 + y0], float)
            if self._along(a, b, self.ridge) < p.line_k_sigma:
                continue
            taken[cy, cx] = True
            near = np.abs((xs - a[0]) * nx + (ys - a[1]) * ny) <= 1.5
            out.append(self.measure_segment(a, b, float(self.factor), (ys[near], xs[near])))
        return out

    def remeasure(self, streak: Streak) -> Streak:
        """A joined streak measured again along its whole length."""
        if streak.dotted and streak.fwhm_px == 0:  # a row of isolated dots: nothing to trace
            return streak
        a = np.array(self.to_small(streak.x1, streak.y1))
        b = np.array(self.to_small(streak.x2, streak.y2))
        return self.measure_segment(a, b, streak.width_px, streak.pixels)

    def measure_segment(self, a: np.ndarray, b: np.ndarray, width: float,
                        pixels: tuple[np.ndarray, np.ndarray]) -> Streak:
        """Downscaled endpoints → full-frame Streak, refined on the full-resolution profile."""
        x1, y1 = self.to_full(*a)
        x2, y2 = self.to_full(*b)
        x1, y1, x2, y2, peak, dots, period, fwhm = self._refine(x1, y1, x2, y2)
        h, w = self.difference.shape
        x1, x2 = min(max(x1, 0.0), w - 1.0), min(max(x2, 0.0), w - 1.0)
        y1, y2 = min(max(y1, 0.0), h - 1.0), min(max(y2, 0.0), h - 1.0)
        kind = "dotted" if dots else "line"
        return Streak(*_ordered(x1, y1, x2, y2), width_px=width, peak=peak, kind=kind,
                      dots=dots, period_px=period, fwhm_px=fwhm, pixels=pixels)

    def _sample(self, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """The full-resolution difference at sub-pixel points (0 outside), float32."""
        return sample_bilinear(self.difference, px, py).astype(np.float32)

    def _profile(self, x1, y1, ux, uy, t0, t1, half) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
        """Every pixel along the line: the max and the sum of the full-resolution difference
        across ±half pixels (the max finds the trail's ends; the sum is its light per pixel of
        length, free of the pixel-grid ripple an anti-aliased thin line has in its max)."""
        ts = np.arange(t0, t1 + 0.5, 1.0)
        offs = np.arange(-half, half + 1, dtype=float)
        vals = self._sample(x1 + ts[:, None] * ux - offs[None, :] * uy,
                            y1 + ts[:, None] * uy + offs[None, :] * ux)
        return ts, vals.max(axis=1), vals.sum(axis=1)

    def _refine(self, x1, y1, x2, y2):
        """Endpoints where the full-resolution profile falls to half its typical level, the
        peak, and periodic peaks along it (aircraft strobes on a steady light)."""
        length = math.hypot(x2 - x1, y2 - y1)
        if length < 1:
            return x1, y1, x2, y2, 0.0, 0, 0.0, 0.0
        ux, uy = (x2 - x1) / length, (y2 - y1) / length
        f = self.factor
        margin, half = 3 * f + 4, f + 1
        ts, prof, light = self._profile(x1, y1, ux, uy, -margin, length + margin, half)
        base = self.full_noise[0]
        sigma = self.sigma_at((x1 + x2) / 2, (y1 + y2) / 2)
        inner = (ts >= 0) & (ts <= length)
        typical = float(np.median(prof[inner])) if inner.any() else 0.0
        level = max(base + self.params.edge_k_sigma * sigma, base + 0.5 * (typical - base))
        smooth = np.convolve(prof, np.ones(3) / 3, mode="same")
        above = np.nonzero(smooth >= level)[0]
        t_lo, t_hi = 0.0, length
        if len(above):
            allow = 2 * f + 2
            runs = np.split(above, np.nonzero(np.diff(above) > allow)[0] + 1)
            keep = [r for r in runs if ts[r[-1]] >= 0 and ts[r[0]] <= length]
            if keep:
                lo, hi = float(ts[keep[0][0]]), float(ts[keep[-1][-1]])
                if hi - lo >= 0.5 * length:
                    t_lo, t_hi = lo, hi
        seg = (ts >= t_lo) & (ts <= t_hi)
        peak = float(prof[seg].max()) if seg.any() else 0.0
        width = 2 * half + 1
        dots, period = self._periodic(ts[seg], light[seg] - width * base,
                                      sigma * math.sqrt(width))
        fwhm = self._cross_width(x1, y1, ux, uy, t_lo, t_hi)
        return (x1 + t_lo * ux, y1 + t_lo * uy, x1 + t_hi * ux, y1 + t_hi * uy, peak, dots,
                period, fwhm)

    def _cross_width(self, x1, y1, ux, uy, t_lo, t_hi, reach: int = 16) -> float:
        """Full width at half maximum of the light across the trail, full pixels: a meteor or
        satellite is as sharp as the optics (a few px); the moving edge of a cloud is a soft
        band as wide as the cloud moved. Rows are averaged in groups of four and re-centred
        on their peak (the fitted axis may be a pixel off at the ends), then the median row
        is measured above the brighter of its two outer flanks (a trail crossing a cloud
        front sits on a pedestal on one side)."""
        ts = np.arange(t_lo, t_hi + 0.5, 1.0)
        groups = len(ts) // 4
        if groups < 3:
            return 0.0
        ts = ts[: 4 * groups]
        offs = np.arange(-reach - 3, reach + 4, dtype=float)
        vals = self._sample(x1 + ts[:, None] * ux - offs[None, :] * uy,
                            y1 + ts[:, None] * uy + offs[None, :] * ux)
        rows = vals.reshape(groups, 4, -1).mean(axis=1)
        mid = reach + 3
        shift = np.argmax(rows[:, mid - 3: mid + 4], axis=1) - 3
        idx = mid + shift[:, None] + np.arange(-reach, reach + 1)[None, :]
        prof = np.median(np.take_along_axis(rows, idx, axis=1), axis=0)
        base = max(float(np.median(prof[:4])), float(np.median(prof[-4:])))
        top = float(prof[reach]) - base
        if top <= 0:  # as bright out at ±reach as on the axis: a band wider than we look
            return float(2 * reach + 1)
        above = prof - base >= 0.5 * top
        lo = hi = reach
        while lo > 0 and above[lo - 1]:
            lo -= 1
        while hi < len(prof) - 1 and above[hi + 1]:
            hi += 1
        return float(hi - lo + 1)

    def steadiness(self, streak: Streak) -> TrailLight:
        """How the light runs along a trail: a satellite's is even from an abrupt start to an
        abrupt end, a meteor's brightens and fades.

        The light per pixel of length is followed along the streak's line and 40 % beyond each
        end, smoothed over a twentieth of the length. box = 1 − (w20 − w80) / w20, where wNN is
        the extent above NN % of its plateau (the 90th percentile on the trail): 1 for a trail
        uniformly bright from an abrupt start to an abrupt end (a satellite crossing for the
        whole exposure), 0.2–0.5 for a meteor's rise and fade. snr is the plateau over the
        noise of the smoothed profile. The rest describe the profile on the trail scaled by its
        95th percentile (`TrailLight`): a meteor's rising end is dim, a satellite's ends are
        not. All 0 below 20 px.
        """
        length = streak.length_px
        if length < 20:
            return TrailLight()
        ux, uy = (streak.x2 - streak.x1) / length, (streak.y2 - streak.y1) / length
        half = self.factor + 1
        reach = 0.4 * length + 10
        ts, _, light = self._profile(streak.x1, streak.y1, ux, uy, -reach, length + reach, half)
        beyond = self._beyond_ends(streak, ux, uy, ts, light, half, length)
        outside = (ts < -5) | (ts > length + 5)
        light -= float(np.median(light[outside]))
        w = max(3, int(length / 20))
        smooth = np.convolve(light, np.ones(w) / w, mode="same")
        on_trail = smooth[(ts >= 0) & (ts <= length)]
        plateau = float(np.percentile(on_trail, 90))
        sigma = self.sigma_at((streak.x1 + streak.x2) / 2, (streak.y1 + streak.y2) / 2)
        snr = plateau / (sigma * math.sqrt((2 * half + 1) / w))
        if plateau <= 0:
            return TrailLight(snr=snr, **beyond)

        def extent(level: float) -> int:
            idx = np.nonzero(smooth > level * plateau)[0]
            return int(idx[-1] - idx[0] + 1) if len(idx) else 0

        w20, w80 = extent(0.2), extent(0.8)
        box = 1.0 - (w20 - w80) / w20 if w20 else 0.0
        n = len(on_trail)
        top = float(np.percentile(on_trail, 95))
        if n < 8 or top <= 0:
            return TrailLight(box, snr, **beyond)
        scaled = on_trail / top
        first, last = float(scaled[: n // 4].mean()), float(scaled[3 * n // 4:].mean())
        return TrailLight(
            box, snr, end_light=min(first, last), end_imbalance=abs(first - last),
            end_bright=max(first, last), middle=float(scaled[n // 4: 3 * n // 4].mean()),
            variation=float(scaled.std() / max(float(scaled.mean()), 1e-6)),
            peak_offset=abs(float(np.argmax(scaled)) / (n - 1) - 0.5) * 2, **beyond)

    def _beyond_ends(self, streak: Streak, ux: float, uy: float, ts: np.ndarray,
                     light: np.ndarray, half: int, length: float) -> dict[str, float]:
        """`TrailLight.beyond_dim` / `beyond_bright`: the light per pixel of length past each end
        (from 2 px to `ts`' reach) over the same band's sky, taken beside the trail on both
        sides (clear of its width), in units of that mean's noise."""
        off = 2 * half + 4
        sky = [self._profile(streak.x1 + side * off * -uy, streak.y1 + side * off * ux, ux, uy,
                             float(ts[0]), float(ts[-1]), half)[2] for side in (1, -1)]
        background = (sky[0] + sky[1]) / 2
        # One band's noise per sample: the two bands' difference spreads √2 times as much.
        noise = float(np.std(sky[0] - sky[1])) / math.sqrt(2)
        snrs = []
        for past in (ts < -2, ts > length + 2):
            n = int(past.sum())
            if n < 4 or noise <= 0:
                snrs.append(0.0)
                continue
            excess = float(np.mean(light[past] - background[past]))
            snrs.append(excess / (noise / math.sqrt(n)))
        return {"beyond_dim": min(snrs), "beyond_bright": max(snrs)}

    def _periodic(self, ts, prof, sigma) -> tuple[int, float]:
        """Count of regularly spaced, deeply modulated peaks (strobes) in a light profile
        above its background, 0 if not periodic."""
        p = self.params
        base = 0.0
        if len(prof) < 5:
            return 0, 0.0
        level = p.dot_k_sigma * sigma
        local = (prof[1:-1] >= prof[:-2]) & (prof[1:-1] > prof[2:]) & (prof[1:-1] >= level)
        idx = np.nonzero(local)[0] + 1
        if len(idx) < p.min_dots:
            return 0, 0.0
        # Keep peaks separated from the previous kept one by a trough below half their height
        # and a dip noise cannot make (a meteor's noisy, fading tail must not pass).
        kept = [idx[0]]
        for i in idx[1:]:
            j = kept[-1]
            lower = min(prof[i], prof[j]) - base
            trough = float(prof[j:i + 1].min()) - base
            if trough <= 0.5 * lower and lower - trough >= 4 * sigma:
                kept.append(i)
            elif prof[i] > prof[j]:
                kept[-1] = i
        if len(kept) < p.min_dots:
            return 0, 0.0
        heights = prof[np.array(kept)]
        if heights.max() > 3 * heights.min():  # strobes flash alike
            return 0, 0.0
        pos = ts[np.array(kept)]
        if pos[-1] - pos[0] < 0.5 * (ts[-1] - ts[0]):
            return 0, 0.0
        period = regular_spacing(pos)
        return (len(kept), period) if period > 0 else (0, 0.0)

    def _peak_near(self, x: float, y: float) -> float:
        r = self.factor + 1
        h, w = self.difference.shape
        xi, yi = round(x), round(y)
        win = self.difference[max(yi - r, 0):min(yi + r + 1, h), max(xi - r, 0):min(xi + r + 1, w)]
        return float(win.max()) if win.size else 0.0

    def _dot_rows(self) -> list[Streak]:
        """Rows of isolated, evenly spaced bright dots: strobes without a visible steady light."""
        p = self.params
        binary = (self.ridge >= p.dot_k_sigma).astype(np.uint8)
        n, _, stats, cents = cv2.connectedComponentsWithStats(binary, connectivity=8)
        if n - 1 < max(p.min_dots, 6):
            return []
        small = np.hypot(stats[1:, 2], stats[1:, 3]) < p.min_length_px / self.factor
        cents = cents[1:][small]
        if len(cents) < p.min_dots:
            return []
        if len(cents) > 400:  # keep the largest: strobes are bright
            order = np.argsort(-stats[1:, cv2.CC_STAT_AREA][small])[:400]
            cents = cents[order]
        pts = np.column_stack(self.to_full(cents[:, 0], cents[:, 1]))
        dist = np.hypot(pts[:, None, 0] - pts[None, :, 0], pts[:, None, 1] - pts[None, :, 1])
        tol = self.factor + 1.0
        min_gap = 2.0 * self.factor
        need = max(p.min_dots, 6)  # isolated dots line up by chance more easily than peaks
        spaced = (dist >= min_gap) & (dist <= p.max_dot_spacing_px)
        used = np.zeros(len(pts), bool)
        finished = np.zeros(len(pts), bool)  # a row was found from this dot
        rows: list[Streak] = []
        # Each pair of dots at a strobe's spacing proposes the line through them (i ascending,
        # then j); only the few pairs that could make a row are worth the chain walk below.
        for i, j in _row_proposals(pts, dist, spaced, tol,
                                   (need - 1) * p.max_dot_spacing_px, need):
            if used[i] or used[j] or finished[i]:
                continue
            rel = pts - pts[i]
            u = (pts[j] - pts[i]) / dist[i, j]
            inl = np.nonzero((np.abs(rel @ np.array([-u[1], u[0]])) <= tol) & ~used)[0]
            if len(inl) < need:  # the chain is drawn from these
                continue
            t = rel @ u
            inl = inl[np.argsort(t[inl])]
            chain = _chain(t[inl], i_pos=float(t[i]), max_gap=p.max_dot_spacing_px,
                           min_gap=min_gap)
            members = inl[chain]
            if len(members) < need:
                continue
            period = regular_spacing(t[members])
            if period <= 0:
                continue
            peaks = [self._peak_near(x, y) for x, y in pts[members]]
            if max(peaks) > 3 * max(min(peaks), 1.0):  # strobes flash alike
                continue
            c, d, _, _ = _pca(pts[members, 0], pts[members, 1])
            tt = (pts[members] - c) @ d
            a, b = c + tt.min() * d, c + tt.max() * d
            used[members] = True
            peak = max(peaks)
            ys = np.round(cents[members, 1]).astype(np.int32)
            xs = np.round(cents[members, 0]).astype(np.int32)
            rows.append(Streak(*_ordered(a[0], a[1], b[0], b[1]),
                               width_px=float(self.factor), peak=peak, kind="dotted",
                               dots=len(members), period_px=period, pixels=(ys, xs)))
            finished[i] = True
        return rows


def _row_proposals(pts: np.ndarray, dist: np.ndarray, spaced: np.ndarray, tol: float,
                   reach: float, need: int) -> list[tuple[int, int]]:
    """The pairs (i, j) of `spaced` dots whose line could hold a row of `need` dots through i:
    at least `need` dots within `tol` of it and `reach` of dot i along it (a chain of `need`
    steps of at most max_gap from i stays that close). A necessary condition, checked with a
    hair of slack, so no row the chain walk would find is lost; in pair order."""
    ii, jj = np.nonzero(spaced)
    slack = 1e-6
    keep = []
    for lo in range(0, len(ii), 512):  # bounded memory: (dots × 512) per block
        i, j = ii[lo:lo + 512], jj[lo:lo + 512]
        ux = (pts[j, 0] - pts[i, 0]) / dist[i, j]
        uy = (pts[j, 1] - pts[i, 1]) / dist[i, j]
        rx = pts[:, 0, None] - pts[None, i, 0]
        ry = pts[:, 1, None] - pts[None, i, 1]
        near = ((np.abs(ry * ux - rx * uy) <= tol + slack)
                & (np.abs(rx * ux + ry * uy) <= reach + slack))
        keep.append(np.count_nonzero(near, axis=0) >= need)
    if not keep:
        return []
    chosen = np.concatenate(keep)
    return list(zip(ii[chosen].tolist(), jj[chosen].tolist(), strict=True))


def _chain(t: np.ndarray, i_pos: float, max_gap: float, min_gap: float) -> np.ndarray:
    """Indices (into sorted t) of the run containing i_pos whose steps are min_gap..max_gap."""
    if len(t) == 0:
        return np.zeros(0, int)
    start = int(np.argmin(np.abs(t - i_pos)))
    members = [start]
    last = t[start]
    for k in range(start + 1, len(t)):
        step = t[k] - last
        if step < min_gap:
            continue  # a double detection of the same dot
        if step > max_gap:
            break
        members.append(k)
        last = t[k]
    last = t[start]
    for k in range(start - 1, -1, -1):
        step = last - t[k]
        if step < min_gap:
            continue
        if step > max_gap:
            break
        members.insert(0, k)
        last = t[k]
    return np.array(members, int)


def _covers(line: Streak, other: Streak) -> bool:
    """Whether `other` lies along `line`, mostly within its length."""
    r = relate(line, other)
    return (r.angle_deg <= 5.0 and -r.gap_px >= 0.5 * other.length_px
            and r.offset_px <= line.width_px + 4.0)


def merge_fragments(lines: list[Streak], factor: int,
                    remeasure: Callable[[Streak], Streak] | None = None) -> list[Streak]:
    """Join collinear pieces of one streak broken by noise, a mask or a star; `remeasure`
    measures each joined streak again over its whole length (ends, peak, dots, width)."""
    lines = list(lines)
    joined: set[int] = set()
    changed = True
    while changed:
        changed = False
        for i in range(len(lines)):
            for j in range(i + 1, len(lines)):
                a, b = lines[i], lines[j]
                if angle_between(a, b) > 4.0:  # cheap test first
                    continue
                r = relate(a, b)
                if (r.angle_deg <= 4.0 and r.offset_px <= 2 * factor + 2
                        and r.gap_px <= 0.3 * (a.length_px + b.length_px)):
                    lines[i] = merge(a, b)
                    del lines[j]
                    joined = {k - (k > j) for k in joined if k != j} | {i}
                    changed = True
                    break
            if changed:
                break
    if remeasure is not None:
        lines = [remeasure(s) if k in joined else s for k, s in enumerate(lines)]
    return lines
