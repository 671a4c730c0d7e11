"""Hard-negative mining: score the training non-meteors with an earlier model bundle.

Undersampling draws a few non-meteors per meteor each epoch; drawn uniformly, most are empty
sky the network already rejects, while the frames it confuses with meteors (satellites,
aircraft, twilight streaks: on the simulated held-out nights 287 of the 291 false positives
over 0.7) come up rarely. Scoring them once with the model being fine-tuned (its ONNX graph as
the edge's scorer opens it, on the cached preprocessed images, no torch) gives each a hardness
the sampler can draw by (`training._balanced.draw_negatives`). Labels stay untouched: only
which negatives are seen.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from training._common import METEOR, TrainingError

log = logging.getLogger(__name__)


def mine(df, bundle: Path, preprocessing: dict[str, Any],
         threads: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Per row of `df`: the bundle's meteor score for a training non-meteor, else 0."""
    from edge.bundle import BundleError
    from edge.model import open_scorer
    from edge.preprocess import PreprocessSpec
    from training.export import onnx_probs

    try:
        scorer = open_scorer(bundle, threads=threads)
    except BundleError as exc:
        raise TrainingError(f"--mine-from: {exc}") from None
    want = PreprocessSpec.from_dict(preprocessing)
    if scorer.manifest.preprocessing.fingerprint() != want.fingerprint():
        raise TrainingError(
            f"--mine-from {bundle}: that model expects preprocessing "
            f"{scorer.manifest.preprocessing.id} with other parameters than this dataset's "
            f"({want.id}); its scores would not say which of these images are hard")
    rows = np.flatnonzero(((df["split"] == "train") & (df["label"] != METEOR)).to_numpy())
    scored = onnx_probs(scorer.session, list(df["path"].to_numpy()[rows]), want.channels,
                        scorer.manifest.meteor_index, scorer.manifest.input_name)
    hardness = np.zeros(len(df), np.float64)
    hardness[rows] = scored
    summary = {"mined_from": str(bundle), "model": scorer.manifest.name,
               "negatives_scored": len(rows),
               "scoring_0.5_or_more": int((scored >= 0.5).sum())}
    log.info("mined %d training non-meteors with %s: %d score 0.5 or more", len(rows),
             scorer.manifest.name, summary["scoring_0.5_or_more"])
    return hardness, summary
