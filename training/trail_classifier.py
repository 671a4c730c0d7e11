"""``guaita trail-classifier``: give a bundle the trail classifier, fitted on its training nights.

The second stage that looks along every candidate line of a frame pair (edge/trail_classifier.py
says what the Pi does with it). Here:

1. **examples**: every frame pair of the index's training and validation nights goes through
   the Pi's own code: its candidate lines (`edge.candidates`) and each one's strip and numbers
   (`edge.trail_strip`). They are cached under ``DATA/trail-examples/<fingerprint>/`` (a split
   that is there is not built again; another candidate search gets its own folder).
2. **labels**: with the meteor's segment in the index (simulator truth), a candidate that lies
   along it (both ends within 8 px of its line, covering at least 15 % of it) is a meteor and
   every other candidate is not. A meteor frame without a segment (an operator's folders) has
   its most meteor-like candidate as the meteor, chosen again at every mining pass (multiple-
   instance learning: the frame's score is its best candidate's).
3. **training** (torch; the Pi never needs it): a small CNN on the strips and numbers
   (`StripNet`), each epoch every meteor candidate and `--neg-ratio` times as many others, half
   of them drawn from the candidates the current model finds most meteor-like (hard negatives:
   satellites, aircraft, cloud edges), flips along and across the line. `--members K` trains
   K of them, from seeds SEED, SEED+1, ...
4. **export**: ONNX (opset 18) with the numbers' standardisation inside the graph, checked
   against torch on the validation candidates; K members become one graph whose logit is
   the mean of theirs. Each member's graph is cached beside the examples (``members/``), so
   adding members to an ensemble trains only the new ones.
5. **combination**: on the *validation* nights, the bundle's score is a logistic function of
   the frame's trail logit and the network's logit (the network's scores on its own training
   nights are too confident to fit that there). The network's share is the one that ranks
   those frames best up to 1 % false positives, the scale and bias a logistic regression.
   The threshold is then chosen on the same nights by ``guaita alert-threshold``, run next.

    guaita trail-classifier --data ~/guaita-work/data --bundle ~/guaita-work/bundle \\
        --out ~/guaita-work/bundle-trail --version 3.1.0 --workers 2 --members 3
    guaita alert-threshold --data ~/guaita-work/data --bundle ~/guaita-work/bundle-trail
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from training._common import METEOR, TrainingError, load_index, meteor_segment
from training._metrics import recall_within_budgets, stage_gain_summary
from training._parallel import process_map

log = logging.getLogger(__name__)
CACHE_DIR = "trail-examples"
MIN_COVER = 0.15  # of the true meteor, for a candidate to be the meteor
MAX_OFFSET_PX = 8.0  # both candidate ends within this of the meteor's line
SEARCH_KNOBS = ("seeds", "trace_level", "max_candidates", "soft_fwhm_px")  # CLI-settable
MINING_POOL = 120_000  # other candidates scored at each mining pass (a few minutes on CPU)
MEMBER_FORMAT = 1  # bump when training changes: cached member graphs are then trained again


# ---------------------------------------------------------------- examples


@dataclass
class Examples:
    """One split's candidates: `frame[i]` is the index row candidate i came from (ascending)."""

    strips: np.ndarray  # (N, CHANNELS, ACROSS, ALONG) float16 (halves the cache and memory)
    scalars: np.ndarray  # (N, len(SCALARS)) float32
    frame: np.ndarray  # (N,) int32
    cover: np.ndarray  # (N,) float32: share of the true meteor it covers, 0 if off its line
    frames: int  # index rows (frames without candidates included)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, strips=self.strips, scalars=self.scalars, frame=self.frame,
                 cover=self.cover, frames=np.array(self.frames))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Examples:
        with np.load(path) as d:
            return cls(d["strips"], d["scalars"], d["frame"], d["cover"], int(d["frames"]))


