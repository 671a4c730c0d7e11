"""``guaita evaluate``: score held-out nights and write a report (Markdown + HTML + PNG + JSON).

Each ``--model`` is either a fastai learner (a `guaita train` folder or its learner.pkl, scored
through fastai's own DataLoaders) or a model bundle (scored with ``edge.model.open_scorer``, the
edge's actual scorer). Several models go into one report, so fp32 and int8, or an old and a new
model, are compared on the same frames.

Per model: per-class precision/recall/F1 and confusion matrix at its threshold (the bundle's
recommended one, 0.5 for a learner, or ``--threshold``), ROC and PR curves, a threshold sweep
(recall and false positives per 1,000 frames), meteor recall by peak brightness and by
signal-to-noise ratio (``training.meteor_snr``) and false positives by what else was in the
frame (satellite, aircraft, moon, cloud…) when the index carries those truth columns, a
top-loss gallery for label curation, and — for learners — Grad-CAM heatmaps showing where the
network looks on a few meteors. Every frame's scores go to ``scores.csv`` beside the report,
with the index's truth columns, for the questions the report does not ask.

For the candidate-window preprocessing (m1), once per report: the share of meteor frames whose
meteor lies in one of the windows the model is shown, and in how many more a wider mosaic would
hold it (`training.coverage`): the recall no model on that preprocessing can exceed.
"""

from __future__ import annotations

import argparse
import html
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training._common import (
    DATASET_META,
    LEARNER_NAME,
    METEOR,
    TRAIN_META,
    TrainingError,
    load_index,
    load_input,
    meteor_segment,
    set_threads,
    write_json,
)
from training._metrics import (
    FLAG_COLUMNS,
    PEAK_EDGES,
    STAGE_BUDGETS,
    TARGET_FP_PER_1000,
    at_threshold,
    best_within,
    bin_label,
    headline,
    per_class,
    pr_curve,
    recall_at_text,
    recall_by_bins,
    roc_curve,
    sweep,
)
from training.meteor_snr import SNR_EDGES, meteor_snr

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """One model's verdicts on the evaluation frames."""

    name: str
    kind: str  # "fastai" or "onnx"
    threshold: float
    probs: np.ndarray
    learner: Any = None  # for Grad-CAM
    info: dict[str, Any] = field(default_factory=dict)
    # A staged bundle: the network's own probabilities, before the trail stage re-scored them.
    network: np.ndarray | None = None
    # A trail classifier's bundle: per meteor frame (path) with a known segment, whether one of
    # its candidate lines lay along the meteor.
    on_line: dict[str, bool] | None = None


# ---------------------------------------------------------------- scoring


def _is_bundle(path: Path) -> bool:
    return (path.is_dir() and (path / "manifest.json").is_file()) or path.name.endswith(
        (".tar.gz", ".tgz"))


def score_learner(path: Path, df, threshold: float | None) -> Scored:
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import load_learner

    pkl = path / LEARNER_NAME if path.is_dir() else path
    if not pkl.is_file():
        raise TrainingError(f"{path}: no {LEARNER_NAME} (not a `guaita train` output?)")
    learn = load_learner(pkl, cpu=True)
    learn.remove_cb(ProgressCallback)  # a batch bar per model is noise in a report run
    dl = learn.dls.test_dl(df.reset_index(drop=True), bs=64)
    preds, _ = learn.get_preds(dl=dl)
    meteor = list(learn.dls.vocab).index(METEOR)
    name = f"fastai:{pkl.parent.name}"
    info = {"path": str(pkl)}
    meta_path = pkl.parent / TRAIN_META
    if meta_path.is_file():
        from training._common import read_json

        meta = read_json(meta_path)
        info.update({k: meta.get(k) for k in ("arch", "started_from", "balance", "epochs")})
    return Scored(name, "fastai", 0.5 if threshold is None else threshold,
                  preds[:, meteor].numpy(), learner=learn, info=info)


def score_cached(scorer, paths: list[str], channels: int) -> np.ndarray:
    """The network's probabilities (no trail stage) on an index's cached model inputs."""
    out: list[float] = []
    for i in range(0, len(paths), 64):
        out.extend(scorer.score_inputs([load_input(p, channels) for p in paths[i : i + 64]]))
    return np.asarray(out, dtype=float)


_WORKER: dict[str, Any] = {}


def _open_worker(bundle: str, mask_path: str | None) -> None:
    from edge.model import open_scorer
    from edge.preprocess import read_gray

    _WORKER["scorer"] = open_scorer(bundle, threads=1)
    _WORKER["mask"] = read_gray(mask_path) if mask_path else None


