"""The benchmark's figures (matplotlib, Agg): PR curves, recall by brightness, cost, daemon RSS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

COLORS = {"guaita": "#1b7837", "guaita-model": "#7fbf7b", "reference": "#762a83",
          "classical": "#e08214", "floor": "#888888"}


def pr_curves(path: Path, curves: dict[str, dict[str, Any]],
              points: dict[str, tuple[float, float]]) -> Path:
    """Left: precision vs recall; right: false positives per 1,000 frames vs recall (log)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.3))
    for key, c in curves.items():
        style = "--" if key == "guaita-model" else "-"
        ax1.plot(c["recall"], c["precision"], style, color=COLORS.get(key), label=c["name"])
        fp = np.maximum(np.asarray(c["fp_per_1000"], dtype=float), 0.1)
        ax2.plot(c["recall"], fp, style, color=COLORS.get(key), label=c["name"])
    for key, (recall, fp) in points.items():
        if recall is None or fp is None:
            continue
        ax2.plot([recall], [max(fp, 0.1)], "o", color=COLORS.get(key), markersize=8,
                 markeredgecolor="black")
    ax1.set(xlabel="recall (meteor frames alerted)", ylabel="precision", xlim=(0, 1),
            ylim=(0, 1.02), title="Precision–recall, all bench frames")
    ax2.set(xlabel="recall", ylabel="false-positive frames per 1,000 (log; 0 drawn at 0.1)",
            xlim=(0, 1), yscale="log", title="False alarms vs recall (dots: operating points)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def recall_by_brightness(path: Path, classes: Sequence[str],
                         series: dict[str, tuple[str, Sequence[float | None]]],
                         counts: Sequence[int]) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(classes))
    for i, (key, (name, values)) in enumerate(series.items()):
        vals = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name,
               color=COLORS.get(key))
    ax.set_xticks(x, [f"{c}\n{n} meteors" for c, n in zip(classes, counts, strict=True)],
                  fontsize=8)
    ax.set(ylabel="recall at the operating point", ylim=(0, 1.05),
           title="Recall by meteor brightness (peak grey levels above the sky)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cost_bars(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """CPU ms per frame (log) and peak RSS, one bar per detector."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["name"] for r in rows]
    colors = [COLORS.get(r["key"], "#4393c3") for r in rows]
    y = np.arange(len(rows))
    ax1.barh(y, [r["cpu_ms"] for r in rows], color=colors)
    for yi, r in zip(y, rows, strict=True):
        ax1.text(r["cpu_ms"], yi, f" {r['cpu_ms']:.1f} ms ({r['ratio']:.1f}× floor)",
                 va="center", fontsize=8)
    ax1.set_yticks(y, names, fontsize=8)
    ax1.invert_yaxis()
    ax1.set(xscale="log", xlabel="CPU ms per frame (1 thread, log)", title="Cost per frame")
    ax2.barh(y, [r["maxrss_mb"] for r in rows], color=colors)
    ax2.set_yticks(y, [""] * len(rows))
    ax2.invert_yaxis()
    ax2.set(xlabel="peak RSS of the process, MB", title="Memory")
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def daemon_rss(path: Path, samples: Sequence[dict[str, float]], frames: int) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([s["frames"] for s in samples], [s["rss_mb"] for s in samples], color=COLORS["guaita"])
    ax.set(xlabel=f"frames written into the watched folder (of {frames})",
           ylabel="VmRSS of guaita run, MB", title="Daemon memory over a long night",
           ylim=(0, max([s["rss_mb"] for s in samples] + [1]) * 1.15))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
