"""Simulated nights for the benchmark, cached: the held-out bench tree and the reference's
training cameras (the shipped recipe's, reused from its work folder or re-simulated)."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.plan import NightSpec, TrainingSims, fingerprint, simulator_digest
from training.simulate import TRUTH_COLUMNS, NightParams, iter_night, simulate, write_frame

log = logging.getLogger(__name__)

EXTRA_COLUMNS = ("label", "site")
SHIPPED_WORK = Path(os.environ.get("GUAITA_SHIPPED_WORK", "/tmp/guaita-shipped"))


def night_params(spec: NightSpec) -> NightParams:
    """A plausible night of the requested condition, with the bench's event rates."""
    rng = np.random.default_rng([spec.seed, 0xBE7C])
    params = NightParams.sample(rng, spec.night, spec.condition, spec.meteor_rate,
                                camera_seed=spec.camera_seed)
    return replace(params, satellite_rate=spec.satellite_rate, aircraft_rate=spec.aircraft_rate)


def _write_tree(root: Path, specs: Iterable[NightSpec], width: int, height: int) -> None:
    rows: list[dict] = []
    meta = []
    for spec in specs:
        params = night_params(spec)
        meta.append({"spec": spec.__dict__ | {"night": spec.night.isoformat()},
                     "params": params.to_dict()})
        for frame in iter_night(params, spec.frames, width, height, spec.seed):
            write_frame(root, frame)
            rows.append(dict(frame.truth) | {"label": spec.label, "site": spec.site})
    with open(root / "truth.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*TRUTH_COLUMNS, *EXTRA_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    (root / "nights.json").write_text(json.dumps(
        {"width": width, "height": height, "nights": meta}, indent=2, default=str) + "\n")


def ensure_tree(cache: Path, kind: str, specs: tuple[NightSpec, ...], width: int,
                height: int) -> Path:
    """Simulate `specs` into one AllSky images tree under the cache (reused when the plan and
    the simulator's code are unchanged); returns the root holding images/ and truth.csv."""
    key = fingerprint([s.__dict__ for s in specs], width, height, simulator_digest())
    root = cache / "nights" / f"{kind}-{key}"
    if (root / "truth.csv").is_file():
        return root
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    frames = sum(s.frames for s in specs)
    log.info("simulating %s: %d nights, %d frames at %dx%d (cached afterwards)", kind,
             len(specs), frames, width, height)
    _write_tree(tmp, specs, width, height)
    tmp.rename(root)
    return root


def read_truth(root: Path) -> list[dict[str, str]]:
    with open(root / "truth.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- the reference's training data


def _matches(camera_dir: Path, sims: TrainingSims, k: int) -> bool:
    meta_path = camera_dir / "nights.json"
    if not (camera_dir / "truth.csv").is_file() or not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not (meta.get("seed") == sims.camera_seed(k) and meta.get("frames") == sims.frames
            and meta.get("width") == sims.width and meta.get("height") == sims.height
            and len(meta.get("nights", [])) == sims.nights):
        return False
    # An interrupted simulation leaves a short truth.csv behind.
    with open(camera_dir / "truth.csv", newline="") as fh:
        return sum(1 for _ in csv.DictReader(fh)) == sims.nights * sims.frames


def training_cameras(cache: Path, sims: TrainingSims) -> tuple[list[Path], str]:
    """The shipped recipe's simulated cameras: its own work folder when it is still there and
    matches the recipe's seeds, else re-simulated (same seeds, same frames) into the cache."""
    shipped = [SHIPPED_WORK / "sim" / f"camera{k}" for k in range(sims.cameras)]
    if all(_matches(d, sims, k) for k, d in enumerate(shipped)):
        return shipped, f"reused from the recipe's work folder {SHIPPED_WORK / 'sim'}"
    key = fingerprint(sims.__dict__, simulator_digest())
    dirs = [cache / "train-sim" / key / f"camera{k}" for k in range(sims.cameras)]
    for k, camera_dir in enumerate(dirs):
        if _matches(camera_dir, sims, k):
            continue
        log.info("re-simulating training camera %d of the shipped recipe (%d nights x %d "
                 "frames; cached)", k, sims.nights, sims.frames)
        shutil.rmtree(camera_dir, ignore_errors=True)
        simulate(camera_dir, nights=sims.nights, frames=sims.frames, seed=sims.camera_seed(k),
                 width=sims.width, height=sims.height, start=sims.camera_start(k),
                 meteor_rate=sims.meteor_rate, progress=False)
    return dirs, "re-simulated with the recipe's seeds into the bench cache"
