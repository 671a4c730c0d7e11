"""The trail classifier stage (edge/trail_classifier.py) in a real bundle: its second graph is
named and checked by the manifest, loaded by the edge's scorer (onnxruntime), run on every frame
pair's candidate lines, shipped in the release tarball, and refused when it does not fit."""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.bundle import MANIFEST_NAME, BundleError, load_bundle
from edge.model import open_scorer
from edge.trail_classifier import MODEL_FILE, TrailClassifier, TrailClassifierError, logit
from tests.drawing import draw_meteor
from tests.test_candidates import FAINT, along, faint_meteor, frames
from tests.tinymodel import make_tiny_classifier_bundle, meteor_probability


def test_the_score_combines_the_trail_and_the_network():
    stage = TrailClassifier(sha256="0" * 64, trail_weight=2.0, network_weight=0.5, bias=-1.0,
                            empty_logit=-8.0)
    z = 2.0 * 1.5 + 0.5 * logit(0.2) - 1.0
    assert stage.combine(0.2, 1.5) == pytest.approx(1 / (1 + math.exp(-z)))
    z_empty = 2.0 * -8.0 + 0.5 * logit(0.2) - 1.0
    assert stage.combine(0.2, None) == pytest.approx(1 / (1 + math.exp(-z_empty)))
    # A higher trail logit, or a higher network score, never lowers the score.
    assert stage.combine(0.2, 2.0) > stage.combine(0.2, 1.0) > stage.combine(0.2, None)
    assert stage.combine(0.9, 1.0) > stage.combine(0.1, 1.0)
    assert 0.0 <= stage.combine(1.0, -1e6) <= stage.combine(0.0, 1e6) <= 1.0


def test_a_frame_pair_is_scored_by_its_candidates(tmp_path: Path):
    bias = (0.0, 2.0)
    root = make_tiny_classifier_bundle(tmp_path / "b", gain=4.0, offset=-8.0,
                                       weights=(1.0, 0.0, 0.0), bias=bias)
    scorer = open_scorer(root)
    network = meteor_probability(bias)
    meteor = frames(1, faint_meteor(40.0))
    quiet = frames(1)
    verdict = scorer.trail(*meteor)
    assert len(verdict.candidates) == len(verdict.logits) >= 1
    assert max(along(c, *FAINT) for c in verdict.candidates) >= 0.5
    # The tiny graph: logit = 4 · (the brightest strip value) - 8, the frame's is the highest.
    assert verdict.frame_logit == pytest.approx(float(verdict.logits.max()))
    assert scorer.score(*meteor) == pytest.approx(1 / (1 + math.exp(-verdict.frame_logit)),
                                                  abs=1e-6)
    assert scorer.model_score(*meteor) == pytest.approx(network, abs=1e-6)
    assert scorer.score(*meteor) > scorer.score(*quiet)
    # The assessment carries the line the score rests on, for the decider.
    assessment = scorer.assess(*meteor)
    assert assessment.score == pytest.approx(scorer.score(*meteor), abs=1e-9)
    best = verdict.candidates[int(np.argmax(verdict.logits))].streak
    assert assessment.trail_line == best == verdict.top_line
    assert along(verdict.candidates[int(np.argmax(verdict.logits))], *FAINT) >= 0.5
    # A mask over the meteor takes it out of the trail classifier's sight too.
    mask = np.full(meteor[0].shape, 255, np.uint8)
    cv2.rectangle(mask, (400, 280), (580, 400), 0, -1)
    assert max((along(c, *FAINT) for c in scorer.trail(*meteor, mask).candidates),
               default=0.0) == 0.0


def test_a_frame_without_candidates_gets_the_empty_logit(tmp_path: Path):
    root = make_tiny_classifier_bundle(tmp_path / "b", weights=(1.0, 1.0, 0.5),
                                       empty_logit=-5.0, bias=(0.0, 1.0))
    scorer = open_scorer(root)
    blank = np.full((480, 640), 20, np.uint8)
    verdict = scorer.trail(blank, blank)
    assert verdict.candidates == [] and verdict.frame_logit is None
    network = meteor_probability((0.0, 1.0))
    z = -5.0 + logit(network) + 0.5
    assert scorer.score(blank, blank) == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-6)


