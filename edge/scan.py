"""``guaita scan PATH``: score a night folder or a whole images tree without the watcher.

`--out FILE.jsonl` writes one JSON object per scored frame, in capture order:
``{"image": "<path as found under PATH>", "score": <float>, "detected": <bool>,
"suppressed": <null or reason>}`` — a contract that benchmarks and external checks rely on.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from edge.bundle import BundleError
from edge.config import ConfigError, load_config
from edge.decide import AutoMask, Decision
from edge.frames import Frame, list_frames
from edge.model import open_scorer
from edge.pipeline import Pipeline, make_pipeline

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="a night folder or an AllSky images tree")
    parser.add_argument("--out", type=Path, help="write one JSON line per frame here")
    parser.add_argument("--model", type=Path, help="model bundle (default: from the config)")
    parser.add_argument("--config", help="config file (default: /etc/guaita.toml or built-in)")
    parser.add_argument("--threshold", type=float, help="override the detection threshold")
    parser.add_argument("--threads", type=int, help="onnxruntime threads")
    parser.add_argument("--publish", action="store_true",
                        help="also queue detections for MQTT, as the daemon would")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def prepare(args: argparse.Namespace) -> tuple[Pipeline, list[Frame]]:
    """Config, model and frame list for a scan; raises ConfigError/BundleError/FileNotFound."""
    cfg = load_config(args.config)
    detection = replace(
        cfg.detection,
        threshold=args.threshold if args.threshold is not None else cfg.detection.threshold,
        threads=args.threads or cfg.detection.threads,
    )
    cfg = replace(cfg, detection=detection)
    scorer = open_scorer(args.model or cfg.paths.model_path, threads=cfg.detection.threads)
    auto_mask = AutoMask() if cfg.suppression.enabled and cfg.suppression.auto_mask else None
    frames = list_frames(args.path)
    if not frames:
        raise FileNotFoundError(f"no AllSky frames (image-YYYYMMDDHHMMSS.jpg) under {args.path}")
    return make_pipeline(cfg, scorer, auto_mask), frames


def scan_decisions(
    pipeline: Pipeline, frames: list[Frame], progress: bool = True
) -> Iterator[Decision]:
    """One decision per readable frame, in capture order."""
    for frame in tqdm(frames, unit="frame", disable=not progress, file=sys.stderr):
        yield from pipeline.process(frame)
    yield from pipeline.flush()


def decision_line(decision: Decision) -> dict:
    return {
        "image": str(decision.frame.path),
        "score": round(float(decision.score), 6),
        "detected": bool(decision.detected),
        "suppressed": decision.suppressed,
        # The score with the explained streaks masked, if the decider took a second look: lets
        # a scan at a low threshold tell what each higher threshold would alert on.
        "second_look": None if decision.second_look is None else round(decision.second_look, 6),
    }


def run(args: argparse.Namespace) -> int:
    if not args.path.exists():
        print(f"guaita scan: {args.path} does not exist", file=sys.stderr)
        return 2
    publisher = None
    try:
        with ExitStack() as stack:
            out = stack.enter_context(open(args.out, "w")) if args.out else None
            if args.publish:
                from edge.service import EventSink

                publisher = EventSink.from_config(load_config(args.config))
                stack.callback(publisher.close)
            pipeline, frames = prepare(args)
            total = alerts = suppressed = 0
            for decision in scan_decisions(pipeline, frames, not args.no_progress):
                total += 1
                if out:
                    out.write(json.dumps(decision_line(decision)) + "\n")
                if decision.detected and decision.suppressed:
                    suppressed += 1
                elif decision.detected:
                    alerts += 1
                    log.info("meteor %s score %.3f", decision.frame.path.name, decision.score)
                if publisher and decision.detected:
                    publisher.emit(decision)
    except (ConfigError, BundleError, FileNotFoundError) as exc:
        print(f"guaita scan: {exc}", file=sys.stderr)
        return 2
    unreadable = pipeline.counters["unreadable"]
    print(
        f"scanned {total} frames ({unreadable} unreadable, skipped): {alerts} meteor alerts, "
        f"{suppressed} suppressed candidates" + (f"; results in {args.out}" if args.out else "")
    )
    return 0
