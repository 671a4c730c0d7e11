"""``guaita dataset index``: labelled frames → preprocessed training images + a night-split index.

Labels come from one of
  * the simulator's ``truth.csv`` (``--truth``),
  * an operator's label folders ``DIR/meteor/`` and ``DIR/no-meteor/`` holding copies of frames
    (``--folders DIR --images TREE``; the previous frame is looked up in the images tree), or
  * a 2021-style CSV ``fn,dataset,meteor`` (``--csv FILE --images TREE``).

Each labelled frame is paired with the previous frame of the same night (``edge.frames``), run
through ``edge.preprocess.Preprocessor`` (the edge's own code) and cached as a PNG under a folder
keyed by the spec's fingerprint, so re-running skips finished images and a new spec never mixes
with an old one. The first frame of a night has no reference and is skipped, as on the edge.

Consecutive frames of a night are near-duplicates, so the train/valid/test split is by whole
night. Only meteors are positives: satellites and aircraft are negatives the model must learn to
ignore (the truth columns are kept in the index so evaluation can break errors down by them).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.config import DetectionConfig
from edge.frames import Frame, is_consecutive, list_frames, parse_frame
from edge.preprocess import PreprocessError, Preprocessor, PreprocessSpec, read_gray
from training._common import (
    DATASET_META,
    INDEX_NAME,
    METEOR,
    NOT_METEOR,
    SPLITS,
    TrainingError,
    save_input,
    write_json,
)
from training._parallel import process_map
from training.meteor_snr import meteor_job, snr_bin, snr_of

log = logging.getLogger(__name__)

# Truth columns carried into the index when the label source has them (simulator truth.csv).
TRUTH_COLUMNS = (
    "frame_index", "meteor_peak", "meteor_length_px", "meteor_x1", "meteor_y1", "meteor_x2",
    "meteor_y2", "satellite", "aircraft", "cloud_cover", "moon", "twilight", "flash",
    "exposure_jump", "condition", "camera",
)
TRUE_WORDS = {"1", "true", "yes", "y", "meteor", "t"}
FALSE_WORDS = {"0", "false", "no", "n", "no-meteor", "no_meteor", "not_meteor", "not-meteor", "f",
               ""}
NIGHT_LIST_RE = re.compile(r"^\d{8}$")

# How many seeded draws a balanced split compares. On the shipped recipe's 96 nights, balanced
# by condition, the distance stopped falling after 200 draws (plain 0.65, then 0.16); 500 draws
# take 0.35 s.
BALANCE_DRAWS = 500
# The derived balance column: each meteor's signal-to-noise bin, measured from its frame pair
# (how hard it is to see, which neither its sky nor its camera says alone; docs/training.md).
SNR_COLUMN = "snr"


@dataclass
class Labelled:
    """One labelled frame before pairing: where it is, its label, and any truth columns."""

    frame: Frame
    meteor: bool
    extra: dict[str, str] = field(default_factory=dict)
    split_hint: str | None = None  # from a 2021 CSV's dataset column


@dataclass
class Pair:
    labelled: Labelled
    previous: Frame
    output: Path


# ---------------------------------------------------------------- labels


def parse_bool(value: str, where: str) -> bool:
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise TrainingError(f"{where}: cannot read {value!r} as a label (meteor/no-meteor, 1/0)")


def labels_from_truth(truth_csv: Path) -> list[Labelled]:
    """Simulator truth: ``file`` is relative to the CSV's folder; ``meteor`` is the label; the
    folder's name is the frames' ``camera`` (unless the CSV has that column)."""
    root = truth_csv.parent
    out: list[Labelled] = []
    with open(truth_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        for need in ("file", "meteor"):
            if need not in (reader.fieldnames or []):
                raise TrainingError(f"{truth_csv}: missing column {need!r}")
        for line, row in enumerate(reader, start=2):
            frame = parse_frame(root / row["file"])
            if frame is None:
                raise TrainingError(f"{truth_csv}:{line}: {row['file']!r} is not an AllSky frame")
            extra = {k: row[k] for k in TRUTH_COLUMNS if k in row}
            extra.setdefault("camera", root.name)  # the simulator writes a camera per folder
            out.append(Labelled(frame, parse_bool(row["meteor"], f"{truth_csv}:{line}"), extra))
    return out


def drop_faint_meteors(labelled: list[Labelled], min_peak: float) -> list[Labelled]:
    """Leave out (as neither class) meteor frames whose simulated peak is under ``min_peak``.

    The simulator draws meteor brightness from a power law, so about half its meteors peak under
    13 grey levels above the sky: invisible once a 1304-px frame is area-resized to the model's
    input. An operator would not have labelled them; kept as positives they are label noise.
    """
    def faint(lab: Labelled) -> bool:
        peak = lab.extra.get("meteor_peak", "")
        return lab.meteor and peak not in ("", None) and float(peak) < min_peak

    return [lab for lab in labelled if not faint(lab)]


def _tree_by_name(images: Path) -> dict[str, Frame]:
    if not images.is_dir():
        raise TrainingError(f"images tree not found: {images}")
    return {f.name: f for f in list_frames(images)}


def labels_from_folders(folders: Path, images: Path) -> list[Labelled]:
    """``folders/meteor/*.jpg`` and ``folders/no-meteor/*.jpg`` are copies of frames in `images`."""
    by_name = _tree_by_name(images)
    out: list[Labelled] = []
    missing: list[str] = []
    for sub, meteor in ((METEOR, True), (NOT_METEOR, False)):
        folder = folders / sub
        if not folder.is_dir():
            if meteor:
                raise TrainingError(f"{folder} not found (label folders: meteor/ and no-meteor/)")
            continue
        for path in sorted(folder.iterdir()):
            copy = parse_frame(path)
            if copy is None:
                continue
            frame = by_name.get(copy.name)
            if frame is None:
                missing.append(copy.name)
                continue
            out.append(Labelled(frame, meteor))
    if missing:
        log.warning("%d labelled frames are not in %s (first: %s): skipped", len(missing), images,
                    missing[0])
    return out


def labels_from_csv2021(path: Path, images: Path) -> list[Labelled]:
    """The 2021 reference's index: ``fn`` (any path; only the file name is used), ``dataset``
    (training_set/test_set), ``meteor`` (meteor/no-meteor or 1/0)."""
    by_name = _tree_by_name(images)
    out: list[Labelled] = []
    missing = 0
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        for need in ("fn", "meteor"):
            if need not in (reader.fieldnames or []):
                raise TrainingError(f"{path}: missing column {need!r}")
        for line, row in enumerate(reader, start=2):
            name = re.split(r"[\\/]", row["fn"].strip())[-1]
            frame = by_name.get(name)
            if frame is None:
                missing += 1
                continue
            hint = (row.get("dataset") or "").strip().lower()
            split = "test" if hint.startswith("test") else ("train" if hint else None)
            out.append(Labelled(frame, parse_bool(row["meteor"], f"{path}:{line}"), {}, split))
    if missing:
        log.warning("%d rows of %s name frames not found in %s: skipped", missing, path, images)
    return out


def add_rest_negative(labelled: list[Labelled]) -> list[Labelled]:
    """Every frame of a labelled night that carries no label becomes a negative.

    The practical workflow for an operator: review a night, copy its meteors into meteor/, and
    let the rest of that night count as no-meteor.
    """
    known = {lab.frame.path.resolve() for lab in labelled}
    nights: dict[str, Path] = {lab.frame.night: lab.frame.path.parent for lab in labelled}
    extra = [
        Labelled(frame, False)
        for night, folder in sorted(nights.items())
        for frame in list_frames(folder)
        if frame.night == night and frame.path.resolve() not in known
    ]
    return labelled + extra


# ---------------------------------------------------------------- pairing and splitting


def pair_with_previous(
    labelled: Iterable[Labelled], max_gap_s: float | None
) -> tuple[list[tuple[Labelled, Frame]], Counter]:
    """Attach each frame's previous frame of the same night (listed from its night folder)."""
    skipped: Counter = Counter()
    listing: dict[Path, tuple[list[Frame], dict]] = {}
    pairs: list[tuple[Labelled, Frame]] = []
    for lab in labelled:
        folder = lab.frame.path.parent
        if folder not in listing:
            frames = [f for f in list_frames(folder) if f.night == lab.frame.night]
            listing[folder] = (frames, {f.captured: i for i, f in enumerate(frames)})
        frames, position_of = listing[folder]
        position = position_of.get(lab.frame.captured)
        if position is None:
            skipped["not_in_tree"] += 1
            continue
        if position == 0:
            skipped["first_of_night"] += 1
            continue
        previous = frames[position - 1]
        gap_ok = is_consecutive(previous, lab.frame, max_gap_s if max_gap_s else float("inf"))
        if not gap_ok:
            skipped["gap_too_long"] += 1
            continue
        pairs.append((lab, previous))
    return pairs, skipped


def parse_nights(text: str | None) -> list[str]:
    if not text:
        return []
    nights = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in nights if not NIGHT_LIST_RE.match(n)]
    if bad:
        raise TrainingError(f"night lists take YYYYMMDD,YYYYMMDD,...; bad: {bad}")
    return nights


def split_nights(
    nights: Iterable[str],
    valid_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    valid_nights: Iterable[str] = (),
    test_nights: Iterable[str] = (),
    hints: dict[str, str] | None = None,
    profiles: dict[str, Counter] | None = None,
    draws: int = BALANCE_DRAWS,
) -> dict[str, str]:
    """night → "train" | "valid" | "test": explicit lists first, then hints, then fractions.

    Fractions are of all nights and each held-out split gets at least one night when its
    fraction is > 0 and there are enough nights; the draw is seeded, so re-indexing reproduces it.
    With `profiles` (per night, a count of its frames by kind, see `night_profiles`) the seeded
    draw is repeated `draws` times and the one whose held-out splits look most like all the nights
    together is kept (`profile_distance`); the first of those draws is the plain one.
    """
    all_nights = sorted(set(nights))
    valid_set, test_set = set(valid_nights), set(test_nights)
    both = valid_set & test_set
    if both:
        raise TrainingError(f"nights in both --valid-nights and --test-nights: {sorted(both)}")
    unknown = (valid_set | test_set) - set(all_nights)
    if unknown:
        raise TrainingError(f"nights named for a split but not in the data: {sorted(unknown)}")
    fixed = {n: "valid" for n in valid_set} | {n: "test" for n in test_set}
    hinted = False
    for night, hint in (hints or {}).items():
        if night in all_nights and night not in fixed and hint == "test":
            fixed[night] = "test"
            hinted = True
    n_total = len(all_nights)
    rng = random.Random(seed)

    def draw() -> dict[str, str]:
        split = dict(fixed)
        free = [n for n in all_nights if n not in split]
        rng.shuffle(free)

        def take(name: str, frac: float) -> None:
            have = sum(1 for s in split.values() if s == name)
            want = round(frac * n_total) if frac > 0 else 0
            if frac > 0 and want == 0 and len(free) > 1:
                want = 1
            for _ in range(max(0, want - have)):
                if len(free) <= 1:  # always leave a night to train on
                    break
                split[free.pop()] = name

        if not hinted:  # a labelled test set (2021 CSV) is the test set, not topped up
            take("test", test_frac)
        take("valid", valid_frac)
        for n in free:
            split[n] = "train"
        return split

    best = draw()
    if profiles:
        best_distance = profile_distance(best, profiles)
        for _ in range(draws - 1):
            candidate = draw()
            distance = profile_distance(candidate, profiles)
            if distance < best_distance:
                best, best_distance = candidate, distance
    return best


def measure_snr_bins(paired: list[tuple[Labelled, Frame]], workers: int = 1) -> None:
    """Give each labelled frame the derived balance column ``snr``: its meteor's
    signal-to-noise bin (`training.meteor_snr`, read from the pair), "none" for other frames.
    Needs the simulator's segment and peak for every meteor frame."""
    jobs, meteors = [], []
    for lab, previous in paired:
        if not lab.meteor:
            lab.extra[SNR_COLUMN] = "none"
            continue
        job = meteor_job(str(previous.path), str(lab.frame.path), lab.extra)
        if job is None:
            raise TrainingError(f"--balance-by {SNR_COLUMN}: {lab.frame.path.name} has no "
                                "meteor segment and peak (simulator truth only)")
        jobs.append(job)
        meteors.append(lab)
    log.info("signal-to-noise of %d meteor frames, to balance the split by it", len(jobs))
    for lab, value in zip(meteors, snr_of(jobs, workers), strict=True):
        lab.extra[SNR_COLUMN] = snr_bin(value)


def night_profiles(labelled: Iterable[Labelled], columns: Iterable[str]) -> dict[str, Counter]:
    """Per night, its frames counted by (column, value, meteor or not) for each of `columns`:
    what a balanced split keeps alike across train, validation and test (e.g. the simulator's
    sky `condition` and `camera`)."""
    columns = list(columns)
    profiles: dict[str, Counter] = {}
    for lab in labelled:
        counts = profiles.setdefault(lab.frame.night, Counter())
        for column in columns:
            value = lab.extra.get(column)
            if value is None:
                raise TrainingError(f"--balance-by {column}: the labels have no {column!r} "
                                    "column")
            counts[(column, value, lab.meteor)] += 1
    return profiles


def _shares(counts: Counter, column: str, meteor: bool) -> dict[str, float]:
    part = {value: n for (c, value, is_meteor), n in counts.items()
            if c == column and is_meteor == meteor}
    total = sum(part.values())
    return {value: n / total for value, n in part.items()} if total else {}


def profile_distance(split: dict[str, str], profiles: dict[str, Counter]) -> float:
    """How unlike all the nights the held-out splits are: per held-out split and column, the
    total variation distance of its meteor frames' mix of values from the whole data's, plus the
    same for its other frames (so the rare meteors weigh as much as the many other frames)."""
    overall: Counter = Counter()
    by_split: dict[str, Counter] = {}
    for night, counts in profiles.items():
        overall.update(counts)
        by_split.setdefault(split.get(night, "train"), Counter()).update(counts)
    distance = 0.0
    for name in ("valid", "test"):
        held = by_split.get(name)
        if not held:
            continue
        # Sorted: string hashes change between runs, and a sum's order must not (a re-index
        # has to draw the same split).
        for column, meteor in sorted({(c, m) for c, _, m in overall}):
            want, have = _shares(overall, column, meteor), _shares(held, column, meteor)
            distance += 0.5 * sum(abs(want.get(v, 0.0) - have.get(v, 0.0))
                                  for v in sorted(set(want) | set(have)))
    return distance


# ---------------------------------------------------------------- preprocessing


def cache_dir(root: Path, spec: PreprocessSpec, mask_path: Path | None) -> Path:
    key = spec.fingerprint()
    if mask_path is not None:
        key += "-m" + hashlib.sha256(mask_path.read_bytes()).hexdigest()[:8]
    return root / key


def _cache_folder(frame: Frame) -> str:
    """night-<hash of the source folder>: two cameras' frames of the same second never meet."""
    digest = hashlib.sha1(str(frame.path.parent.resolve()).encode()).hexdigest()[:8]
    return f"{frame.night}-{digest}"


def _preprocess_chunk(
    args: tuple[dict, str | None, list[tuple[str, str, str]]],
) -> list[tuple[str, str]]:
    """Worker: preprocess consecutive pairs, decoding each frame once; returns (output, why)."""
    spec_dict, mask_path, jobs = args
    cv2.setNumThreads(1)  # the pool provides the parallelism
    pre = Preprocessor(PreprocessSpec.from_dict(spec_dict))
    mask = read_gray(mask_path) if mask_path else None
    failures: list[tuple[str, str]] = []
    cache: dict[str, np.ndarray] = {}
    for prev_path, cur_path, out in jobs:
        try:
            prev = cache.get(prev_path)
            if prev is None:
                prev = read_gray(prev_path)
            cur = read_gray(cur_path)
            cache = {cur_path: cur}
            save_input(Path(out), pre(prev, cur, mask))
        except (PreprocessError, OSError) as exc:
            failures.append((out, f"{cur_path}: {exc}"))
            cache = {}
    return failures


def _chunks(pairs: list[Pair], size: int) -> Iterator[list[Pair]]:
    for i in range(0, len(pairs), size):
        yield pairs[i : i + size]


def preprocess_pairs(
    pairs: list[Pair], spec: PreprocessSpec, mask: Path | None, workers: int, progress: bool
) -> set[Path]:
    """Write missing outputs (existing ones are kept: resumable); return the failed outputs."""
    todo = sorted((p for p in pairs if not p.output.exists()),
                  key=lambda p: (p.labelled.frame.night, p.labelled.frame.captured))
    if len(todo) < len(pairs):
        log.info("%d of %d preprocessed images already cached", len(pairs) - len(todo), len(pairs))
    failed: set[Path] = set()
    if not todo:
        return failed
    tasks = [
        (spec.to_dict(), str(mask) if mask else None,
         [(str(p.previous.path), str(p.labelled.frame.path), str(p.output)) for p in chunk])
        for chunk in _chunks(todo, 64)
    ]
    bar = tqdm(total=len(todo), desc="preprocess", unit="img", disable=not progress)

    def collect(failures: list[tuple[str, str]], n: int) -> None:
        for output, why in failures:
            log.warning("skipped %s", why)
            failed.add(Path(output))
        bar.update(n)

    for task, failures in zip(tasks, process_map(_preprocess_chunk, tasks, workers),
                              strict=True):
        collect(failures, len(task[2]))
    bar.close()
    return failed


# ---------------------------------------------------------------- the index


def build_index(
    labelled: list[Labelled],
    out_dir: Path,
    spec: PreprocessSpec,
    *,
    cache_root: Path | None = None,
    mask: Path | None = None,
    max_gap_s: float | None = DetectionConfig().max_gap_s,
    valid_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    valid_nights: Iterable[str] = (),
    test_nights: Iterable[str] = (),
    workers: int = 1,
    progress: bool = True,
    source: dict | None = None,
    all_in: str | None = None,
    balance_by: str | None = None,
) -> Path:
    """Pair, split, preprocess and write ``index.csv`` + ``dataset.json``; returns the CSV path."""
    if not labelled:
        raise TrainingError("no labelled frames found")
    out_dir.mkdir(parents=True, exist_ok=True)
    paired, skipped = pair_with_previous(labelled, max_gap_s)
    if not paired:
        raise TrainingError(f"no frame has a usable previous frame (skipped: {dict(skipped)})")
    hints: dict[str, str] = {}
    for lab, _ in paired:
        if lab.split_hint == "test":
            hints[lab.frame.night] = "test"
    if all_in:
        splits = {lab.frame.night: all_in for lab, _ in paired}
    else:
        profiles = None
        if balance_by:
            columns = [c.strip() for c in balance_by.split(",") if c.strip()]
            if SNR_COLUMN in columns:
                measure_snr_bins(paired, workers)
            profiles = night_profiles((lab for lab, _ in paired), columns)
        splits = split_nights((lab.frame.night for lab, _ in paired), valid_frac, test_frac,
                              seed, valid_nights, test_nights, hints, profiles)
    cache = cache_dir(cache_root or out_dir / "cache", spec, mask)
    pairs = [Pair(lab, prev, cache / _cache_folder(lab.frame) / f"{lab.frame.path.stem}.png")
             for lab, prev in paired]
    failed = preprocess_pairs(pairs, spec, mask, workers, progress)
    skipped["unreadable"] += len(failed)

    extra_cols = [c for c in TRUTH_COLUMNS if any(c in p.labelled.extra for p in pairs)]
    header = ["path", "label", "night", "split", "frame", "previous", *extra_cols]
    counts: dict[str, Counter] = {s: Counter() for s in SPLITS}
    with open(out_dir / INDEX_NAME, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for p in pairs:
            if p.output in failed:
                continue
            lab = p.labelled
            label = METEOR if lab.meteor else NOT_METEOR
            split = splits[lab.frame.night]
            counts[split][label] += 1
            writer.writerow([
                os.path.relpath(p.output, out_dir), label, lab.frame.night, split,
                str(lab.frame.path), str(p.previous.path),
                *(lab.extra.get(c, "") for c in extra_cols),
            ])
    meta = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "preprocessing": spec.to_dict(),
        "mask": str(mask) if mask else None,
        "cache": str(cache),
        "max_gap_s": max_gap_s,
        "source": source or {},
        "split_seed": seed,
        "split_balanced_by": None if all_in else balance_by,
        "nights": {s: sorted(n for n, v in splits.items() if v == s) for s in SPLITS},
        "counts": {s: {METEOR: c[METEOR], NOT_METEOR: c[NOT_METEOR]} for s, c in counts.items()},
        "skipped": dict(skipped),
    }
    write_json(out_dir / DATASET_META, meta)
    for s in SPLITS:
        log.info("%-5s %3d nights  %6d meteor  %7d no-meteor", s, len(meta["nights"][s]),
                 counts[s][METEOR], counts[s][NOT_METEOR])
    if skipped:
        log.info("skipped: %s", dict(skipped))
    return out_dir / INDEX_NAME


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("index", help="preprocess labelled frames and write a night-split index",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--truth", type=Path, action="append",
                     help="simulator truth.csv (paths relative to it); repeat to combine runs")
    src.add_argument("--folders", type=Path,
                     help="folder holding meteor/ and no-meteor/ copies of frames (needs --images)")
    src.add_argument("--csv", type=Path, help="2021-style CSV fn,dataset,meteor (needs --images)")
    p.add_argument("--images", type=Path, help="AllSky images tree (images/YYYYMMDD/*.jpg)")
    p.add_argument("--min-peak", type=float,
                   help="simulator truth only: leave out meteor frames fainter than this many "
                        "grey levels (neither class; see drop_faint_meteors)")
    p.add_argument("--rest-negative", action="store_true",
                   help="every unlabelled frame of a labelled night is no-meteor")
    p.add_argument("--out", type=Path, required=True, help="output folder (index.csv, cache/)")
    p.add_argument("--cache", type=Path, help="preprocessed image cache root (default OUT/cache)")
    p.add_argument("--preprocess", choices=["g2", "m1", "g1", "v4"], default="g2",
                   help="preprocessing variant (edge.preprocess); default g2")
    p.add_argument("--size", type=int, default=224, help="model input size (default 224)")
    p.add_argument("--tiles", type=int,
                   help=f"m1: a mosaic of TILES x TILES candidate windows of SIZE / TILES px "
                        f"(default {PreprocessSpec().tiles}; `guaita evaluate` reports how many "
                        f"meteors more windows would hold)")
    p.add_argument("--line-width", type=int,
                   help=f"g2/m1: width the line map is computed at, px (default "
                        f"{PreprocessSpec().line_width}; finer finds fainter streaks, costs more)")
    p.add_argument("--nms-radius", type=int,
                   help=f"m1: candidates at least this far apart, in line-map px "
                        f"(default {PreprocessSpec().nms_radius})")
    p.add_argument("--mask", type=Path, help="mask image, black = ignore (as the edge's)")
    p.add_argument("--max-gap-s", type=float, default=DetectionConfig().max_gap_s,
                   help="skip frames whose previous frame is older (default: the edge's, "
                        "%(default)s s; 0 = no limit)")
    p.add_argument("--valid-nights", help="comma-separated YYYYMMDD nights for validation")
    p.add_argument("--test-nights", help="comma-separated YYYYMMDD nights for test")
    p.add_argument("--valid-frac", type=float, default=0.15,
                   help="fraction of nights drawn for validation (default 0.15)")
    p.add_argument("--test-frac", type=float, default=0.15,
                   help="fraction of nights drawn for test (default 0.15)")
    p.add_argument("--all-in", choices=SPLITS,
                   help="put every night in one split (e.g. test: evaluate a model on "
                        "nights labelled for that purpose)")
    p.add_argument("--seed", type=int, default=0, help="seed of the night draw")
    p.add_argument("--balance-by", metavar="COLUMN[,COLUMN...]",
                   help="draw the night split so validation and test hold the same mix of these "
                        "label columns' values as all the nights, meteor frames and others "
                        "alike; simulator truth has condition, camera and snr (each meteor's "
                        "signal-to-noise bin, measured from its frames): e.g. condition,snr; "
                        "default: a plain draw")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="preprocessing processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        return _run_index(args)
    except TrainingError as exc:
        log.error("%s", exc)
        return 2


def _run_index(args: argparse.Namespace) -> int:
    for name in ("valid_frac", "test_frac"):
        value = getattr(args, name)
        if not 0.0 <= value < 1.0:
            raise TrainingError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
    if args.valid_frac + args.test_frac >= 1.0:
        raise TrainingError("--valid-frac + --test-frac must leave nights to train on")
    params: dict[str, object] = {"id": args.preprocess, "size": args.size}
    for name, variants in (("tiles", ("m1",)), ("nms_radius", ("m1",)),
                           ("line_width", ("g2", "m1"))):
        value = getattr(args, name, None)
        if value is None:
            continue
        if args.preprocess not in variants:
            raise TrainingError(f"--{name.replace('_', '-')} applies to --preprocess "
                                f"{'/'.join(variants)} only (got {args.preprocess})")
        params[name] = value
    try:
        spec = PreprocessSpec.from_dict(params)
    except PreprocessError as exc:
        raise TrainingError(str(exc)) from None
    if args.mask is not None and not args.mask.is_file():
        raise TrainingError(f"mask not found: {args.mask}")
    if args.truth:
        labelled = []
        for truth in args.truth:
            if not truth.is_file():
                raise TrainingError(f"truth CSV not found: {truth}")
            labelled += labels_from_truth(truth)
        source = {"kind": "simulator-truth", "path": [str(t) for t in args.truth]}
        if args.min_peak is not None:
            before = len(labelled)
            labelled = drop_faint_meteors(labelled, args.min_peak)
            log.info("left out %d meteor frames peaking under %.1f grey levels",
                     before - len(labelled), args.min_peak)
            source["min_peak"] = args.min_peak
    else:
        if args.min_peak is not None:
            raise TrainingError("--min-peak needs --truth: only the simulator knows meteor peaks")
        if args.images is None:
            raise TrainingError("--folders and --csv need --images (the AllSky images tree)")
        if args.folders is not None:
            labelled = labels_from_folders(args.folders, args.images)
            source = {"kind": "label-folders", "path": str(args.folders)}
        else:
            if not args.csv.is_file():
                raise TrainingError(f"CSV not found: {args.csv}")
            labelled = labels_from_csv2021(args.csv, args.images)
            source = {"kind": "csv-2021", "path": str(args.csv)}
        source["images"] = str(args.images)
    if args.rest_negative:
        labelled = add_rest_negative(labelled)
        source["rest_negative"] = True
    build_index(
        labelled, args.out, spec,
        cache_root=args.cache, mask=args.mask, max_gap_s=args.max_gap_s or None,
        valid_frac=args.valid_frac, test_frac=args.test_frac, seed=args.seed,
        valid_nights=parse_nights(args.valid_nights), test_nights=parse_nights(args.test_nights),
        workers=max(1, args.workers), progress=not args.no_progress, source=source,
        all_in=args.all_in, balance_by=args.balance_by,
    )
    print(args.out / INDEX_NAME)
    return 0