def test_the_bundle_checks_its_second_graph(tmp_path: Path):
    root = make_tiny_classifier_bundle(tmp_path / "b")
    stage = load_bundle(root).manifest.trail_stage
    assert isinstance(stage, TrailClassifier)
    assert stage.sha256 == hashlib.sha256((root / MODEL_FILE).read_bytes()).hexdigest()
    (root / MODEL_FILE).write_bytes((root / MODEL_FILE).read_bytes() + b"\0")
    with pytest.raises(BundleError, match=r"trail\.onnx: sha256"):
        load_bundle(root)
    (root / MODEL_FILE).unlink()
    with pytest.raises(BundleError, match=r"no trail\.onnx"):
        load_bundle(root)


@pytest.mark.parametrize("change, message", [
    ({"trail_weight": 0.0}, "trail_weight must be positive"),
    ({"bias": "x"}, "could not convert"),
    ({"sha256": "abc"}, "64 hex"),
    ({"model_file": "../trail.onnx"}, "file name"),
    ({"inputs": {"strips": [2, 21, 64], "scalars": []}}, "fitted on inputs"),
    ({"candidates": {"seeds": 0}}, "seeds must be >= 1"),
    ({"strip_sampling": "median"}, "strip_sampling must be one of"),
    ({"kind": "forest"}, "not supported"),
])
def test_bad_classifier_stages_are_refused(tmp_path: Path, change, message):
    root = make_tiny_classifier_bundle(tmp_path / "b")
    data = json.loads((root / MANIFEST_NAME).read_text())
    data["trail_stage"].update(change)
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        load_bundle(root)


def test_classifier_stage_round_trip():
    stage = TrailClassifier(sha256="a" * 64, trail_weight=1.5, network_weight=0.25, bias=-2.0,
                            fitted_on={"split": "train"})
    assert TrailClassifier.from_dict(stage.to_dict()) == stage
    mean = TrailClassifier(sha256="a" * 64, trail_weight=1.5, network_weight=0.25, bias=-2.0,
                           strip_sampling="mean")
    assert TrailClassifier.from_dict(mean.to_dict()).strip_sampling == "mean"
    # Bundles made before the field existed sampled points.
    older = {k: v for k, v in mean.to_dict().items() if k != "strip_sampling"}
    assert TrailClassifier.from_dict(older).strip_sampling == "point"
    with pytest.raises(TrailClassifierError, match="missing key"):
        TrailClassifier.from_dict({"kind": "classifier"})


def test_a_graph_with_the_wrong_inputs_does_not_load(tmp_path: Path):
    from tests.tinymodel import tiny_onnx

    root = make_tiny_classifier_bundle(tmp_path / "b")
    wrong = tiny_onnx()  # an image classifier where the trail graph should be
    data = json.loads((root / MANIFEST_NAME).read_text())
    data["trail_stage"]["sha256"] = hashlib.sha256(wrong).hexdigest()
    (root / MODEL_FILE).write_bytes(wrong)
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="expected \\['scalars', 'strips'\\]"):
        open_scorer(root)


def test_the_release_tarball_carries_the_trail_graph(tmp_path: Path):
    from edge.model_admin import bundle_tarball
    from edge.updates import extract_bundle

    bundle = load_bundle(make_tiny_classifier_bundle(tmp_path / "b"))
    raw = bundle_tarball(bundle)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert sorted(tar.getnames()) == sorted([MANIFEST_NAME, "model.onnx", MODEL_FILE])
    archive = tmp_path / "release.tar.gz"
    archive.write_bytes(raw)
    root = extract_bundle(archive, tmp_path / "x", 10_000_000)
    again = load_bundle(root)  # both graphs verified against the manifest
    assert again.manifest.trail_stage == bundle.manifest.trail_stage
    assert bundle_tarball(again) == raw  # reproducible


def test_writing_a_bundle_without_the_stage_removes_its_old_graph(tmp_path: Path):
    from edge.bundle import MODEL_NAME, write_bundle

    root = make_tiny_classifier_bundle(tmp_path / "b")
    data = json.loads((root / MANIFEST_NAME).read_text())
    data.pop("trail_stage")
    write_bundle(root, (root / MODEL_NAME).read_bytes(), data)
    assert not (root / MODEL_FILE).exists()
    assert load_bundle(root).manifest.trail_stage is None


