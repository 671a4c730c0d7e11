"""A fastai training loader that undersamples non-meteors afresh every epoch.

Its own module (importing fastai at the top) so a pickled learner finds the class by name.
"""

from __future__ import annotations

import numpy as np
from fastai.data.core import TfmdDL

from training._common import METEOR

HARDNESS = "hardness"  # index column: an earlier model's meteor score for a non-meteor frame


def draw_negatives(rng: np.random.Generator, hardness: np.ndarray, n: int,
                   hard_share: float) -> np.ndarray:
    """Positions (into the non-meteor array) of `n` distinct negatives for one epoch.

    Uniform, or with ``hard_share`` > 0: that share of the draw is taken with probability
    proportional to `hardness` (an earlier model's meteor score: the frames it mistook for
    meteors, mostly satellites and aircraft), the rest uniformly from what is left.
    """
    weights = np.clip(np.nan_to_num(np.asarray(hardness, dtype=np.float64)), 0.0, None)
    total = len(weights)
    n_hard = min(round(hard_share * n), int((weights > 0).sum())) if hard_share > 0 else 0
    if n_hard == 0:
        return rng.choice(total, n, replace=False)
    hard = rng.choice(total, n_hard, replace=False, p=weights / weights.sum())
    easy = rng.choice(np.setdiff1d(np.arange(total), hard), n - n_hard, replace=False)
    return np.concatenate([hard, easy])


class BalancedDL(TfmdDL):
    """Training loader: every meteor plus a fresh random draw of non-meteors each epoch.

    The 2021 recipe undersampled once; a new draw each epoch shows the net more of the hard
    negatives (satellites, aircraft, cloud edges) for the same cost per epoch. With a
    ``hardness`` column in the items and ``hard_share`` > 0, that share of every draw is mined
    (see `draw_negatives`).
    """

    def __init__(self, dataset=None, neg_ratio: float = 1.0, hard_share: float = 0.0, **kwargs):
        self.neg_ratio = neg_ratio
        self.hard_share = hard_share
        self._pos = self._neg = self._hardness = None
        self._n_neg = 0
        super().__init__(dataset, **kwargs)
        items = getattr(dataset, "items", None)
        columns = getattr(items, "columns", ())
        if self.shuffle and items is not None and "label" in columns:
            labels = np.asarray(items["label"])
            self._pos = np.flatnonzero(labels == METEOR)
            self._neg = np.flatnonzero(labels != METEOR)
            self._n_neg = min(len(self._neg), round(neg_ratio * len(self._pos)))
            self.n = len(self._pos) + self._n_neg
            self._hardness = (np.asarray(items[HARDNESS], dtype=np.float64)[self._neg]
                              if HARDNESS in columns else np.zeros(len(self._neg)))

    def get_idxs(self):
        if not self.shuffle or self._pos is None:
            return super().get_idxs()
        rng = np.random.default_rng(self.rng.randint(0, 2**32 - 1))
        picked = draw_negatives(rng, self._hardness, self._n_neg, self.hard_share)
        idxs = np.concatenate([self._pos, self._neg[picked]])
        rng.shuffle(idxs)
        return idxs.tolist()