def cover(segment: tuple[float, float, float, float] | None, streak) -> float:
    """The share of the true meteor segment a candidate covers, 0 if it is off its line."""
    if segment is None:
        return 0.0
    mx1, my1, mx2, my2 = segment
    length = math.hypot(mx2 - mx1, my2 - my1)
    if length < 1:
        return 0.0
    ux, uy = (mx2 - mx1) / length, (my2 - my1) / length
    ends = ((streak.x1, streak.y1), (streak.x2, streak.y2))
    if max(abs((x - mx1) * -uy + (y - my1) * ux) for x, y in ends) > MAX_OFFSET_PX:
        return 0.0
    t1, t2 = ((x - mx1) * ux + (y - my1) * uy for x, y in ends)
    return max(0.0, min(max(t1, t2), length) - max(min(t1, t2), 0.0)) / length


def frame_examples(previous_path: str, frame_path: str, mask_path: str | None,
                   segment, stage_params: dict[str, Any]):
    """One frame pair's strips, numbers and covers (the Pi's code: Scorer.trail)."""
    from edge.candidates import CandidateParams
    from edge.preprocess import read_gray
    from edge.streaks import StreakParams
    from edge.trail_strip import pair_inputs

    previous, current = read_gray(previous_path), read_gray(frame_path)
    mask = read_gray(mask_path) if mask_path else None
    candidates, strips, scalars = pair_inputs(
        previous, current, mask, StreakParams(**stage_params["streak_params"]),
        CandidateParams.from_dict(stage_params["candidates"]),
        sampling=stage_params.get("strip_sampling", "point"))
    covers = np.array([cover(segment, c.streak) for c in candidates], np.float32)
    return strips.astype(np.float16), scalars, covers


def _frame_job(job):
    return frame_examples(*job)


def build_examples(rows, mask_path: str | None, stage_params: dict[str, Any], workers: int,
                   desc: str, progress: bool) -> Examples:
    from edge.trail_strip import ACROSS, ALONG, CHANNELS, SCALARS

    jobs = [(r["previous"], r["frame"], mask_path, meteor_segment(r), stage_params)
            for _, r in rows.iterrows()]
    strips, scalars, frame, covers = [], [], [], []
    results = process_map(_frame_job, jobs, workers, desc=desc, unit="frame", show=progress,
                          chunksize=8)
    for i, (s, n, c) in enumerate(results):
        strips.append(s)
        scalars.append(n)
        covers.append(c)
        frame.append(np.full(len(c), i, np.int32))
    if not strips or not sum(len(c) for c in covers):
        return Examples(np.zeros((0, CHANNELS, ACROSS, ALONG), np.float16),
                        np.zeros((0, len(SCALARS)), np.float32), np.zeros(0, np.int32),
                        np.zeros(0, np.float32), len(jobs))
    return Examples(np.concatenate(strips), np.concatenate(scalars), np.concatenate(frame),
                    np.concatenate(covers), len(jobs))


def examples_dir(data: Path, rows, mask_path: str | None, stage_params: dict[str, Any]) -> Path:
    """Where these frames' examples under this candidate search are cached."""
    from edge.trail_strip import ACROSS, ALONG, CHANNELS, SCALARS

    key = json.dumps({"stage": stage_params, "mask": mask_path,
                      "inputs": [CHANNELS, ACROSS, ALONG, *SCALARS],
                      "frames": list(rows["frame"])}, sort_keys=True)
    return data / CACHE_DIR / hashlib.sha256(key.encode()).hexdigest()[:12]


def examples_for(data: Path, split: str, rows, mask_path: str | None,
                 stage_params: dict[str, Any], workers: int, progress: bool) -> Examples:
    """A split's examples, from the cache when it holds them for these frames and params."""
    path = examples_dir(data, rows, mask_path, stage_params) / f"{split}.npz"
    if path.is_file():
        log.info("%s: cached examples %s", split, path)
        return Examples.load(path)
    started = time.monotonic()
    examples = build_examples(rows, mask_path, stage_params, workers, f"{split} candidates",
                              progress)
    examples.save(path)
    log.info("%s: %d candidates from %d frames in %.0f s -> %s", split, len(examples.frame),
             examples.frames, time.monotonic() - started, path)
    return examples