def test_drawn_meteor_scores_above_drawn_satellite_piece_with_a_trained_like_graph(
        tmp_path: Path):
    # The tiny graph only sees brightness; this checks the plumbing end to end on the kind of
    # pair the Pi sees, not a learned judgement: a brighter meteor gives a higher frame score.
    root = make_tiny_classifier_bundle(tmp_path / "b", gain=2.0, offset=-6.0)
    scorer = open_scorer(root)
    dim = frames(3, lambda layer: draw_meteor(layer, *FAINT, 25.0, 1, floor=0.0))
    bright = frames(3, lambda layer: draw_meteor(layer, *FAINT, 90.0, 1, floor=0.0))
    assert scorer.score(*bright) > scorer.score(*dim)


def test_the_daemon_finds_a_frames_streaks_once_for_the_classifier_and_the_decider(
        tmp_path: Path):
    from edge.decide import Decider, Observation
    from edge.frames import Frame
    from edge.preprocess import positive_difference
    from edge.streaks import DiffAnalysis, StreakParams

    root = make_tiny_classifier_bundle(tmp_path / "b", gain=4.0, offset=-8.0,
                                       weights=(1.0, 0.0, 0.0), bias=(0.0, 2.0))
    scorer = open_scorer(root)
    previous, current = frames(1, faint_meteor(40.0))
    decider = Decider()
    shared = DiffAnalysis(positive_difference(previous, current), decider.params)
    alone = scorer.trail(previous, current)
    verdict = scorer.trail(previous, current, None, shared)
    # The same verdict, and the streaks the search needed are now cached on the shared object.
    assert [c.streak for c in verdict.candidates] == [c.streak for c in alone.candidates]
    np.testing.assert_allclose(verdict.logits, alone.logits, atol=1e-6)
    assert "_found" in shared.__dict__
    frame = Frame(path=tmp_path / "image-20240812220000.jpg", night="20240812",
                  captured=datetime(2024, 8, 12, 22, 0))
    decider.push(Observation(frame, current, shared.difference, 0.9, 0.5, analysis=shared))
    assert decider._history[-1].analysis is shared
    # Made with other streak params, it is not the decider's: it analyses the difference itself.
    other = DiffAnalysis(shared.difference, StreakParams(k_sigma=9.0))
    assert scorer.trail(previous, current, None, other).logits.shape == alone.logits.shape
    decider.push(Observation(frame, current, other.difference, 0.1, 0.5, analysis=other))
    assert decider._history[-1].analysis is not other
    with pytest.raises(ValueError, match="made from"):
        Observation(frame, current, shared.difference.copy(), 0.1, 0.5, analysis=shared)


def test_the_scorer_cuts_strips_the_way_the_bundle_was_fitted(tmp_path: Path):
    from edge.trail_strip import pair_inputs

    # A long faint line: its strip samples are over 1 px apart, so the two samplings differ.
    previous, current = frames(4, lambda layer: draw_meteor(layer, (300, 300), (760, 520), 30.0, 1,
                                                            floor=0.0))
    logits = {}
    for sampling in ("point", "mean"):
        root = make_tiny_classifier_bundle(tmp_path / sampling, gain=1.0, offset=0.0)
        data = json.loads((root / MANIFEST_NAME).read_text())
        data["trail_stage"]["strip_sampling"] = sampling
        (root / MANIFEST_NAME).write_text(json.dumps(data))
        scorer = open_scorer(root)
        stage = scorer.manifest.trail_stage
        assert stage.strip_sampling == sampling
        verdict = scorer.trail(previous, current)
        _, strips, _ = pair_inputs(previous, current, None, stage.streak_params,
                                   stage.candidates, sampling=sampling)
        # The tiny graph's logit is the brightest strip value: the scorer fed it these strips.
        np.testing.assert_allclose(verdict.logits, strips.reshape(len(strips), -1).max(axis=1),
                                   atol=1e-5)
        logits[sampling] = verdict.logits
    assert not np.allclose(logits["point"], logits["mean"])