def _staged_one(job: tuple[str, str, float, Any]) -> tuple[float, bool | None]:
    """One frame pair's staged score, and for the trail classifier whether a candidate line lay
    along the true meteor (None: no trail classifier, or no segment to check)."""
    from edge.preprocess import read_gray
    from edge.trail_classifier import TrailClassifier
    from training.trail_classifier import MIN_COVER, cover

    previous, current, network, segment = job
    scorer, mask = _WORKER["scorer"], _WORKER["mask"]
    stage = scorer.manifest.trail_stage
    previous, current = read_gray(previous), read_gray(current)
    if not isinstance(stage, TrailClassifier):
        return scorer.staged(network, previous, current, mask), None
    verdict = scorer.trail(previous, current, mask)
    seen = None if segment is None else any(cover(segment, c.streak) >= MIN_COVER
                                            for c in verdict.candidates)
    return stage.combine(network, verdict.frame_logit), seen


def staged_scores(bundle: Path, previous: list[str], current: list[str], network: list[float],
                  mask_path: str | None, workers: int = 1,
                  segments: list[Any] | None = None) -> list[tuple[float, bool | None]]:
    """The bundle's trail stage on frame pairs whose network scores are known (the stage reads
    the frames: the Pi's own scorer), in `workers` processes: per pair (score, whether the
    trail classifier had a candidate line along the meteor `segments` gives, or None)."""
    from training._parallel import process_map

    segments = segments if segments is not None else [None] * len(previous)
    jobs = list(zip(previous, current, network, segments, strict=True))
    return list(process_map(_staged_one, jobs, workers, desc="trail stage", unit="frame",
                            chunksize=16, serial_below=64, initializer=_open_worker,
                            initargs=(str(bundle), mask_path)))


def score_bundle(path: Path, df, threshold: float | None, channels: int, mask_path: str | None,
                 from_frames: bool, threads: int, workers: int = 1) -> Scored:
    from edge.model import open_scorer
    from edge.preprocess import read_gray
    from edge.trail_classifier import TrailClassifier

    scorer = open_scorer(path, threads=threads)
    man = scorer.manifest
    if man.preprocessing.channels != channels:
        raise TrainingError(f"{path}: the bundle expects {man.preprocessing.channels} channels, "
                            f"the dataset has {channels}")
    mask = read_gray(mask_path) if mask_path else None
    stage = man.trail_stage
    seen: dict[int, bool] = {}
    if from_frames:
        # Exactly the edge's path: decode the JPEGs, preprocess with the bundle's spec, score
        # (Scorer.score is model_score then staged; kept apart to keep the network's score).
        network, probs = [], []
        for prev, cur in zip(df["previous"], df["frame"], strict=True):
            previous, current = read_gray(prev), read_gray(cur)
            network.append(scorer.model_score(previous, current, mask))
            probs.append(scorer.staged(network[-1], previous, current, mask))
    else:
        network = score_cached(scorer, list(df["path"]), channels).tolist()
        probs = list(network)
        if stage is not None:
            # The trail stage reads the frames themselves: the logistic stage only the
            # model's candidates, the trail classifier every frame.
            picked = [i for i, p in enumerate(probs)
                      if isinstance(stage, TrailClassifier) or p >= stage.min_score]
            staged = staged_scores(path, [df.iloc[i]["previous"] for i in picked],
                                   [df.iloc[i]["frame"] for i in picked],
                                   [probs[i] for i in picked], mask_path, workers,
                                   [meteor_segment(df.iloc[i]) for i in picked])
            for i, (p, on_line) in zip(picked, staged, strict=True):
                probs[i] = p
                if on_line is not None:
                    seen[i] = on_line
    t = man.recommended_threshold if threshold is None else threshold
    info = {"path": str(path), "bundle": scorer.bundle.label, "from_frames": from_frames,
            "recommended_threshold": man.recommended_threshold,
            "trail_stage": stage is not None}
    if stage is not None and not isinstance(stage, TrailClassifier):
        info["stage_floor"] = stage.min_score
    on_line = None
    if isinstance(stage, TrailClassifier) and not from_frames:
        on_line = {str(df.iloc[i]["frame"]): v for i, v in seen.items()}
    return Scored(f"onnx:{scorer.bundle.label}", "onnx", t, np.asarray(probs), info=info,
                  network=np.asarray(network) if stage is not None else None,
                  on_line=on_line)


# ---------------------------------------------------------------- analysis


def pipeline_alerts(bundle: Path, df, y: np.ndarray, threshold: float,
                    threads: int, workers: int = 1) -> tuple[dict[str, Any], np.ndarray]:
    """The split's nights, every frame, through the edge pipeline as the Pi runs them
    (suppression rules, learned mask): recall and false alerts of its alerts at `threshold`,
    and the best recall any threshold reaches within each false-alert budget; and each frame's
    alert score (for scores.csv). One run at threshold 0 gives every threshold's alerts
    (`alert_scores`, as alert-threshold does)."""
    from training.alert_threshold import alert_scores, night_folders, run_pipeline

    if "frame" not in df.columns:
        raise TrainingError("--alerts needs the index's frame paths")
    log.info("%s: the %s nights through the edge pipeline (threshold 0: every threshold's "
             "alerts)", bundle, df["split"].iloc[0])
    scores = alert_scores(df, run_pipeline(bundle, night_folders(df), 0.0, threads, workers))
    return ({**headline(at_threshold(y, scores, threshold)),
             "best_within": {f"{b:g}": best_within(y, scores, b) for b in STAGE_BUDGETS}},
            scores)


