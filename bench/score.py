"""Accuracy scoring of the two baselines over a bench tree, in a process of its own.

``python -m bench.score --tree ROOT --out CSV [--learner PKL --size 224] [--threads N]``

For every frame of ROOT/truth.csv (in order, paired with the previous frame of its night):
the classical detector's verdict and score, and the 2021 reference's meteor probability. The
reference is scored in batches through the learner's own test DataLoader (the transforms and
network ``Learner.predict`` uses, many frames at a time, which only saves time); on the first
frames both ways are run and their largest difference is written next to the CSV (.json), so
the shortcut is checked on every run. The per-frame cost of ``Learner.predict`` itself is
measured by bench.costrun.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from bench.classical import detect
from edge.preprocess import Preprocessor, PreprocessSpec, read_gray

COLUMNS = ("file", "classical_detected", "classical_score", "ref_prob")
CHECK_FRAMES = 12


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--learner", type=Path)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)

    with open(args.tree / "truth.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    v4 = Preprocessor(PreprocessSpec(id="v4", size=args.size))
    results: list[dict] = []
    inputs: list[np.ndarray] = []
    slots: list[int] = []
    prev, prev_night = None, None
    for row in rows:
        gray = read_gray(str(args.tree / row["file"]))
        out = {"file": row["file"], "classical_detected": "", "classical_score": "",
               "ref_prob": ""}
        if prev is not None and prev_night == row["night"] and row["frame_index"] != "0":
            found = detect(prev, gray)
            out["classical_detected"] = int(found.detected)
            out["classical_score"] = round(found.score, 2)
            if args.learner:
                inputs.append(v4(prev, gray))
                slots.append(len(results))
        results.append(out)
        prev, prev_night = gray, row["night"]

    check: dict = {}
    if args.learner:
        from bench.reference import load_learner_cpu, meteor_index, predict_batch, predict_one

        learn = load_learner_cpu(args.learner, args.threads)
        index = meteor_index(learn)
        probs = np.concatenate([predict_batch(learn, inputs[i:i + 256], index)
                                for i in range(0, len(inputs), 256)] or [np.zeros(0)])
        for slot, p in zip(slots, probs, strict=True):
            results[slot]["ref_prob"] = round(float(p), 6)
        one = [predict_one(learn, image, index) for image in inputs[:CHECK_FRAMES]]
        diff = np.abs(np.array(one) - probs[:CHECK_FRAMES]) if one else np.zeros(0)
        check = {"frames": len(one), "max_abs_diff": float(diff.max()) if len(diff) else None}

    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(results)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"predict_vs_batched": check, "frames": len(results), "scored": len(slots)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
