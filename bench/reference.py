"""The 2021 reference pipeline, rebuilt on the shipped model's training nights.

V4 preprocessing (edge.preprocess "v4": positive difference, threshold 3.5, 0/255, 224×224
INTER_AREA) + a fastai ResNet34 trained with guaita's own ``guaita dataset index`` / ``guaita
train`` (the 2021 augmentation: rotation up to 180°, flips, reflection padding, no warp/zoom;
undersampled non-meteors; lr 3e-3; batch 32), scored with fastai's ``Learner.predict`` at the
2021 threshold 0.85 with no suppression. Differences from 2021, forced by a CPU-only machine
and stated in the report: no ImageNet weights (none can be downloaded here), a few epochs on a
subset of the training nights' frames instead of 35 epochs, and simulated instead of real
frames. The same model is also exported to int8 ONNX (``guaita export``) so its cost inside
guaita's runtime can be measured.

Everything is cached under the bench cache, keyed by the plan and the training code.
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.plan import REPO, RefPlan, TrainingSims, fingerprint, source_digest
from training.dataset import split_nights

log = logging.getLogger(__name__)

METEOR = "meteor"


@dataclass(frozen=True)
class Reference:
    root: Path
    learner: Path  # fastai export (learner.pkl)
    bundle: Path | None  # int8 ONNX bundle of the same network (None if the export refused)
    meta: dict[str, Any]


def _guaita(*args: str) -> None:
    cmd = [sys.executable, "-m", "edge.cli", *args]
    log.info("running: guaita %s", " ".join(args))
    subprocess.run(cmd, check=True, cwd=REPO)


def _rows(truth: Path) -> list[dict[str, str]]:
    with open(truth, newline="") as fh:
        return list(csv.DictReader(fh))


def _pick(total: int, n: int, rng: np.random.Generator) -> list[int]:
    """n indices out of range(total), seeded, in order (all of them when n >= total)."""
    if n >= total:
        return list(range(total))
    return sorted(int(i) for i in rng.choice(total, n, replace=False))


def select_frames(cameras: Sequence[Path], sims: TrainingSims, ref: RefPlan
                  ) -> tuple[dict[Path, list[dict[str, str]]], dict[str, list[str]]]:
    """Frames the reference trains and checks on, per camera, and the night split.

    The split is the shipped recipe's (``guaita dataset index --valid-frac 0.15 --test-frac 0.15
    --seed <recipe seed>`` over the same nights), recomputed with the same function."""
    rows = {cam: [r for r in _rows(cam / "truth.csv") if r["frame_index"] != "0"]
            for cam in cameras}
    nights = sorted({r["night"] for rs in rows.values() for r in rs})
    split = split_nights(nights, 0.15, 0.15, seed=sims.seed)
    rng = np.random.default_rng(ref.seed)
    want = {"train": (ref.train_meteors, None),
            "valid": (ref.holdout_meteors, ref.holdout_negatives),
            "test": (ref.holdout_meteors, ref.holdout_negatives)}
    chosen: dict[Path, list[dict[str, str]]] = {cam: [] for cam in cameras}
    for part, (n_met, n_neg) in want.items():
        pool = [(cam, r) for cam, rs in rows.items() for r in rs if split[r["night"]] == part]
        met = [x for x in pool if x[1]["meteor"] == "1"
               and float(x[1].get("meteor_peak") or "inf") >= ref.min_peak]
        neg = [x for x in pool if x[1]["meteor"] != "1"]
        met_idx = _pick(len(met), n_met, rng)
        n_neg = n_neg if n_neg is not None else round(ref.negatives_per_meteor * len(met_idx))
        neg_idx = _pick(len(neg), n_neg, rng)
        for i in met_idx:
            chosen[met[i][0]].append(met[i][1])
        for i in neg_idx:
            chosen[neg[i][0]].append(neg[i][1])
    nights_by_split = {s: sorted(n for n, v in split.items() if v == s)
                       for s in ("train", "valid", "test")}
    return chosen, nights_by_split


def _write_selection(root: Path, chosen: dict[Path, list[dict[str, str]]]) -> list[Path]:
    truths = []
    for k, (cam, rows) in enumerate(sorted(chosen.items())):
        if not rows:
            continue
        folder = root / "selection" / f"camera{k}"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "images"
        if not link.exists():
            link.symlink_to((cam / "images").resolve(), target_is_directory=True)
        truth = folder / "truth.csv"
        with open(truth, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        truths.append(truth)
    return truths


# The code that builds the reference (index → train → export), so a change to reporting alone
# (evaluate, model cards, alert-threshold) does not retrain it. The training frames are keyed
# separately (bench.plan: the simulator's sources).
REFERENCE_CODE = (
    *(REPO / "training" / name for name in (
        "__init__.py", "_common.py", "_balanced.py", "_metrics.py", "_model.py",
        "_onnx_weights.py", "_mining.py", "_parallel.py", "dataset.py", "meteor_snr.py",
        "train.py", "export.py")),
    REPO / "edge" / "preprocess.py",
)


def ensure_reference(cache: Path, cameras: Sequence[Path], sims: TrainingSims,
                     ref: RefPlan) -> Reference:
    """Select → index (V4) → train (ResNet34) → export int8; each step skipped when cached."""
    code = source_digest(*REFERENCE_CODE)
    key = fingerprint(ref.__dict__, sims.__dict__, [str(c) for c in cameras], code)
    root = cache / "reference" / key
    data, model, bundle = root / "data", root / "model", root / "int8"
    chosen, nights = select_frames(cameras, sims, ref)
    counts = {cam.name: len(rows) for cam, rows in chosen.items()}
    if not (data / "index.csv").is_file():
        truths = _write_selection(root, chosen)
        held = {s: sorted({r["night"] for rs in chosen.values() for r in rs
                           if r["night"] in nights[s]}) for s in ("valid", "test")}
        args = ["dataset", "index", "--out", str(data), "--preprocess", "v4", "--size",
                str(ref.size), "--valid-frac", "0", "--test-frac", "0",
                "--valid-nights", ",".join(held["valid"]), "--test-nights",
                ",".join(held["test"]), "--workers", str(ref.threads), "--no-progress"]
        for truth in truths:
            args += ["--truth", str(truth)]
        _guaita(*args)
    if not (model / "learner.pkl").is_file():
        _guaita("train", "--data", str(data), "--out", str(model), "--arch", ref.arch,
                "--no-pretrained", "--epochs", str(ref.epochs), "--no-lr-find", "--lr",
                str(ref.lr), "--balance", "undersample", "--neg-ratio", "1", "--batch-size",
                str(ref.batch_size), "--valid-max", "400", "--threads", str(ref.threads),
                "--seed", str(ref.seed), "--quiet")
    if not (bundle / "manifest.json").is_file() and not (root / "export-refused").exists():
        try:
            # Only its cost is measured, so a large int8 recall drop does not stop the bench.
            _guaita("export", "--model", str(model), "--out", str(bundle), "--name",
                    "ref2021-resnet34-v4", "--version", "sim", "--calibration", "minmax",
                    "--calib-images", "128", "--max-recall-drop", "1.0", "--threads",
                    str(ref.threads), "--seed", str(ref.seed))
        except subprocess.CalledProcessError as exc:
            log.warning("int8 export of the reference failed (%s): its int8 cost is skipped", exc)
            (root / "export-refused").write_text(str(exc))
    train_meta = json.loads((model / "train.json").read_text())
    export_meta = root / "model" / "export" / "export.json"
    dataset_meta = json.loads((data / "dataset.json").read_text())
    meta = {
        "plan": ref.__dict__, "frames_selected": counts, "nights": nights,
        "dataset_counts": dataset_meta.get("counts"),
        "train": {k: train_meta.get(k) for k in (
            "arch", "started_from", "epochs", "schedule", "lr", "batch_size", "balance",
            "train_seconds", "images_per_second", "history", "device", "versions")},
        "export": json.loads(export_meta.read_text()) if export_meta.is_file() else None,
    }
    return Reference(root, model / "learner.pkl",
                     bundle if (bundle / "manifest.json").is_file() else None, meta)


# ---------------------------------------------------------------- scoring with fastai


def load_learner_cpu(path: Path, threads: int):
    import torch
    from fastai.learner import load_learner

    torch.set_num_threads(max(1, threads))
    learn = load_learner(path, cpu=True)
    learn.model.eval()
    return learn


def meteor_index(learn) -> int:
    return list(learn.dls.vocab).index(METEOR)


def predict_one(learn, v4_image: np.ndarray, index: int) -> float:
    """The 2021 way: one frame at a time through ``Learner.predict``."""
    from fastai.vision.core import PILImage

    _, _, probs = learn.predict(PILImage.create(v4_image[:, :, 0]))
    return float(probs[index])


def predict_batch(learn, v4_images: list[np.ndarray], index: int, bs: int = 64) -> np.ndarray:
    """The same transforms and network as ``Learner.predict``, batched (for speed only)."""
    import fastai.callback.progress  # noqa: F401 - defines Learner.no_bar
    from fastai.vision.core import PILImage

    if not v4_images:
        return np.zeros(0, np.float32)
    dl = learn.dls.test_dl([PILImage.create(a[:, :, 0]) for a in v4_images], bs=bs)
    with learn.no_bar():
        preds, _ = learn.get_preds(dl=dl)
    return preds[:, index].numpy().astype(np.float32)
