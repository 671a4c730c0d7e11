"""The m1 recall ceiling: the windows it reports are the ones the model is shown, and a meteor
counts as covered only when its trail lies in one of them."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from edge.preprocess import Preprocessor, PreprocessSpec, candidate_windows, read_gray
from tests.drawing import draw_meteor
from training.coverage import candidate_coverage, first_covering_rank, summarise

SPEC = PreprocessSpec(id="m1", size=64, tiles=4)  # 16 windows of 16 px


def _sky(seed: int, shape=(240, 320)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(40, 3, shape).clip(0, 255).astype(np.uint8)


def _jpeg_pair(folder: Path, name: str, meteor: tuple[tuple[int, int], tuple[int, int]] | None,
               seed: int) -> tuple[Path, Path]:
    """Two real JPEG frames of one sky (fresh noise each); `meteor` drawn into the second."""
    folder.mkdir(parents=True, exist_ok=True)
    previous, current = _sky(seed), _sky(seed + 1)
    if meteor is not None:
        draw_meteor(current, *meteor, amp=80.0, thickness=2)
    paths = folder / f"{name}-prev.jpg", folder / f"{name}.jpg"
    for path, image in zip(paths, (previous, current), strict=True):
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return paths


def test_candidate_windows_are_the_tiles_m1_shows(tmp_path: Path):
    prev_path, cur_path = _jpeg_pair(tmp_path, "a", ((60, 50), (200, 120)), seed=1)
    previous, current = read_gray(str(prev_path)), read_gray(str(cur_path))
    corners = candidate_windows(SPEC, previous, current)
    mosaic = Preprocessor(SPEC)(previous, current)
    side = SPEC.size // SPEC.tiles
    assert 0 < len(corners) <= SPEC.tiles**2
    for k, (y0, x0) in enumerate(corners):
        row, col = divmod(k, SPEC.tiles)
        tile = mosaic[row * side:(row + 1) * side, col * side:(col + 1) * side, 2]
        np.testing.assert_array_equal(tile, current[y0:y0 + side, x0:x0 + side])
    # Asking for more windows keeps the first ones, in the same order.
    more = candidate_windows(SPEC, previous, current, count=36)
    assert more[:len(corners)] == corners and len(more) > len(corners)
    # The strongest window sits on the meteor.
    assert first_covering_rank(corners, side, (60, 50, 200, 120)) == 0


def test_first_covering_rank_needs_a_point_of_the_trail_inside():
    corners = [(0, 0), (100, 100)]
    assert first_covering_rank(corners, 40, (110.0, 110.0, 130.0, 120.0)) == 1
    assert first_covering_rank(corners, 40, (10.0, 10.0, 300.0, 300.0)) == 0
    assert first_covering_rank(corners, 40, (200.0, 10.0, 300.0, 20.0)) is None
    # Windows are half-open: x = 40 is the first column outside the first window.
    assert first_covering_rank([(0, 0)], 40, (40.0, 5.0, 60.0, 5.0)) is None


def test_summary_counts_each_meteor_once_per_window_count():
    ranks = [{"peak": 30.0, "rank": 0}, {"peak": 30.0, "rank": 20}, {"peak": 100.0, "rank": None},
             {"peak": 100.0, "rank": 10}]
    s = summarise(ranks, shipped=16, counts=(9, 25))
    assert s["counts"] == [9, 16, 25]
    assert s["covered"] == {"9": 0.25, "16": 0.5, "25": 0.75}
    assert [(b["bin"], b["meteors"], b["covered"]["16"]) for b in s["by_peak"]] == [
        ("20–40", 2, 0.5), ("80–160", 2, 0.5)]


def test_coverage_of_an_index_finds_drawn_meteors_and_misses_absent_ones(tmp_path: Path):
    rows = []
    for k, meteor in enumerate((((40, 40), (150, 90)), ((170, 200), (290, 150)), None)):
        prev_path, cur_path = _jpeg_pair(tmp_path, f"f{k}", meteor, seed=10 * k)
        # The third "meteor" is in the labels only: nothing was drawn where it is said to be,
        # and a pair of identical frames leaves no candidate at all.
        if meteor is None:
            cur_path = prev_path
            meteor = ((100, 100), (140, 120))
        (x1, y1), (x2, y2) = meteor
        rows.append({"label": "meteor", "frame": str(cur_path), "previous": str(prev_path),
                     "meteor_x1": x1, "meteor_y1": y1, "meteor_x2": x2, "meteor_y2": y2,
                     "meteor_peak": 80.0})
    rows.append({"label": "meteor", "frame": str(cur_path), "previous": str(prev_path),
                 "meteor_x1": np.nan, "meteor_y1": np.nan, "meteor_x2": np.nan,
                 "meteor_y2": np.nan, "meteor_peak": np.nan})  # an operator's label: no segment
    rows.append({**rows[0], "label": "no-meteor"})
    coverage = candidate_coverage(pd.DataFrame(rows), SPEC, None)
    assert coverage is not None
    assert coverage["meteors"] == 3 and coverage["windows_shown"] == 16
    assert coverage["covered"]["16"] == pytest.approx(2 / 3)
    json.dumps(coverage)  # goes into metrics.json as it is
    assert candidate_coverage(pd.DataFrame(rows), PreprocessSpec(id="g2", size=64), None) is None


def test_index_takes_the_mosaic_size_for_m1_only(tmp_path: Path, caplog):
    from edge.cli import main

    images, labels = tmp_path / "images" / "20261101", tmp_path / "labels"
    frames = []
    for k in range(3):
        path = images / f"image-20261101210{k}00.jpg"
        images.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), _sky(k))
        frames.append(path)
    (labels / "meteor").mkdir(parents=True)
    (labels / "meteor" / frames[1].name).write_bytes(frames[1].read_bytes())
    base = ["dataset", "index", "--folders", str(labels), "--images", str(tmp_path / "images"),
            "--size", "48", "--workers", "1", "--no-progress", "--valid-frac", "0",
            "--test-frac", "0"]
    assert main([*base, "--out", str(tmp_path / "m1"), "--preprocess", "m1", "--tiles", "3",
                 "--line-width", "160"]) == 0
    spec = json.loads((tmp_path / "m1" / "dataset.json").read_text())["preprocessing"]
    assert (spec["id"], spec["tiles"], spec["line_width"]) == ("m1", 3, 160)
    assert main([*base, "--out", str(tmp_path / "g2"), "--preprocess", "g2", "--tiles", "3"]) == 2
    assert "--tiles applies to --preprocess m1 only" in caplog.text
    assert main([*base, "--out", str(tmp_path / "v4"), "--preprocess", "v4", "--line-width",
                 "640"]) == 2
    assert main([*base, "--out", str(tmp_path / "bad"), "--preprocess", "m1", "--tiles", "5"]) == 2
    assert "divisible" in caplog.text
    # Operator labels carry no segment: nothing to measure, and it says so.
    assert main(["coverage", "--data", str(tmp_path / "m1"), "--split", "train",
                 "--no-progress"]) == 2
    assert "no train meteor frames with a known segment" in caplog.text
