"""The recall ceiling of a candidate-window preprocessing (m1): how many meteor frames hold their
meteor inside one of the windows the model is shown.

m1 shows the network only the ``tiles²`` windows around the line map's strongest maxima; a
meteor outside all of them is lost whatever the network learns. For each meteor frame whose
index row carries the simulator's segment (``meteor_x1 … meteor_y2``), this finds the rank of
the first window (strongest first, the same windows `edge.preprocess` cuts) that holds any
point of the segment, and reports the share covered if a mosaic kept 9, 16, 25, … windows —
overall and by peak brightness. It is a ceiling, and an optimistic one: a window touching the
segment's end counts although the network may see too little of the trail there.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge.preprocess import PreprocessError, PreprocessSpec, candidate_windows, read_gray
from training._common import METEOR, meteor_segment
from training._metrics import PEAK_EDGES, bin_label

log = logging.getLogger(__name__)

COUNTS = (9, 16, 25, 36, 49, 64)
SAMPLES = 200  # points tested along each true segment


def first_covering_rank(corners: list[tuple[int, int]], side: int,
                        segment: tuple[float, float, float, float]) -> int | None:
    """Index of the first side x side window (top-left corners, strongest first) that holds a
    point of the segment, None if none does."""
    x1, y1, x2, y2 = segment
    t = np.linspace(0.0, 1.0, SAMPLES)
    px, py = x1 + t * (x2 - x1), y1 + t * (y2 - y1)
    for rank, (y0, x0) in enumerate(corners):
        if np.any((px >= x0) & (px < x0 + side) & (py >= y0) & (py < y0 + side)):
            return rank
    return None


def coverage_ranks(df, spec: PreprocessSpec, mask: np.ndarray | None, most: int,
                   progress: bool = False) -> list[dict[str, Any]]:
    """Per meteor frame with a known segment: its peak and the rank of its first covering
    window among the `most` strongest (None: none of them)."""
    rows = df[df["label"] == METEOR]
    side = spec.size // spec.tiles
    out = []
    from tqdm import tqdm

    for _, row in tqdm(rows.iterrows(), total=len(rows), desc="coverage", unit="frame",
                       disable=not progress):
        segment = meteor_segment(row)
        if segment is None:
            continue
        try:
            corners = candidate_windows(spec, read_gray(row["previous"]), read_gray(row["frame"]),
                                        mask, most)
        except (PreprocessError, OSError):
            continue  # the index's own preprocessing logged these frames already
        peak = float(row["meteor_peak"]) if "meteor_peak" in row else float("nan")
        out.append({"frame": row["frame"], "peak": peak,
                    "rank": first_covering_rank(corners, side, segment)})
    return out


def summarise(ranks: list[dict[str, Any]], shipped: int,
              counts: tuple[int, ...] = COUNTS) -> dict[str, Any]:
    """Share covered at each window count, overall and per peak bin (PEAK_EDGES)."""
    counts = tuple(sorted({*counts, shipped}))

    def shares(sel: list[dict[str, Any]]) -> dict[str, float]:
        return {str(n): sum(r["rank"] is not None and r["rank"] < n for r in sel) / len(sel)
                for n in counts}

    by_peak = []
    for lo, hi in itertools.pairwise(PEAK_EDGES):
        sel = [r for r in ranks if lo <= r["peak"] < hi]
        if sel:
            by_peak.append({"bin": bin_label(lo, hi), "meteors": len(sel), "covered": shares(sel)})
    return {"windows_shown": shipped, "counts": list(counts), "meteors": len(ranks),
            "covered": shares(ranks) if ranks else {}, "by_peak": by_peak}


def window_ranks(df, spec: PreprocessSpec, mask: np.ndarray | None,
                 progress: bool = False) -> list[dict[str, Any]]:
    """coverage_ranks over as many windows as the summary's largest count (an m1 spec)."""
    return coverage_ranks(df, spec, mask, max(*COUNTS, spec.tiles**2), progress)


def candidate_coverage(df, spec: PreprocessSpec, mask: np.ndarray | None,
                       progress: bool = False) -> dict[str, Any] | None:
    """The coverage summary for an m1 index, None for variants that show the whole sky."""
    if spec.id != "m1":
        return None
    return summarise(window_ranks(df, spec, mask, progress), spec.tiles**2)


# ---------------------------------------------------------------- CLI

OVERRIDES = ("size", "tiles", "nms_radius", "line_width", "line_length", "blur")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "") + (
        "\nChoose the mosaic before training: this reads an index's JPEG pairs (any variant) and "
        "measures an m1 preprocessing with the index's parameters, or those overridden below.")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", type=Path, required=True, help="`guaita dataset index` folder")
    parser.add_argument("--split", choices=["valid", "test", "train"], default="valid",
                        help="nights to measure (default valid: choose there, confirm on test)")
    for name in OVERRIDES:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int,
                            help=f"PreprocessSpec.{name} (default: the index's)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from training._common import TrainingError, load_index, write_json

    try:
        df, dmeta = load_index(args.data)
        params = {**dmeta["preprocessing"], "id": "m1"}
        params.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None})
        spec = PreprocessSpec.from_dict(params)
    except (TrainingError, PreprocessError) as exc:
        log.error("%s", exc)
        return 2
    rows = df[df["split"] == args.split]
    mask = read_gray(dmeta["mask"]) if dmeta.get("mask") else None
    summary = candidate_coverage(rows, spec, mask, progress=not args.no_progress)
    assert summary is not None  # spec is m1
    if not summary["meteors"]:
        log.error("%s: no %s meteor frames with a known segment (simulator truth needed)",
                  args.data, args.split)
        return 2
    summary["preprocessing"] = spec.to_dict()
    counts = summary["counts"]
    print(f"m1 size {spec.size}, tiles {spec.tiles} ({spec.tiles**2} windows of "
          f"{spec.size // spec.tiles} px), nms_radius {spec.nms_radius}, line_width "
          f"{spec.line_width}, line_length {spec.line_length}: {summary['meteors']} "
          f"{args.split} meteor frames")
    print("peak        " + "".join(f"{'N=' + str(n):>8}" for n in counts))
    for name, block in [("all", summary), *[(b["bin"], b) for b in summary["by_peak"]]]:
        print(f"{name:<12}" + "".join(f"{block['covered'][str(n)]:>8.3f}" for n in counts))
    if args.json:
        write_json(args.json, summary)
    return 0
