"""A fastai training loader that undersamples non-meteors afresh every epoch.

Its own module (importing fastai at the top) so a pickled learner finds the class by name.
"""

from __future__ import annotations

import numpy as np
from fastai.data.core import TfmdDL

from training._common import METEOR


class BalancedDL(TfmdDL):
    """Training loader: every meteor plus a fresh random draw of non-meteors each epoch.

    The 2021 recipe undersampled once; a new draw each epoch shows the net more of the hard
    negatives (satellites, aircraft, cloud edges) for the same cost per epoch.
    """

    def __init__(self, dataset=None, neg_ratio: float = 1.0, **kwargs):
        self.neg_ratio = neg_ratio
        self._pos = self._neg = None
        self._n_neg = 0
        super().__init__(dataset, **kwargs)
        items = getattr(dataset, "items", None)
        if self.shuffle and items is not None and "label" in getattr(items, "columns", ()):
            labels = np.asarray(items["label"])
            self._pos = np.flatnonzero(labels == METEOR)
            self._neg = np.flatnonzero(labels != METEOR)
            self._n_neg = min(len(self._neg), round(neg_ratio * len(self._pos)))
            self.n = len(self._pos) + self._n_neg

    def get_idxs(self):
        if not self.shuffle or self._pos is None:
            return super().get_idxs()
        rng = np.random.default_rng(self.rng.randint(0, 2**32 - 1))
        negatives = rng.choice(self._neg, self._n_neg, replace=False)
        idxs = np.concatenate([self._pos, negatives])
        rng.shuffle(idxs)
        return idxs.tolist()
