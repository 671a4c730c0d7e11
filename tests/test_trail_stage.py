"""The trail stage (edge/trail_stage.py, training/trail_stage.py): fitted on drawn trails, stored
in a real bundle's manifest, applied by the edge's scorer (onnxruntime) to candidates only."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import BundleError, load_bundle
from edge.model import open_scorer
from edge.streaks import StreakParams
from edge.trail_stage import FEATURES, TrailStage, TrailStageError, trail_features
from tests.drawing import draw_meteor
from tests.test_decide_streaks import SIGMA, H, W, line, pair
from tests.tinymodel import make_tiny_bundle
from training.trail_stage import fit_logistic, fit_stage

PARAMS = StreakParams()


def satellite(seed: int):
    rng = np.random.default_rng(seed)
    x, y = int(rng.integers(200, 700)), int(rng.integers(200, 500))
    p2 = (x + int(rng.integers(200, 400)), y + int(rng.integers(50, 200)))
    return pair(seed, line((x, y), p2, float(rng.uniform(25, 45)), 2))


def meteor(seed: int):
    rng = np.random.default_rng(seed)
    x, y = int(rng.integers(200, 700)), int(rng.integers(200, 500))
    p2 = (x + int(rng.integers(200, 400)), y + int(rng.integers(50, 200)))

    def draw(layer):
        draw_meteor(layer, (x, y), p2, float(rng.uniform(50, 80)), 2, floor=0.0)

    return pair(seed, draw)


@pytest.fixture(scope="module")
def fitted() -> TrailStage:
    # Every candidate scored 0.9 by the model: only the trail's light tells them apart.
    rows = [trail_features(satellite(s), 0.9, PARAMS) for s in range(6)]
    rows += [trail_features(meteor(100 + s), 0.9, PARAMS) for s in range(6)]
    labels = np.array([0] * 6 + [1] * 6)
    return fit_stage(rows, labels, 0.3, PARAMS, FEATURES, {"split": "drawn"})


def test_logistic_fit_is_the_penalised_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = (x @ [1.5, -2.0, 0.0, 0.5] + rng.normal(size=300) > 0).astype(float)
    coef, intercept = fit_logistic(x, y, l2=1.0)
    p = 1 / (1 + np.exp(-(x @ coef + intercept)))
    # The gradient of 0.5·|w|² + Σ log-loss vanishes there (the intercept is not penalised).
    assert np.abs(x.T @ (p - y) + coef).max() < 1e-6
    assert abs(float(np.sum(p - y))) < 1e-6
    assert coef[0] > 1 and coef[1] < -1 and abs(coef[2]) < 0.5


def test_stage_tells_drawn_satellites_from_meteors(fitted: TrailStage):
    assert fitted.fitted_on == {"split": "drawn"}
    # Held-out drawings: new positions, lengths, brightness.
    sats = [fitted.rescore(0.9, satellite(s)) for s in range(50, 54)]
    meteors = [fitted.rescore(0.9, meteor(150 + s)) for s in range(4)]
    assert min(meteors) > max(sats)
    assert all(0.3 <= s <= 1.0 for s in sats + meteors)  # candidates stay above min_score
    # Below min_score a frame is not a candidate: its score passes through untouched.
    assert fitted.rescore(0.2, meteor(150)) == 0.2
    # A frame without any streak: the profile is imputed, the stage still answers.
    assert 0.3 <= fitted.rescore(0.9, pair(7)) <= 1.0


def test_stage_survives_the_manifest_and_refuses_bad_ones(fitted: TrailStage, tmp_path: Path):
    root = make_tiny_bundle(tmp_path / "b")
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    data["trail_stage"] = fitted.to_dict()
    path.write_text(json.dumps(data))
    assert load_bundle(root).manifest.trail_stage == fitted
    assert "trail_stage" in load_bundle(root).manifest.to_dict()

    good = fitted.to_dict()
    bad = {
        "kind": ({**good, "kind": "forest"}, "kind 'forest' not supported"),
        "feature": ({**good, "features": ["score", "colour", *good["features"][2:]]},
                    "unknown features"),
        "length": ({**good, "coef": good["coef"][:-1]}, f"coef needs {len(FEATURES)}"),
        "scale": ({**good, "scale": [0.0] * len(good["scale"])}, "scale must be positive"),
        "params": ({**good, "streak_params": {"k_sigmaa": 3}}, "unknown keys"),
        "missing": ({k: v for k, v in good.items() if k != "intercept"}, "missing key"),
        "min": ({**good, "min_score": 1.5}, "min_score"),
    }
    for stage, message in bad.values():
        path.write_text(json.dumps({**data, "trail_stage": stage}))
        with pytest.raises(BundleError, match=message):
            load_bundle(root)
    with pytest.raises(TrailStageError):
        replace(fitted, intercept=float("nan"))


def frames(draw=None, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prev = np.clip(40 + rng.normal(0, SIGMA, (H, W)), 0, 255).astype(np.uint8)
    cur = 40 + rng.normal(0, SIGMA, (H, W)).astype(np.float32)
    if draw is not None:
        draw(cur)
    return prev, np.clip(cur, 0, 255).astype(np.uint8)


def test_scorer_stages_candidates_only(fitted: TrailStage, tmp_path: Path):
    from edge.preprocess import apply_mask, positive_difference

    def with_stage(root: Path) -> Path:
        path = root / "manifest.json"
        data = json.loads(path.read_text())
        data["trail_stage"] = fitted.to_dict()
        path.write_text(json.dumps(data))
        return root

    # A constant model: 0.5 for every frame (a candidate), or about 0.12 (not one).
    candidate = open_scorer(with_stage(make_tiny_bundle(tmp_path / "c")))
    quiet = open_scorer(with_stage(make_tiny_bundle(tmp_path / "q", bias=(-2.0, 0.0))))
    plain = open_scorer(make_tiny_bundle(tmp_path / "p"))

    def meteor_light(image):
        draw_meteor(image, (300, 400), (620, 520), 70.0, 2, floor=0.0)

    prev, cur = frames(meteor_light)
    assert candidate.model_score(prev, cur) == pytest.approx(0.5)
    expected = fitted.rescore(0.5, positive_difference(prev, cur))
    assert candidate.score(prev, cur) == pytest.approx(expected)
    assert candidate.score(prev, cur) != pytest.approx(0.5)
    assert plain.score(prev, cur) == pytest.approx(0.5)  # no stage: the model's score
    assert quiet.score(prev, cur) == pytest.approx(quiet.model_score(prev, cur))
    # The mask reaches the stage: with the trail masked out, the frame holds no streak.
    mask = np.full((H, W), 255, np.uint8)
    mask[300:650, 250:700] = 0
    masked = candidate.score(prev, cur, mask)
    assert masked == pytest.approx(fitted.rescore(0.5, apply_mask(positive_difference(prev, cur),
                                                                  mask)))
    assert masked != pytest.approx(candidate.score(prev, cur))
