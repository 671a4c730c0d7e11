"""One detector's cost over a list of frames, in a process of its own.

``python -m bench.costrun KIND --frames LIST --out JSON [--threads N] [--bundle B]
[--learner L] [--size S]``; KIND is

  floor      JPEG decode to grey, nothing else (the least any detector must do per frame)
  guaita     edge.pipeline, exactly as the daemon runs it: decode, pair, preprocess, onnxruntime,
             suppression (decider + learned mask), at the bundle's recommended threshold
  fastai     the 2021 pipeline: decode, V4, fastai ``Learner.predict`` one frame at a time
  classical  decode + bench.classical.detect at its operating point
  onnx       inference alone: onnxruntime on a random input of --shape (for the Pi estimate)

Per frame it records wall time (perf_counter) and CPU time of the process (process_time: all
threads, user + system); the first --warmup frames are processed but not counted. Peak RSS is
the process's VmHWM at the end: interpreter, libraries, model and buffers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

T0 = time.perf_counter()

import numpy as np  # noqa: E402


def _vm_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, MB. Not ru_maxrss: Linux carries the
    parent's peak RSS across fork + exec into it, and the parent here is the bench itself."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _frames(list_file: Path):
    from edge.frames import parse_frame

    frames = [parse_frame(p) for p in list_file.read_text().split()]
    missing = [f for f in frames if f is None]
    if missing:
        raise SystemExit(f"{list_file}: {len(missing)} entries are not AllSky frame paths")
    return frames


def _pairwise(step):
    """Run `step(previous_grey or None, current_grey)` per frame; previous only when it is the
    frame just before in the same night, as every pipeline here pairs."""
    from edge.frames import is_consecutive
    from edge.preprocess import read_gray

    state: dict[str, Any] = {"frame": None, "gray": None}

    def one(frame) -> None:
        gray = read_gray(str(frame.path))
        prev = state["gray"] if state["frame"] is not None and is_consecutive(
            state["frame"], frame, 180.0) else None
        step(prev, gray)
        state["frame"], state["gray"] = frame, gray

    return one


def _nothing() -> None:
    return None


def build(kind: str, args: argparse.Namespace) -> tuple[Callable, Callable]:
    """Load what `kind` needs (timed as start-up); returns (per-frame step, end of run)."""
    import cv2

    cv2.setNumThreads(args.threads)
    if kind == "floor":
        from edge.preprocess import read_gray

        return (lambda frame: read_gray(str(frame.path))), _nothing
    if kind == "classical":
        from bench.classical import detect

        return _pairwise(lambda prev, cur: prev is not None and detect(
            prev, cur, with_score=False)), _nothing
    if kind == "guaita":
        from edge.config import Config
        from edge.decide import AutoMask
        from edge.memory import keep_freed_memory
        from edge.model import open_scorer
        from edge.pipeline import make_pipeline

        keep_freed_memory()  # as `guaita run` does at start (edge/cli.py)
        scorer = open_scorer(args.bundle, threads=args.threads)
        pipeline = make_pipeline(Config(), scorer, AutoMask())
        return pipeline.process, pipeline.flush
    if kind == "fastai":
        from bench.reference import load_learner_cpu, meteor_index, predict_one
        from edge.preprocess import Preprocessor, PreprocessSpec

        learn = load_learner_cpu(args.learner, args.threads)
        index = meteor_index(learn)
        v4 = Preprocessor(PreprocessSpec(id="v4", size=args.size))

        def step(prev, cur) -> None:
            if prev is not None:
                predict_one(learn, v4(prev, cur), index)

        return _pairwise(step), _nothing
    raise SystemExit(f"unknown kind {kind!r}")


def run_frames(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    frames = _frames(args.frames)
    one, finish = build(kind, args)
    ready = time.perf_counter() - T0
    rss_loaded = _vm_mb("VmRSS")
    walls, cpus = [], []
    for i, frame in enumerate(frames):
        w, c = time.perf_counter(), time.process_time()
        one(frame)
        if i >= args.warmup:
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
    finish()  # decisions still pending at the end (guaita holds a candidate one frame)
    return _summary(kind, walls, cpus, ready, rss_loaded, len(frames))


def run_onnx(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(args.onnx), options, providers=["CPUExecutionProvider"])
    shape = [int(x) for x in args.shape.split(",")]
    x = (np.random.default_rng(0).random(shape, dtype=np.float32) * 255).astype(np.float32)
    name = session.get_inputs()[0].name
    ready = time.perf_counter() - T0
    rss_loaded = _vm_mb("VmRSS")
    walls, cpus = [], []
    for i in range(args.repeat + args.warmup):
        w, c = time.perf_counter(), time.process_time()
        session.run(None, {name: x})
        if i >= args.warmup:
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
    return _summary("onnx", walls, cpus, ready, rss_loaded, args.repeat)


def _summary(kind: str, walls: list[float], cpus: list[float], ready: float,
             rss_loaded: float, frames: int) -> dict[str, Any]:
    w = np.array(walls) * 1e3
    c = np.array(cpus) * 1e3
    return {
        "kind": kind, "frames": frames, "timed": len(walls),
        "wall_ms_mean": float(w.mean()) if len(w) else None,
        "wall_ms_median": float(np.median(w)) if len(w) else None,
        "wall_ms_p95": float(np.percentile(w, 95)) if len(w) else None,
        "cpu_ms_mean": float(c.mean()) if len(c) else None,
        "cpu_ms_median": float(np.median(c)) if len(c) else None,
        "startup_s": round(ready, 3),
        "rss_loaded_mb": round(rss_loaded, 1),
        "maxrss_mb": round(_vm_mb("VmHWM"), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.costrun", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["floor", "guaita", "fastai", "classical", "onnx"])
    parser.add_argument("--frames", type=Path, help="text file: one frame path per line")
    parser.add_argument("--out", type=Path, required=True, help="write the JSON result here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--bundle", type=Path, help="guaita: model bundle")
    parser.add_argument("--learner", type=Path, help="fastai: learner.pkl")
    parser.add_argument("--size", type=int, default=224, help="fastai: V4 input size")
    parser.add_argument("--onnx", type=Path, help="onnx: model file")
    parser.add_argument("--shape", default="1,3,224,224", help="onnx: input shape")
    parser.add_argument("--repeat", type=int, default=30, help="onnx: timed runs")
    args = parser.parse_args(argv)
    if args.kind == "onnx":
        result = run_onnx(args)
    else:
        if args.frames is None:
            parser.error(f"{args.kind} needs --frames")
        result = run_frames(args.kind, args)
    result["threads"] = args.threads
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
