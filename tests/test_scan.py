"""`guaita scan`: batch mode over a simulated AllSky tree, and its JSONL contract."""

import json
import subprocess
import sys

from tests.tinymodel import make_tiny_bundle
from training.simulate import read_truth, simulate


def test_scan_writes_one_line_per_frame_in_capture_order(tmp_path):
    truth_csv = simulate(tmp_path / "sim", nights=2, frames=12, seed=5, width=320, height=240,
                         meteor_rate=0.3, progress=False)
    model = make_tiny_bundle(tmp_path / "model", bias=(-14.0, 0.0), sensitivity=255.0)
    out = tmp_path / "scan.jsonl"
    images = tmp_path / "sim" / "images"
    # A truncated frame in the tree is skipped with a warning, not a crash.
    night = sorted(images.iterdir())[0]
    broken = night / "image-20200101000000.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "scan", str(images), "--out", str(out),
         "--model", str(model), "--no-progress"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    rows = read_truth(truth_csv)
    assert len(lines) == len(rows) == 24
    assert [set(line) for line in lines] == [{"image", "score", "detected", "suppressed",
                                             "second_look"}] * 24
    expected = [str(images / row["file"].removeprefix("images/")) for row in rows]
    assert [line["image"] for line in lines] == expected
    for line in lines:
        assert 0.0 <= line["score"] <= 1.0 and isinstance(line["detected"], bool)
        assert line["suppressed"] is None or isinstance(line["suppressed"], str)
    assert "1 unreadable" in result.stdout


def test_scan_errors_are_clear(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "edge.cli", "scan", str(tmp_path / "nope")],
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    model = make_tiny_bundle(tmp_path / "model")
    empty = subprocess.run([sys.executable, "-m", "edge.cli", "scan", str(tmp_path / "empty"),
                            "--model", str(model)], capture_output=True, text=True, check=False)
    assert empty.returncode == 2 and "no AllSky frames" in empty.stderr
    bad_model = subprocess.run([sys.executable, "-m", "edge.cli", "scan", str(tmp_path),
                                "--model", str(tmp_path / "empty")],
                               capture_output=True, text=True, check=False)
    assert bad_model.returncode == 2 and "manifest.json" in bad_model.stderr
