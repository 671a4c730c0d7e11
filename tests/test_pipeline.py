"""The edge pipeline (edge/pipeline.py) with a real ONNX model and real JPEG files: what it hands
the decider, including the second look at a candidate with more pixels masked."""

from __future__ import annotations

from datetime import datetime, timedelta

import cv2
import numpy as np

from edge.config import parse_config
from edge.decide import Decider
from edge.frames import frame_filename, list_frames, night_of
from edge.model import open_scorer
from edge.pipeline import make_pipeline
from tests.tinymodel import make_tiny_bundle


def write_night(root, frames: int = 3) -> None:
    rng = np.random.default_rng(3)
    start = datetime(2024, 8, 12, 23, 0, 0)
    sky = rng.normal(30, 3, (240, 320))
    for i in range(frames):
        image = sky + rng.normal(0, 2, sky.shape)
        if i == frames - 1:  # a bright streak in the last frame only
            line = np.zeros_like(image)
            cv2.line(line, (60, 60), (200, 120), 200.0, 3)
            image += line
        captured = start + timedelta(seconds=30 * i)
        folder = root / night_of(captured)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / frame_filename(captured)), np.clip(image, 0, 255).astype(np.uint8))


def test_the_decider_gets_a_second_look_that_scores_the_same_pair_with_more_masked(
        tmp_path, monkeypatch):
    write_night(tmp_path / "images")
    # The tiny model's meteor probability grows with the mean of the difference it is shown.
    bundle = make_tiny_bundle(tmp_path / "model", bias=(-6.0, 0.0), sensitivity=60.0)
    scorer = open_scorer(bundle)
    seen = []
    push = Decider.push
    monkeypatch.setattr(Decider, "push", lambda self, obs, now=None: (
        seen.append(obs), push(self, obs, now))[1])
    # A static mask rectangle over the streak's right half: it stays masked in the second look.
    cfg = parse_config("[detection]\nthreshold = 0.01\nmask_rects = [[130, 0, 190, 240]]\n")
    pipeline = make_pipeline(cfg, scorer)
    for frame in list_frames(tmp_path / "images" / "20240812"):
        pipeline.process(frame)
    pipeline.flush()
    last = seen[-1]
    assert last.rescore is not None
    keep_all = np.full(last.difference.shape, 255, np.uint8)
    assert abs(last.rescore(keep_all) - last.score) < 1e-6  # same pair, same masks: same score
    hide_streak = keep_all.copy()
    cv2.line(hide_streak, (60, 60), (200, 120), 0, 15)
    assert last.rescore(hide_streak) < last.score - 0.01
    # Masking only what the static mask already hides changes nothing.
    hide_masked = keep_all.copy()
    hide_masked[:, 130:] = 0
    assert abs(last.rescore(hide_masked) - last.score) < 1e-6