# ---------------------------------------------------------------- the network


def strip_net(n_scalars: int, width: int = 16):
    """The trail classifier: convolutions along and across the strip, its numbers beside."""
    import torch
    from torch import nn

    class StripNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.register_buffer("mean", torch.zeros(n_scalars))
            self.register_buffer("scale", torch.ones(n_scalars))

            def block(cin: int, cout: int, kernel: tuple[int, int]) -> list[nn.Module]:
                pad = (kernel[0] // 2, kernel[1] // 2)
                return [nn.Conv2d(cin, cout, kernel, padding=pad), nn.BatchNorm2d(cout),
                        nn.ReLU()]

            self.conv = nn.Sequential(
                *block(2, w, (3, 5)), nn.MaxPool2d((1, 2)),
                *block(w, 2 * w, (3, 5)), nn.MaxPool2d((2, 2)),
                *block(2 * w, 4 * w, (3, 3)), nn.MaxPool2d((2, 2)),
                *block(4 * w, 4 * w, (3, 3)),
                # Six places along the line are kept apart: where the light is matters.
                nn.AdaptiveMaxPool2d((1, 6)), nn.Flatten())
            self.numbers = nn.Sequential(nn.Linear(n_scalars, 32), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(4 * w * 6 + 32, 64), nn.ReLU(),
                                      nn.Dropout(0.2), nn.Linear(64, 1))

        def forward(self, strips, scalars):
            numbers = self.numbers((scalars - self.mean) / self.scale)
            return self.head(torch.cat([self.conv(strips), numbers], 1)).squeeze(1)

    return StripNet()


def logits(model, strips: np.ndarray, scalars: np.ndarray, batch: int = 2048) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(strips), batch):
            out.append(model(torch.from_numpy(strips[i:i + batch].astype(np.float32)),
                             torch.from_numpy(scalars[i:i + batch])).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def per_frame_max(examples: Examples, values: np.ndarray) -> np.ndarray:
    """Each frame's highest candidate value, -inf where it has no candidate."""
    out = np.full(examples.frames, -np.inf)
    np.maximum.at(out, examples.frame, values)
    return out


def frame_logits(examples: Examples, z: np.ndarray) -> np.ndarray:
    """Each frame's trail logit (its best candidate's), NaN where it has no candidate."""
    out = per_frame_max(examples, z)
    return np.where(np.isfinite(out), out, np.nan)


def candidate_labels(examples: Examples, meteor_frames: np.ndarray, has_segment: np.ndarray,
                     z: np.ndarray | None) -> np.ndarray:
    """1 for the candidates that are the meteor (by segment; by the model's best guess in a
    meteor frame without one: its top candidate by `z`, or by significance before any)."""
    from edge.trail_strip import SCALARS

    labels = ((examples.cover >= MIN_COVER) & meteor_frames[examples.frame]).astype(np.float32)
    blind = meteor_frames & ~has_segment
    if blind.any():
        key = z if z is not None else examples.scalars[:, SCALARS.index("significance")]
        best = per_frame_max(examples, key)
        top = blind[examples.frame] & (key >= best[examples.frame])
        labels[top] = 1.0
    return labels


def train_model(examples: Examples, meteor_frames: np.ndarray, has_segment: np.ndarray,
                epochs: int, neg_ratio: int, hard_share: float, seed: int, progress: bool):
    """StripNet fitted to the training candidates; returns (model, per-epoch history)."""
    import torch
    from torch import nn

    from edge.trail_strip import SCALARS

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = strip_net(len(SCALARS))
    model.mean.copy_(torch.from_numpy(examples.scalars.mean(axis=0)))
    model.scale.copy_(torch.from_numpy(examples.scalars.std(axis=0) + 1e-6))
    labels = candidate_labels(examples, meteor_frames, has_segment, None)
    positives = np.nonzero(labels > 0)[0]
    if len(positives) == 0 or len(positives) == len(labels):
        raise TrainingError("the training candidates must hold both meteors and others "
                            f"({len(positives)} of {len(labels)} are meteors)")
    per_epoch = neg_ratio * len(positives)
    batch = 256
    steps = max(1, (len(positives) + per_epoch) // batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=epochs * steps)
    # Positives are 1 in neg_ratio+1 of a batch; weighting them back to 1 in 4 keeps the
    # logits' scale as the meteor-to-other ratio the model meets changes.
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(max(neg_ratio / 3.0, 1.0)))
    hard: np.ndarray | None = None
    # Meteor frames without a segment (label folders) are relabelled at every mining pass.
    relabel = bool((meteor_frames & ~has_segment).any())
    history = []
    for epoch in range(epochs):
        started = time.monotonic()
        if epoch >= 2 and hard_share > 0 and (epoch - 2) % 3 == 0:
            # Mining pass: score (a sample of) the other candidates, keep the most meteor-like
            # quarter to draw from until the next pass.
            others = np.nonzero(labels == 0)[0]
            pool = rng.choice(others, min(len(others), MINING_POOL), replace=False)
            if relabel:  # the labels need every candidate's logit: the pool's are among them
                z_all = mining_logits(model, examples.strips, examples.scalars)
                z = z_all[pool]
            else:
                z = mining_logits(model, examples.strips[pool], examples.scalars[pool])
            hard = pool[np.argsort(-z)[: max(len(pool) // 4, 1)]]
            if relabel:
                labels = candidate_labels(examples, meteor_frames, has_segment, z_all)
                positives = np.nonzero(labels > 0)[0]
        others = np.nonzero(labels == 0)[0]
        n_hard = int(hard_share * per_epoch) if hard is not None else 0
        picked = [positives, rng.choice(others, min(len(others), per_epoch - n_hard),
                                        replace=False)]
        if n_hard:
            picked.append(rng.choice(hard, min(len(hard), n_hard), replace=False))
        order = np.concatenate(picked)
        rng.shuffle(order)
        model.train()
        total = 0.0
        for k in range(steps):
            rows = np.sort(order[k * batch:(k + 1) * batch])
            if len(rows) == 0:
                continue
            strips = torch.from_numpy(examples.strips[rows].astype(np.float32))
            # A meteor is a meteor either way along its line and mirrored across it.
            if rng.random() < 0.5:
                strips = strips.flip(3)
            if rng.random() < 0.5:
                strips = strips.flip(2)
            loss = loss_fn(model(strips, torch.from_numpy(examples.scalars[rows])),
                           torch.from_numpy(labels[rows]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach())
        history.append({"epoch": epoch, "loss": total / steps, "hard": n_hard,
                        "seconds": round(time.monotonic() - started, 1)})
        if progress:
            print(f"epoch {epoch}: loss {total / steps:.4f}, {n_hard} hard negatives, "
                  f"{history[-1]['seconds']:.0f} s", flush=True)
    return model, history


def export_onnx(model) -> bytes:
    """The classifier as ONNX: inputs strips (N, C, H, W) and scalars (N, K), output logits (N)."""
    import io

    import torch

    from edge.trail_strip import ACROSS, ALONG, CHANNELS, SCALARS

    model.eval()
    strips = torch.zeros(2, CHANNELS, ACROSS, ALONG)
    scalars = torch.zeros(2, len(SCALARS))
    buffer = io.BytesIO()
    torch.onnx.export(model, (strips, scalars), buffer, input_names=["strips", "scalars"],
                      output_names=["logits"], opset_version=18, dynamo=False,
                      dynamic_axes={"strips": {0: "n"}, "scalars": {0: "n"}, "logits": {0: "n"}})
    return buffer.getvalue()


def graph_logits(onnx_bytes: bytes, strips: np.ndarray, scalars: np.ndarray,
                 threads: int = 1, batch: int = 512) -> np.ndarray:
    """The candidates' logits from an exported graph (onnxruntime, as the Pi runs it)."""
    from training.export import onnx_session

    session = onnx_session(onnx_bytes, threads)
    out = [session.run(None, {"strips": strips[i:i + batch].astype(np.float32),
                              "scalars": scalars[i:i + batch]})[0].reshape(-1)
           for i in range(0, len(strips), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def mining_logits(model, strips: np.ndarray, scalars: np.ndarray) -> np.ndarray:
    """The model's logits as a mining pass needs them, through its exported graph: on two
    CPU cores onnxruntime scores the strips ~5x faster than torch's eager forward (20,000
    strips, one thread: 9 s against 46 s), the same logits to 1e-7, and the passes had
    taken two thirds of a member's training time. Leaves the model in eval mode."""
    import torch

    return graph_logits(export_onnx(model), strips, scalars, threads=torch.get_num_threads())


def onnx_parity(onnx_bytes: bytes, model, examples: Examples, limit: int = 4096) -> float:
    """Max |logit difference| between the ONNX graph and torch on the first candidates."""
    n = min(limit, len(examples.frame))
    if n == 0:
        return 0.0
    strips, scalars = examples.strips[:n].astype(np.float32), examples.scalars[:n]
    return float(np.max(np.abs(graph_logits(onnx_bytes, strips, scalars)
                               - logits(model, strips, scalars))))


def merge_members(graphs: list[bytes]) -> bytes:
    """Several exported classifiers as one graph (one session on the Pi) whose logit is the
    mean of theirs: the seeds alone move one classifier's strict end by points
    (docs/training.md), their mean is steadier."""
    import onnx
    from onnx import compose, helper

    if len(graphs) == 1:
        return graphs[0]
    models = [compose.add_prefix(onnx.load_from_string(g), f"member{k}_", rename_inputs=False)
              for k, g in enumerate(graphs)]
    first = models[0]
    mean = helper.make_node("Mean", [m.graph.output[0].name for m in models], ["logits"])
    graph = helper.make_graph(
        [n for m in models for n in m.graph.node] + [mean], "mean_of_members",
        list(first.graph.input),
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["n"])],
        [t for m in models for t in m.graph.initializer])
    merged = helper.make_model(graph, opset_imports=first.opset_import,
                               ir_version=first.ir_version)
    onnx.checker.check_model(merged)
    return merged.SerializeToString()


def trained_member(examples: Examples, valid: Examples, meteor_frames: np.ndarray,
                   has_segment: np.ndarray, args: argparse.Namespace, seed: int,
                   cache: Path) -> tuple[bytes, dict[str, Any]]:
    """One classifier's exported graph and its training record, from `cache` when this
    training (same examples, epochs, ratios, seed) was run before: adding a member to an
    ensemble trains only the new one."""
    key = f"v{MEMBER_FORMAT}-e{args.epochs}-n{args.neg_ratio}-h{args.hard_share:g}-s{seed}"
    graph_path, record_path = cache / f"{key}.onnx", cache / f"{key}.json"
    if graph_path.is_file() and record_path.is_file():
        log.info("member seed %d: cached %s", seed, graph_path)
        return graph_path.read_bytes(), json.loads(record_path.read_text())
    started = time.monotonic()
    model, history = train_model(examples, meteor_frames, has_segment, args.epochs,
                                 args.neg_ratio, args.hard_share, seed, args.progress)
    graph = export_onnx(model)
    parity = onnx_parity(graph, model, valid)
    if parity > 1e-3:
        raise TrainingError(f"the exported trail classifier (seed {seed}) differs from torch "
                            f"by {parity:.2g} in logit")
    record = {"seed": seed, "seconds": round(time.monotonic() - started, 1),
              "onnx_max_abs_logit_diff": parity, "history": history}
    cache.mkdir(parents=True, exist_ok=True)
    graph_path.write_bytes(graph)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return graph, record


# ---------------------------------------------------------------- the bundle's score


def combination_inputs(trail: np.ndarray, network: np.ndarray, empty: float) -> np.ndarray:
    from edge.trail_classifier import logit

    return np.column_stack([np.where(np.isnan(trail), empty, trail),
                            [logit(float(p)) for p in network]])


# The share of the network's logit in the score is tried at these values (and at the
# logistic regression's own); beyond 1 the network would lead the trail.
NETWORK_SHARES = tuple(round(r, 2) for r in np.arange(0.0, 1.001, 0.05))
# The ranking is judged over false-positive rates 0..1 %: the project's budget, 10 per 1,000.
COMBINATION_MAX_FPR = 0.01


@dataclass(frozen=True)
class Combination:
    """The bundle's score, sigmoid(trail_weight · trail logit + network_weight · network
    logit + bias), and how its network share was chosen."""

    trail_weight: float
    network_weight: float
    bias: float
    share: float  # network_weight / trail_weight: all that the ranking depends on
    logistic_share: float  # what a plain logistic regression of the labels gives
    partial_roc_area: dict[str, float]  # at the chosen and the logistic's share


def fit_combination(trail: np.ndarray, network: np.ndarray, y: np.ndarray,
                    empty: float, max_fpr: float = COMBINATION_MAX_FPR) -> Combination:
    """The bundle's score on the validation frames. A logistic regression of the labels on
    both logits spends the network's share on the likelihood of every frame, most of them
    easy; the Pi alerts only at the top, where the network can be the weaker of the two (its
    satellites and cloud edges). So the share is the one that ranks the validation frames
    best at false-positive rates up to `max_fpr` (partial ROC area; of equals, the one
    nearest the regression's), and the scale and bias are then fitted by logistic
    regression with that share fixed, which keeps the score a probability for the threshold
    to be set on."""
    from training._metrics import partial_roc_area
    from training.trail_stage import fit_logistic

    x = combination_inputs(trail, network, empty)
    labels = y.astype(float)
    coef, _ = fit_logistic(x, labels, l2=1.0)
    if coef[0] <= 0:
        raise TrainingError("the trail logit does not separate the validation frames (its "
                            "weight came out <= 0): too few validation meteors?")
    logistic_share = round(max(0.0, float(coef[1] / coef[0])), 4)
    areas = {share: partial_roc_area(y, x[:, 0] + share * x[:, 1], max_fpr)
             for share in sorted({*NETWORK_SHARES, logistic_share})}
    share = float(max(areas, key=lambda r: (areas[r], -abs(r - logistic_share))))
    (scale,), bias = fit_logistic((x[:, 0] + share * x[:, 1])[:, None], labels, l2=1.0)
    if scale <= 0:
        raise TrainingError("the combined logit does not separate the validation frames")
    return Combination(trail_weight=float(scale), network_weight=float(scale * share),
                       bias=float(bias), share=share, logistic_share=logistic_share,
                       partial_roc_area={"chosen": areas[share],
                                         "logistic": areas[logistic_share]})


def build(args: argparse.Namespace) -> dict[str, Any]:
    from edge.bundle import load_bundle
    from edge.candidates import CandidateParams
    from edge.decide import Decider
    from edge.model import open_scorer
    from edge.preprocess import PreprocessSpec
    from edge.trail_classifier import MODEL_FILE, TrailClassifier
    from training.evaluate import score_cached
    from training.trail_stage import write_staged_bundle

    search = replace(CandidateParams(), **{name: value for name in SEARCH_KNOBS
                                           if (value := getattr(args, name, None)) is not None})
    bundle = load_bundle(args.bundle)
    df, meta = load_index(args.data)
    if "frame" not in df.columns or "previous" not in df.columns:
        raise TrainingError(f"{args.data}: the index has no frame paths (the classifier reads "
                            "frames)")
    spec = PreprocessSpec.from_dict(meta["preprocessing"])
    if spec.fingerprint() != bundle.manifest.preprocessing.fingerprint():
        raise TrainingError(f"{args.data} was preprocessed as {spec.id}, the bundle expects "
                            f"{bundle.manifest.preprocessing.id}: not the model's index")
    stage_params = {"candidates": search.to_dict(),
                    "streak_params": asdict(Decider().params)}
    if args.strip_sampling != "point":  # absent for "point", so caches made before stay valid
        stage_params["strip_sampling"] = args.strip_sampling
    mask = meta.get("mask") or None
    split_rows = {}
    for split in ("train", "valid"):
        rows = df[df["split"] == split].reset_index(drop=True)
        if rows.empty or not (rows["label"] == METEOR).any():
            raise TrainingError(f"{args.data}: the {split} nights hold no meteor frames")
        split_rows[split] = rows
    examples = {split: examples_for(args.data, split, rows, mask, stage_params, args.workers,
                                     args.progress) for split, rows in split_rows.items()}

    import torch

    torch.set_num_threads(max(1, args.threads))
    train_rows = split_rows["train"]
    meteor = (train_rows["label"] == METEOR).to_numpy()
    has_segment = np.array([meteor_segment(r) is not None for _, r in train_rows.iterrows()])
    seeds = [args.seed + k for k in range(args.members)]
    members_cache = examples_dir(args.data, split_rows["train"], mask, stage_params) / "members"
    trained = [trained_member(examples["train"], examples["valid"], meteor, has_segment, args,
                              seed, members_cache) for seed in seeds]
    onnx_bytes = merge_members([graph for graph, _ in trained])
    records = [record for _, record in trained]
    history = [{"seed": r["seed"], **h} for r in records for h in r["history"]]
    train_s = sum(r["seconds"] for r in records)
    parity = max(r["onnx_max_abs_logit_diff"] for r in records)

    # The bundle's score: fitted on the validation nights' frames.
    valid = split_rows["valid"]
    y = (valid["label"] == METEOR).to_numpy()
    scorer = open_scorer(bundle, threads=args.threads)
    network = score_cached(scorer, list(valid["path"]), spec.channels)
    ex = examples["valid"]
    trail = frame_logits(ex, graph_logits(onnx_bytes, ex.strips, ex.scalars, args.threads))
    empty = float(np.nanmin(trail)) - 1.0 if np.isfinite(trail).any() else -12.0
    combination = fit_combination(trail, network, y, empty)
    fitted_on = {"split": "train", "frames": int(examples["train"].frames),
                 "candidates": len(examples["train"].frame),
                 "meteor_frames": int(meteor.sum()), "nights": int(train_rows["night"].nunique()),
                 "epochs": args.epochs, "members": len(seeds), "seeds": seeds,
                 "neg_ratio": args.neg_ratio,
                 "hard_share": args.hard_share, "train_seconds": round(train_s, 1),
                 "onnx_max_abs_logit_diff": parity, "combined_on": "valid",
                 "network_share": combination.share,
                 "network_share_by": f"partial ROC area to FPR {COMBINATION_MAX_FPR:g}",
                 "logistic_network_share": combination.logistic_share,
                 "dataset": str(args.data)}
    stage = TrailClassifier(sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                            trail_weight=combination.trail_weight,
                            network_weight=combination.network_weight,
                            bias=combination.bias, empty_logit=empty,
                            candidates=CandidateParams.from_dict(stage_params["candidates"]),
                            streak_params=Decider().params, fitted_on=fitted_on,
                            strip_sampling=args.strip_sampling)
    combined = np.array([stage.combine(float(n), None if np.isnan(t) else float(t))
                         for n, t in zip(network, trail, strict=True)])
    trail_alone = 1 / (1 + np.exp(-np.nan_to_num(trail, nan=empty) / 4))
    gain = {"frames": len(y), "meteors": int(y.sum()),
            "model_alone": recall_within_budgets(y, network),
            "trail_alone": recall_within_budgets(y, trail_alone),
            "staged": recall_within_budgets(y, combined)}

    out = write_staged_bundle(bundle, args.out, stage.to_dict(), args.version, gain,
                              "without the trail classifier", {MODEL_FILE: onnx_bytes})
    report = {"bundle": out.label, "fitted_on": fitted_on, "valid": gain,
              "combination": asdict(combination),
              "history": history}
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edge.candidates import CandidateParams
    from edge.trail_strip import STRIP_SAMPLINGS

    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", type=Path, required=True,
                        help="the `guaita dataset index` output the bundle's model was trained on")
    parser.add_argument("--bundle", type=Path, required=True, help="the model's bundle")
    parser.add_argument("--out", type=Path, required=True, help="write the new bundle here")
    parser.add_argument("--version", help="the new bundle's version (default: unchanged)")
    parser.add_argument("--epochs", type=int, default=30,
                        help="per member (default 30, as the shipped bundle's; docs/training.md "
                             "compares 10, 20 and 30)")
    parser.add_argument("--neg-ratio", type=int, default=12,
                        help="other candidates per meteor candidate each epoch (default 12)")
    parser.add_argument("--hard-share", type=float, default=0.5,
                        help="share of them drawn from the most meteor-like (default 0.5)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that find the candidates (default 1)")
    # The candidate search is the Pi's too (the bundle records it): a wider one holds more
    # faint meteors and hands every frame more chances of a false positive.
    parser.add_argument("--seeds", type=int,
                        help=f"line-map maxima traced per frame (default {CandidateParams.seeds})")
    parser.add_argument("--trace-level", type=float,
                        help=f"the traced ridge's floor, local sigma (default "
                             f"{CandidateParams.trace_level})")
    parser.add_argument("--max-candidates", type=int,
                        help=f"candidate lines kept per frame (default "
                             f"{CandidateParams.max_candidates})")
    parser.add_argument("--soft-fwhm", dest="soft_fwhm_px", type=float,
                        help=f"lines this wide across (px) are ranked after the sharp ones; 0: by "
                             f"significance alone (default {CandidateParams.soft_fwhm_px:g})")
    parser.add_argument("--strip-sampling", choices=STRIP_SAMPLINGS, default="mean",
                        help="each strip sample along the line: the mean over its stretch of "
                             "the line (a faint long trail stands further above the noise; "
                             "edge/trail_strip.py), or the light at one point (bundles up to "
                             "3.5.0) (default mean, as the shipped bundle's)")
    parser.add_argument("--threads", type=int, default=1, help="torch/onnxruntime threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=1,
                        help="classifiers trained (seeds SEED, SEED+1, ...) and averaged in one "
                             "graph: K times the training and the Pi's classifier time "
                             "(default 1)")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("--report", type=Path, help="also write the report JSON here")


def run(args: argparse.Namespace) -> int:
    for name in ("epochs", "neg_ratio", "workers", "threads", "members"):
        if getattr(args, name) < 1:
            print(f"guaita trail-classifier: --{name.replace('_', '-')} must be >= 1")
            return 2
    if not 0.0 <= args.hard_share < 1.0:
        print("guaita trail-classifier: --hard-share must be in [0, 1)")
        return 2
    try:
        report = build(args)
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        print(f"guaita trail-classifier: {exc}")
        return 2
    print(f"wrote {args.out} ({report['bundle']}): classifier fitted on "
          f"{report['fitted_on']['candidates']} training candidates; validation best recall "
          f"{stage_gain_summary(report['valid'], 'classifier')}. "
          f"Next: guaita alert-threshold --bundle {args.out}")
    return 0
