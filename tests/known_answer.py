"""Known answers for the Pi's scoring path: two real JPEG frames, what every preprocessing
variant makes of them, and what the shipped model scores.

The tests compare today's output with these files exactly, so an update of OpenCV, numpy or
onnxruntime (constraints.txt, `make lock`) that changes one grey level of what the model sees
fails loudly instead of shifting accuracy in silence. After a deliberate change (new
preprocessing code, a retrained shipped model, a checked library update) write them again:

    .venv/bin/python -m tests.known_answer

The frames are a simulated clear night's pair with a bright meteor (training/simulate.py), JPEG
quality 90 as AllSky writes them.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np

from edge.preprocess import Preprocessor, PreprocessSpec, decode_gray

HERE = Path(__file__).resolve().parent / "data" / "known_answer"
REPO = HERE.parents[2]
SHIPPED = REPO / "models" / "guaita-r18-sim"
FRAMES = ("previous.jpg", "current.jpg")
SIZE = 160
VARIANTS = ("v4", "g1", "g2", "m1")


def frames() -> tuple[np.ndarray, np.ndarray]:
    previous, current = (decode_gray((HERE / name).read_bytes()) for name in FRAMES)
    return previous, current


def outputs(previous: np.ndarray, current: np.ndarray) -> dict[str, np.ndarray]:
    return {v: Preprocessor(PreprocessSpec(id=v, size=SIZE))(previous, current)
            for v in VARIANTS}


def shipped_score(previous: np.ndarray, current: np.ndarray) -> tuple[str, float, float]:
    """The shipped bundle's identity (its graphs' sha256s: model.onnx's, then any trail
    classifier's, joined by '+'), its recommended threshold, and its score of the pair."""
    from edge.model import open_scorer

    scorer = open_scorer(SHIPPED)
    manifest = scorer.manifest
    identity = "+".join([manifest.sha256, *(sha for _, sha in manifest.extra_files)])
    return identity, manifest.recommended_threshold, scorer.score(previous, current)


def write_frames(seed: int = 7) -> None:
    """A clear night's first pair whose meteor peaks at 80+ grey levels, as JPEG files."""
    import cv2

    from training import simulate

    rng = np.random.default_rng(seed)
    params = simulate.NightParams.sample(rng, date(2026, 12, 1), "clear", meteor_rate=0.3)
    previous = None
    for sim in simulate.iter_night(params, 200, seed=seed):
        ok, data = cv2.imencode(".jpg", sim.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        peak = float(sim.truth.get("meteor_peak") or 0)
        if previous is not None and peak >= 80:
            (HERE / FRAMES[0]).write_bytes(previous)
            (HERE / FRAMES[1]).write_bytes(data.tobytes())
            return
        previous = data.tobytes()
    raise SystemExit("no bright meteor in 200 frames: try another seed")


def write_answers() -> None:
    previous, current = frames()
    np.savez_compressed(HERE / "preprocessed.npz", **outputs(previous, current))
    sha, _, score = shipped_score(previous, current)
    (HERE / "shipped_score.json").write_text(json.dumps(
        {"bundle_sha256": sha, "score": score}, indent=2) + "\n")
    print(f"wrote {HERE}: shipped model scores the pair {score:.6f}")


if __name__ == "__main__":
    HERE.mkdir(parents=True, exist_ok=True)
    if not all((HERE / name).is_file() for name in FRAMES):
        write_frames()
    write_answers()