# The index's columns worth having beside each frame's scores (those it has).
SCORE_CONTEXT = ("path", "frame", "night", "label", "meteor_peak", "meteor_length_px",
                 *FLAG_COLUMNS, "cloud_cover", "condition", "camera")


def write_scores(out: Path, df, scored: list[Scored], alerts: dict[str, np.ndarray],
                 snr: np.ndarray | None = None) -> Path:
    """Every frame's scores, one row per model and frame (`scores.csv`): the numbers behind the
    report, for the questions it does not ask (which nights, which skies, which meteors)."""
    import pandas as pd

    context = df[[c for c in SCORE_CONTEXT if c in df.columns]].reset_index(drop=True)
    if snr is not None:
        context["snr"] = snr
    parts = []
    for s in scored:
        part = context.copy()
        part.insert(0, "model", s.name)
        part["score"] = s.probs
        if s.network is not None:
            part["network"] = s.network
        if s.on_line is not None and "frame" in context:
            # Meteor frames with a known segment: whether a candidate line lay along it.
            part["on_line"] = [s.on_line.get(str(f), "") for f in context["frame"]]
        if s.name in alerts:
            # The pipeline's score: 0 where the suppression rules would drop the frame.
            part["alert_score"] = alerts[s.name]
        parts.append(part)
    path = out / "scores.csv"
    pd.concat(parts, ignore_index=True).to_csv(path, index=False, float_format="%.6g")
    return path


def _truthy(column) -> np.ndarray:
    values = column.astype(str).str.strip().str.lower()
    return values.isin(["1", "true", "yes", "1.0"]).to_numpy()


def _peaks(df) -> np.ndarray | None:
    """Each frame's meteor peak brightness (grey levels), -1 where none is known."""
    if "meteor_peak" not in df.columns:
        return None
    peaks = df["meteor_peak"].apply(lambda v: float(v) if str(v) not in ("", "nan") else
                                    np.nan).to_numpy(dtype=float)
    return np.nan_to_num(peaks, nan=-1.0)


def breakdowns(df, y: np.ndarray, p: np.ndarray, t: float,
               snr: np.ndarray | None = None) -> dict[str, Any]:
    """Recall by peak brightness and by signal-to-noise ratio, false positives by what else the
    frame held."""
    out: dict[str, Any] = {}
    peaks = _peaks(df)
    if peaks is not None:
        out["recall_by_peak"] = recall_by_bins(y, p, t, peaks)
    if snr is not None:
        out["recall_by_snr"] = recall_by_bins(y, p, t, np.nan_to_num(snr, nan=-1.0), SNR_EDGES)
    flags = []
    for column in FLAG_COLUMNS:
        if column in df.columns:
            flag = _truthy(df[column]) & ~y
            n = int(flag.sum())
            fp = int((p[flag] >= t).sum()) if n else 0
            flags.append({"negatives_with": column, "frames": n, "false_positives": fp,
                          "fp_rate": fp / n if n else float("nan")})
    if flags:
        out["false_positives_by_flag"] = flags
    if "cloud_cover" in df.columns:
        cover = df["cloud_cover"].apply(lambda v: float(v) if str(v) not in ("", "nan") else
                                        0.0).to_numpy(dtype=float)
        out["by_cloud_cover"] = _groups(
            y, p, t, np.digitize(cover, [0.25, 0.5, 0.75]),
            {0: "< 0.25", 1: "0.25–0.5", 2: "0.5–0.75", 3: ">= 0.75"})
    # Skies and sites differ in noise (docs/training.md, "Validation nights easier…").
    for column in ("condition", "camera"):
        if column in df.columns:
            values = df[column].fillna("").astype(str).to_numpy()
            names = sorted(set(values))
            out[f"by_{column}"] = _groups(y, p, t, np.array([names.index(v) for v in values]),
                                          dict(enumerate(names)))
    return out


MISS_CAUSES = ("outside_windows", "no_candidate_line", "under_stage_floor", "under_threshold")


