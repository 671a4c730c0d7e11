"""Model bundle format: validation and clear errors."""

import json
import tarfile

import pytest

from edge.bundle import BundleError, load_bundle, write_bundle
from edge.preprocess import PreprocessSpec


def manifest_fields(**over):
    fields = {
        "name": "test-model",
        "version": "1",
        "preprocessing": PreprocessSpec(id="g1", size=32).to_dict(),
        "input": {"name": "image", "shape": [1, 3, 32, 32]},
        "classes": ["meteor", "no_meteor"],
        "recommended_threshold": 0.7,
    }
    fields.update(over)
    return fields


def test_write_then_load(tmp_path):
    bundle = write_bundle(tmp_path / "b", b"onnx-bytes", manifest_fields())
    again = load_bundle(tmp_path / "b")
    assert again.manifest == bundle.manifest
    assert again.manifest.meteor_index == 0 and again.label == "test-model@1"
    data = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert data["format_version"] == 1 and len(data["sha256"]) == 64 and data["created_at"]


def test_tar_gz_bundle(tmp_path):
    write_bundle(tmp_path / "b", b"onnx-bytes", manifest_fields())
    archive = tmp_path / "b.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "b", arcname="b")
    assert load_bundle(archive).manifest.name == "test-model"


def test_corrupt_model_is_detected(tmp_path):
    write_bundle(tmp_path / "b", b"onnx-bytes", manifest_fields())
    (tmp_path / "b" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(tmp_path / "b")


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"input": {"name": "image", "shape": [1, 1, 32, 32]}}, "does not match preprocessing"),
        ({"classes": ["a", "b"]}, "lack 'meteor'"),
        ({"recommended_threshold": 1.2}, "not in"),
        ({"preprocessing": {"id": "nope"}}, "unknown preprocessing id"),
        ({"format_version": 9}, "format_version 9 not supported"),
    ],
)
def test_inconsistent_manifests_are_refused(tmp_path, over, message):
    with pytest.raises(BundleError, match=message):
        write_bundle(tmp_path / "b", b"x", manifest_fields(**over))


def test_missing_pieces(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "empty")
    (tmp_path / "f.bin").write_bytes(b"junk")
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path / "f.bin")
