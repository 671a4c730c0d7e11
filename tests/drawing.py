"""Drawing test skies: a meteor's trail as the suppression rules expect a meteor to look."""

from __future__ import annotations

import cv2
import numpy as np


def draw_meteor(image: np.ndarray, p1, p2, amp: float = 60.0, thickness: int = 1,
                a: float = 2.0, b: float = 0.8, floor: float = 0.4) -> None:
    """Add a meteor to `image` (float or uint8, in place): its light brightens and fades along
    the trail, s^a (1 - s)^b on top of `floor` × `amp` (so it is visible end to end where it
    was drawn), peak `amp`. An evenly lit trail with sharp ends is what a satellite leaves,
    and edge/decide.py says so ("steady_trail")."""
    layer = np.zeros(image.shape[:2], np.float32)
    n = max(int(np.hypot(p2[0] - p1[0], p2[1] - p1[1]) / 2), 2)
    edges = np.linspace(0.0, 1.0, n + 1)
    mids = (edges[:-1] + edges[1:]) / 2
    light = mids**a * (1 - mids) ** b
    light = amp * (floor + (1 - floor) * light / light.max())
    for f0, f1, v in zip(edges[:-1], edges[1:], light, strict=True):
        q0 = (round(p1[0] + f0 * (p2[0] - p1[0])), round(p1[1] + f0 * (p2[1] - p1[1])))
        q1 = (round(p1[0] + f1 * (p2[0] - p1[0])), round(p1[1] + f1 * (p2[1] - p1[1])))
        cv2.line(layer, q0, q1, float(v), thickness, lineType=cv2.LINE_AA)
    if image.ndim == 3:
        layer = layer[..., None]
    if image.dtype == np.uint8:
        image[...] = np.clip(image.astype(np.float32) + layer, 0, 255).astype(np.uint8)
    else:
        image += layer