def where_missed(df, y: np.ndarray, s: Scored, threshold: float,
                 window_rank: dict[str, int | None] | None, shown: int,
                 snr: np.ndarray | None = None) -> dict[str, Any]:
    """Every meteor frame at `threshold`: detected, or the first reason it was not. Its meteor
    lay outside the windows the network is shown (m1, simulator segment known; not for a trail
    classifier's bundle, whose candidate lines may still hold it), or no candidate line of the
    trail classifier lay along it, or the network scored it under the trail stage's floor
    (never re-scored), or it scored under the threshold. By peak brightness: which lever the
    next model needs (the mosaic or candidate search, the network, the ranking). With `snr`
    (each frame's meteor SNR, NaN where unknown), the same blame by SNR as well: brightness
    alone mixes a faint meteor on a dark sky with a bright one under the Moon."""
    floor = s.info.get("stage_floor")
    # Frames without a known segment are not blamed on the windows or the candidates.
    known = {} if s.on_line is not None else (window_rank or {})
    lines = s.on_line or {}
    frames = df["frame"].tolist() if "frame" in df.columns else [None] * len(df)
    cause = np.full(len(y), "", dtype=object)
    for i in np.flatnonzero(y):
        if s.probs[i] >= threshold:
            cause[i] = "detected"
        elif frames[i] in known and (known[frames[i]] is None or known[frames[i]] >= shown):
            cause[i] = "outside_windows"
        elif lines.get(frames[i]) is False:
            cause[i] = "no_candidate_line"
        elif s.network is not None and floor is not None and s.network[i] < floor:
            cause[i] = "under_stage_floor"
        else:
            cause[i] = "under_threshold"
    def blame(values: np.ndarray | None, edges) -> list[dict[str, Any]]:
        bins = [("all", y)]
        if values is not None:
            bins += [(bin_label(lo, hi), y & (values >= lo) & (values < hi))
                     for lo, hi in itertools.pairwise(edges)]
        return [{"bin": name, "meteors": int(sel.sum()),
                 **{c: int((cause[sel] == c).sum()) for c in ("detected", *MISS_CAUSES)}}
                for name, sel in bins if sel.any()]

    out = {"threshold": threshold,
           "windows_checked": window_rank is not None and s.on_line is None,
           "lines_checked": s.on_line is not None, "stage_floor": floor,
           "rows": blame(_peaks(df), PEAK_EDGES)}
    if snr is not None:
        out["rows_by_snr"] = blame(np.nan_to_num(snr, nan=-1.0), SNR_EDGES)
    return out


def missed_columns(missed: dict[str, Any]) -> list[tuple[str, str]]:
    """(row key, column title) of a `where_missed` table: the reasons that could apply."""
    columns = [("detected", "found")]
    if missed["windows_checked"]:
        columns.append(("outside_windows", "outside the windows"))
    if missed.get("lines_checked"):
        columns.append(("no_candidate_line", "no candidate line along it"))
    if missed["stage_floor"] is not None:
        columns.append(("under_stage_floor", f"network < {missed['stage_floor']:g}"))
    return [*columns, ("under_threshold", "scored too low")]


def missed_rows(missed: dict[str, Any], by: str = "peak") -> tuple[list[str], list[list[Any]]]:
    """The header and rows of a `where_missed` table, by peak brightness or by SNR (`by`
    "snr", empty where it was not measured), for the report and the model card."""
    columns = missed_columns(missed)
    rows = missed["rows"] if by == "peak" else missed.get("rows_by_snr", [])
    return (["peak" if by == "peak" else "SNR", "meteors", *[title for _, title in columns]],
            [[row["bin"], row["meteors"], *[row[key] for key, _ in columns]] for row in rows])


def _groups(y, p, t, keys: np.ndarray, names: dict[int, str]) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(set(keys.tolist())):
        sel = keys == key
        m = at_threshold(y[sel], p[sel], t)
        rows.append({"group": names.get(key, str(key)), "frames": m["frames"],
                     "meteors": m["meteors"], "recall": m["recall"], "fp": m["fp"],
                     "fp_per_1000": m["fp_per_1000"]})
    return rows


def model_metrics(df, y: np.ndarray, s: Scored, snr: np.ndarray | None = None) -> dict[str, Any]:
    auc = roc_curve(y, s.probs)[2]
    ap = pr_curve(y, s.probs)[2]
    thresholds = (*[round(t, 2) for t in np.arange(0.05, 0.951, 0.05)], 0.97, 0.98, 0.99, 0.995,
                  round(s.threshold, 4))
    return {
        "name": s.name, "kind": s.kind, "threshold": s.threshold, "info": s.info,
        "at_threshold": at_threshold(y, s.probs, s.threshold),
        "per_class": per_class(y, s.probs, s.threshold),
        "roc_auc": auc, "average_precision": ap,
        "sweep": sweep(y, s.probs, thresholds),
        "best_within_target": best_within(y, s.probs, TARGET_FP_PER_1000),
        **breakdowns(df, y, s.probs, s.threshold, snr),
    }


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(y: np.ndarray, models: list[Scored], out: Path) -> list[str]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for s in models:
        fpr, tpr, auc = roc_curve(y, s.probs)
        ax.plot(fpr, tpr, label=f"{s.name} (AUC {auc:.4f})")
    ax.set(xlabel="false positive rate (non-meteor frames)", ylabel="meteor recall",
           title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    for s in models:
        rec, prec, ap = pr_curve(y, s.probs)
        ax.plot(rec, prec, label=f"{s.name} (AP {ap:.4f})")
    ax.set(xlabel="meteor recall", ylabel="meteor precision", title="Precision–recall",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "pr.png", dpi=90)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(models), figsize=(3.4 * len(models), 3.2), squeeze=False)
    for ax, s in zip(axes[0], models, strict=True):
        m = at_threshold(y, s.probs, s.threshold)
        grid = np.array([[m["tp"], m["fn"]], [m["fp"], m["tn"]]])
        ax.imshow(np.log1p(grid), cmap="Blues")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=11)
        ax.set_xticks([0, 1], ["meteor", "no-meteor"])
        ax.set_yticks([0, 1], ["meteor", "no-meteor"])
        ax.set(xlabel="predicted", ylabel="true", title=f"{s.name}\nt={s.threshold:.3f}")
        ax.title.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=90)
    plt.close(fig)
    return ["roc.png", "pr.png", "confusion.png"]


