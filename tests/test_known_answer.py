"""The Pi's scoring path on two fixed JPEG frames, compared exactly with answers written by
tests/known_answer.py: decoding, every preprocessing variant, and the shipped model's score.
A library update (constraints.txt) that changes what the model sees fails here, with how much."""

import json

import numpy as np
import pytest

from tests.known_answer import HERE, SHIPPED, frames, outputs, shipped_score

REGENERATE = ("if the change is deliberate and checked (model parity, `make bench`), write the "
              "answers again: .venv/bin/python -m tests.known_answer")


@pytest.fixture(scope="module")
def pair():
    return frames()


def test_the_frames_are_a_meteor_pair(pair):
    previous, current = pair
    assert previous.shape == current.shape == (976, 1304)
    # The meteor: the current frame is brighter than the previous one somewhere by 60+ levels.
    assert int((current.astype(int) - previous).max()) >= 60


def test_every_preprocessing_variant_gives_the_known_answer(pair):
    expected = np.load(HERE / "preprocessed.npz")
    got = outputs(*pair)
    assert sorted(expected.files) == sorted(got)
    for variant, image in got.items():
        want = expected[variant]
        assert image.shape == want.shape and image.dtype == want.dtype, variant
        diff = np.abs(image.astype(int) - want)
        assert not diff.any(), (
            f"{variant}: {np.count_nonzero(diff)} of {diff.size} values differ (max "
            f"{diff.max()} grey levels) from the known answer: decoding or preprocessing "
            f"changed; {REGENERATE}")
        assert image.any(), variant  # the meteor pair is not blank in any variant


def test_the_shipped_model_gives_its_known_score(pair):
    want = json.loads((HERE / "shipped_score.json").read_text())
    sha, threshold, score = shipped_score(*pair)
    assert sha == want["bundle_sha256"], (
        f"{SHIPPED} is another model than the one the known score was written for; "
        f"{REGENERATE}")
    # onnxruntime on one machine is deterministic; allow only float noise between builds.
    assert abs(score - want["score"]) <= 1e-4, (
        f"the shipped model scores the pair {score:.6f}, the known answer is "
        f"{want['score']:.6f}: onnxruntime or preprocessing changed; {REGENERATE}")
    assert score >= threshold  # and the known answer itself is an alert: a bright meteor