def plot_coverage(coverage: dict[str, Any], out: Path) -> str:
    """Share of meteor frames covered against the number of windows kept, per peak bin."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    counts = coverage["counts"]
    lowest = min(v for b in [coverage, *coverage["by_peak"]] for v in b["covered"].values())
    ax.plot(counts, [coverage["covered"][str(n)] for n in counts], "k-o", lw=2,
            label=f"all ({coverage['meteors']})")
    for b in coverage["by_peak"]:
        ax.plot(counts, [b["covered"][str(n)] for n in counts], "-", marker=".",
                label=f"peak {b['bin']} ({b['meteors']})")
    shown = coverage["windows_shown"]
    ax.axvline(shown, color="grey", ls="--", lw=1)
    bottom = max(0.0, np.floor(lowest * 10 - 0.5) / 10)  # the differences are a few points
    ax.text(shown, bottom + 0.01, f" shown: {shown}", fontsize=8, color="grey")
    ax.set(xlabel="candidate windows kept (strongest first)",
           ylabel="meteor frames with the meteor in a window", ylim=(bottom, 1.01),
           title="Recall ceiling of the candidate windows")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "coverage.png", dpi=90)
    plt.close(fig)
    return "coverage.png"


def _display(image: np.ndarray) -> np.ndarray:
    return image[:, :, 0] if image.shape[2] == 1 else image


def plot_gallery(df, y: np.ndarray, s: Scored, channels: int, out: Path, n: int,
                 filename: str) -> list[dict[str, Any]]:
    """The n frames the model got most wrong (highest loss): candidates for label review."""
    plt = _plt()
    p_true = np.where(y, s.probs, 1.0 - s.probs)
    loss = -np.log(np.clip(p_true, 1e-7, 1.0))
    order = np.argsort(-loss)[:n]
    cols = min(4, max(1, len(order)))
    rows = max(1, int(np.ceil(len(order) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    listing = []
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order, strict=False):
        row = df.iloc[i]
        ax.imshow(_display(load_input(row["path"], channels)), cmap="gray")
        label = "meteor" if y[i] else "no-meteor"
        ax.set_title(f"{label} p={s.probs[i]:.2f}\n{Path(row['frame']).name[6:20]}", fontsize=7,
                     color="red" if (s.probs[i] >= s.threshold) != y[i] else "black")
        listing.append({"frame": row["frame"], "label": label, "p_meteor": float(s.probs[i]),
                        "loss": float(loss[i])})
    fig.tight_layout()
    fig.savefig(out / filename, dpi=90)
    plt.close(fig)
    return listing


def grad_cam(model, x, target: int, layer) -> np.ndarray:
    """Grad-CAM heatmaps [N, H, W] in 0..1 for class `target` at `layer`'s output."""
    import torch
    import torch.nn.functional as F

    store: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        store["act"] = output

    handle = layer.register_forward_hook(keep)
    try:
        model.eval()
        x = x.clone().requires_grad_(True)
        logits = model(x)
        model.zero_grad()
        logits[:, target].sum().backward()
    finally:
        handle.remove()
    act, grad = store["act"], store["act"].grad
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    cam = (flat - flat.min(1, keepdim=True).values) / (
        flat.max(1, keepdim=True).values - flat.min(1, keepdim=True).values + 1e-8)
    return cam.view_as(cam.new_zeros(x.shape[0], *x.shape[2:])).detach().numpy()


def plot_cams(df, y: np.ndarray, s: Scored, channels: int, out: Path, n: int) -> str | None:
    """Grad-CAM on a few meteors: the lowest- and highest-scored ones."""
    import torch

    from training._model import IMAGENET_MEAN, IMAGENET_STD

    meteors = np.flatnonzero(y)
    if s.learner is None or meteors.size == 0 or n <= 0:
        return None
    ranked = meteors[np.argsort(s.probs[meteors])]
    pick = list(dict.fromkeys([*ranked[: n // 2], *ranked[::-1][: n - n // 2]]))
    images = np.stack([load_input(df.iloc[i]["path"], channels) for i in pick])
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32))
    if channels == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    model = s.learner.model.cpu()
    body = model[0]
    meteor = list(s.learner.dls.vocab).index(METEOR)
    cams = grad_cam(model, (x - mean) / std, meteor, body)
    plt = _plt()
    fig, axes = plt.subplots(2, len(pick), figsize=(2.4 * len(pick), 5), squeeze=False)
    size = images.shape[1]
    for k, i in enumerate(pick):
        row = df.iloc[i]
        shown = _display(images[k])
        axes[0][k].imshow(shown, cmap="gray")
        axes[1][k].imshow(shown if shown.ndim == 2 else shown.mean(axis=2), cmap="gray")
        axes[1][k].imshow(cams[k], cmap="jet", alpha=0.45)
        line = _streak(row, size)
        if line is not None:
            for ax in (axes[0][k], axes[1][k]):
                ax.plot(line[0], line[1], color="lime", linewidth=0.6, alpha=0.7)
        axes[0][k].set_title(f"p={s.probs[i]:.2f}", fontsize=8)
        for ax in (axes[0][k], axes[1][k]):
            ax.axis("off")
    fig.suptitle("Grad-CAM on meteors (green: true streak where known)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "cam.png", dpi=90)
    plt.close(fig)
    return "cam.png"


def _streak(row, size: int):
    """The true streak, scaled from frame pixels to the (stretched) model input, if known."""
    segment = meteor_segment(row)
    if segment is None:
        return None
    x1, y1, x2, y2 = segment
    from PIL import Image

    with Image.open(row["frame"]) as frame:
        width, height = frame.size
    sx, sy = size / width, size / height
    return ([x1 * sx, x2 * sx], [y1 * sy, y2 * sy])


# ---------------------------------------------------------------- report


def format_value(v: Any) -> str:
    if isinstance(v, float):
        if np.isnan(v):
            return "–"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table, one line per row, values as the reports format them."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(format_value(v) for v in row) + " |" for row in rows])


class Report:
    """Blocks rendered twice: Markdown (report.md) and a self-contained-ish HTML page."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.md += [*markdown_table(header, rows), ""]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row)
                       + "</tr>" for row in rows)
        self.html.append(f"<table><tr>{head}</tr>{body}</table>")

    def image(self, name: str, alt: str) -> None:
        self.md.append(f"![{alt}]({name})\n")
        self.html.append(f'<p><img src="{html.escape(name)}" alt="{html.escape(alt)}"></p>')

    def write(self, out: Path, title: str) -> None:
        (out / "report.md").write_text("\n".join(self.md) + "\n")
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}"
                 "table{border-collapse:collapse;font-size:13px}"
                 "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}")
        (out / "report.html").write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>" + "\n".join(self.html)
            + "</body></html>\n")


def _coverage_section(r: Report, coverage: dict[str, Any], figure: str | None) -> None:
    shown = coverage["windows_shown"]
    r.heading("Candidate windows: the recall ceiling")
    r.para(f"The model sees only the {shown} strongest candidate windows of each frame. Of "
           f"{coverage['meteors']} meteor frames with a known segment, the share whose meteor "
           f"touches one of the N strongest windows (optimistic: a window holding any point of "
           f"the trail counts). No model on this preprocessing recalls more than the column "
           f"N = {shown}.")
    counts = coverage["counts"]
    rows = [["all", coverage["meteors"], *[coverage["covered"][str(n)] for n in counts]]]
    rows += [[b["bin"], b["meteors"], *[b["covered"][str(n)] for n in counts]]
             for b in coverage["by_peak"]]
    r.table(["peak", "meteors", *[f"N = {n}" + (" (shown)" if n == shown else "")
                                  for n in counts]], rows)
    if figure:
        r.image(figure, "candidate-window coverage")


def _missed_section(r: Report, both: dict[str, Any]) -> None:
    missed = both["at_best"] or both["at_threshold"]
    which = (f"the best threshold within {TARGET_FP_PER_1000:g} false positives per 1,000"
             if both["at_best"] else "the model's threshold; none keeps within "
             f"{TARGET_FP_PER_1000:g} false positives per 1,000")
    r.heading(f"Where the meteors are lost, at {missed['threshold']:g} ({which})", 3)
    causes = [title for key, title in missed_columns(missed) if key != "detected"]
    r.para("Each meteor frame counts once, under the first reason that applies: "
           + ", ".join(causes) + ". The windows need the simulator's segment; without it a "
           "miss is blamed on the score.")
    r.table(*missed_rows(missed))
    if missed.get("rows_by_snr"):
        r.para("The same meteor frames by signal-to-noise ratio (peak over the difference's "
               "noise σ around the trail):")
        r.table(*missed_rows(missed, "snr"))


def write_report(out: Path, split: str, df, y: np.ndarray, results: list[dict[str, Any]],
                 figures: dict[str, Any], dmeta: dict[str, Any],
                 coverage: dict[str, Any] | None = None) -> None:
    r = Report()
    r.heading(f"guaita evaluation — {split} nights", 1)
    nights = sorted(df["night"].unique())
    r.para(f"{len(df)} frames from {len(nights)} nights ({', '.join(nights)}): "
           f"{int(y.sum())} meteor, {int((~y).sum())} no-meteor. Preprocessing "
           f"{dmeta['preprocessing']['id']} at {dmeta['preprocessing']['size']} px.")
    with_alerts = [m for m in results if m.get("alerts")]
    r.heading("Summary at each model's threshold")
    r.table(["model", "threshold", "precision", "recall", "F1", "FP", "FP/1000 frames",
             "ROC AUC", "AP"],
            [[m["name"], m["threshold"], m["at_threshold"]["precision"],
              m["at_threshold"]["recall"], m["at_threshold"]["f1"], m["at_threshold"]["fp"],
              m["at_threshold"]["fp_per_1000"], m["roc_auc"], m["average_precision"]]
             for m in results])
    if with_alerts:
        r.heading("Alerts: through the edge pipeline, as the Pi runs the nights", 3)
        r.table(["model", "threshold", "recall (model)", "FP/1000 (model)", "recall (alerts)",
                 "false alerts/1000"],
                [[m["name"], m["threshold"], m["at_threshold"]["recall"],
                  m["at_threshold"]["fp_per_1000"], m["alerts"]["recall"],
                  m["alerts"]["fp_per_1000"]] for m in with_alerts])
        budgets = sorted({b for m in with_alerts for b in m["alerts"].get("best_within", {})},
                         key=float)
        if budgets:
            r.para("Best alert recall any threshold reaches within a false-alert budget "
                   "(every distinct alert score; the nights run once at threshold 0):")
            r.table(["model", *(f"≤ {b} false alerts/1000: recall (frames, threshold)"
                                for b in budgets)],
                    [[m["name"], *(recall_at_text(m["alerts"]["best_within"].get(b))
                                   for b in budgets)] for m in with_alerts])
    for name in figures["curves"]:
        r.image(name, name.removesuffix(".png"))
    if coverage and coverage["meteors"]:
        _coverage_section(r, coverage, figures.get("coverage"))
    for m in results:
        r.heading(m["name"])
        r.heading("Per class", 3)
        r.table(["class", "precision", "recall", "F1", "support"],
                [[c, v["precision"], v["recall"], v["f1"], v["support"]]
                 for c, v in m["per_class"].items()])
        a = m["at_threshold"]
        r.heading("Confusion matrix", 3)
        r.table(["true \\ predicted", "meteor", "no-meteor"],
                [["meteor", a["tp"], a["fn"]], ["no-meteor", a["fp"], a["tn"]]])
        r.heading("Threshold sweep", 3)
        r.table(["threshold", "recall", "precision", "TP", "FN", "FP", "FP/1000 frames", "F1"],
                [[s["threshold"], s["recall"], s["precision"], s["tp"], s["fn"], s["fp"],
                  s["fp_per_1000"], s["f1"]] for s in m["sweep"]])
        if m.get("recall_by_peak"):
            r.heading("Meteor recall by peak brightness (grey levels above background)", 3)
            r.table(["peak", "meteors", "detected", "recall"],
                    [[b["bin"], b["meteors"], b["detected"], b["recall"]]
                     for b in m["recall_by_peak"]])
        if m.get("recall_by_snr"):
            r.heading("Meteor recall by signal-to-noise ratio (peak over the local noise σ of "
                      "the difference)", 3)
            r.table(["SNR", "meteors", "detected", "recall"],
                    [[b["bin"], b["meteors"], b["detected"], b["recall"]]
                     for b in m["recall_by_snr"]])
        if m.get("missed"):
            _missed_section(r, m["missed"])
        if m.get("false_positives_by_flag"):
            r.heading("False positives among non-meteor frames holding…", 3)
            r.table(["truth flag", "frames", "false positives", "rate"],
                    [[f["negatives_with"], f["frames"], f["false_positives"], f["fp_rate"]]
                     for f in m["false_positives_by_flag"]])
        for key, title in (("by_condition", "By sky condition"),
                           ("by_cloud_cover", "By cloud cover"), ("by_camera", "By camera")):
            if m.get(key):
                r.heading(title, 3)
                r.table(["group", "frames", "meteors", "recall", "FP", "FP/1000 frames"],
                        [[g["group"], g["frames"], g["meteors"], g["recall"], g["fp"],
                          g["fp_per_1000"]] for g in m[key]])
        gallery = figures["galleries"].get(m["name"])
        if gallery:
            r.heading("Top losses (label review candidates)", 3)
            r.image(gallery, f"top losses {m['name']}")
    if figures.get("cam"):
        r.heading("Where the network looks")
        r.image(figures["cam"], "Grad-CAM")
    else:
        r.para("Grad-CAM needs a fastai learner (ONNX graphs have no gradients here).")
    r.write(out, f"guaita evaluation {split}")


# ---------------------------------------------------------------- CLI


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    set_threads(args.threads)
    df, dmeta = load_index(args.data)
    df = df[df["split"] == args.split].reset_index(drop=True)
    if df.empty:
        raise TrainingError(f"{args.data}: no frames in split {args.split!r}")
    y = (df["label"] == METEOR).to_numpy()
    from edge.preprocess import PreprocessSpec

    spec = PreprocessSpec.from_dict(dmeta["preprocessing"])
    channels = spec.channels
    scored: list[Scored] = []
    for path in args.model:
        if not path.exists():
            raise TrainingError(f"model not found: {path}")
        log.info("scoring %d %s frames with %s", len(df), args.split, path)
        if _is_bundle(path):
            scored.append(score_bundle(path, df, args.threshold, channels, dmeta.get("mask"),
                                       args.from_frames, args.threads or 1, args.workers))
        else:
            scored.append(score_learner(path, df, args.threshold))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    snr = meteor_snr(df, args.workers)  # the same per frame for every model
    results = [model_metrics(df, y, s, snr) for s in scored]
    alerts: dict[str, np.ndarray] = {}
    if args.alerts:
        for s, m in zip(scored, results, strict=True):
            if s.kind == "onnx":
                m["alerts"], alerts[s.name] = pipeline_alerts(
                    Path(s.info["path"]), df, y, s.threshold, args.threads or 1, args.workers)
    write_scores(out, df, scored, alerts, snr)
    figures: dict[str, Any] = {"curves": plot_curves(y, scored, out), "galleries": {}}
    # --gallery 0: no figure at all (not an empty one) and no heading in the report.
    for k, s in enumerate(scored if args.gallery > 0 else []):
        name = f"top-losses-{k}.png"
        results[k]["top_losses"] = plot_gallery(df, y, s, channels, out, args.gallery, name)
        figures["galleries"][s.name] = name
    learners = [s for s in scored if s.learner is not None]
    if learners:
        figures["cam"] = plot_cams(df, y, learners[0], channels, out, args.cams)
    coverage, window_rank = None, None
    if args.coverage and spec.id == "m1":
        from edge.preprocess import read_gray
        from training.coverage import summarise, window_ranks

        mask = read_gray(dmeta["mask"]) if dmeta.get("mask") else None
        log.info("candidate-window coverage of the %d meteor frames", int(y.sum()))
        ranks = window_ranks(df, spec, mask, progress=args.progress)
        coverage = summarise(ranks, spec.tiles**2)
        window_rank = {r["frame"]: r["rank"] for r in ranks}
        if coverage["meteors"]:
            figures["coverage"] = plot_coverage(coverage, out)
    shown = spec.tiles**2 if spec.id == "m1" else 0
    for s, m in zip(scored, results, strict=True):
        # At the model's threshold, and where the target is judged: the best threshold within
        # the false-positive budget (when one is).
        best = m["best_within_target"]
        m["missed"] = {
            "at_threshold": where_missed(df, y, s, s.threshold, window_rank, shown, snr),
            "at_best": None if best is None else where_missed(df, y, s, best["threshold"],
                                                              window_rank, shown, snr)}
    write_report(out, args.split, df, y, results, figures, dmeta, coverage)
    summary = {"split": args.split, "frames": len(df), "meteors": int(y.sum()),
               "nights": sorted(df["night"].unique().tolist()),
               "dataset": str(Path(args.data) / DATASET_META), "models": results,
               "candidate_coverage": coverage}
    write_json(out / "metrics.json", summary)
    for m in results:
        a = m["at_threshold"]
        log.info("%s @ %.3f: recall %.4f precision %.4f FP/1000 %.2f AUC %.4f", m["name"],
                 m["threshold"], a["recall"], a["precision"], a["fp_per_1000"], m["roc_auc"])
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", type=Path, required=True, help="`guaita dataset index` folder")
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="a `guaita train` folder / learner.pkl, or a model bundle; repeat "
                             "to compare models in one report")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--split", choices=["test", "valid", "train"], default="test")
    parser.add_argument("--threshold", type=float,
                        help="decision threshold for every model (default: a bundle's "
                             "recommended threshold, 0.5 for a learner)")
    parser.add_argument("--from-frames", action="store_true",
                        help="bundles: re-read the JPEG pairs and preprocess as the edge does "
                             "(slower; default scores the cached preprocessed images)")
    parser.add_argument("--gallery", type=int, default=16, help="top-loss images per model")
    parser.add_argument("--cams", type=int, default=6, help="Grad-CAM meteors (learners only)")
    parser.add_argument("--no-coverage", dest="coverage", action="store_false",
                        help="skip the candidate-window recall ceiling (m1 only; it decodes "
                             "every meteor frame pair again)")
    parser.add_argument("--alerts", action="store_true",
                        help="bundles: also run the split's nights through the edge pipeline "
                             "(suppression rules) at the threshold and count the alerts")
    parser.add_argument("--progress", action="store_true", help="progress bar for the coverage")
    parser.add_argument("--threads", type=int, help="torch/onnxruntime CPU threads")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes for a bundle's trail stage, which reads the frames "
                             "(default 1)")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        log.error("--workers must be >= 1")
        return 2
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        log.error("--threshold must be between 0 and 1")
        return 2
    try:
        evaluate(args)
    except TrainingError as exc:
        log.error("%s", exc)
        return 2
    print(args.out / "report.md")
    return 0
