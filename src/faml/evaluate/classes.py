"""Classification against the truth: confusion matrix, Hungarian matching, F1.

Predicted classes carry arbitrary labels. Each predicted class is matched to at most one true
class so that the number of particles on matched pairs is largest (Hungarian algorithm,
:func:`scipy.optimize.linear_sum_assignment`, on the confusion matrix). For a true class
``j`` matched to predicted class ``k``: precision ``C[k, j] / sum_j' C[k, j']``, recall
``C[k, j] / sum_k' C[k', j]``, ``F1 = 2 C[k, j] / (row_k + column_j)``; a true class left
unmatched (more true than predicted classes) has F1 = 0. The mean F1 is over true classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["Classification", "confusion_matrix", "match_classes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Classification:
    """Predicted classes against true classes (all labels 0-based).

    Attributes
    ----------
    confusion
        `(K_pred, K_true)` int64 counts: ``C[k, j]`` particles predicted ``k`` and truly ``j``.
    matching
        `(K_pred,)` the true class matched to each predicted class, or -1.
    precision, recall, f1
        `(K_true,)` per true class (0 where unmatched).
    mean_f1
        Mean of ``f1`` over the true classes.
    accuracy
        Share of particles whose predicted class is matched to their true class.
    """

    confusion: np.ndarray
    matching: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    mean_f1: float
    accuracy: float

    def predicted_for_true(self) -> np.ndarray:
        """`(K_true,)` the predicted class matched to each true class, or -1."""
        out = np.full(self.confusion.shape[1], -1, dtype=np.int64)
        for k, j in enumerate(self.matching):
            if j >= 0:
                out[j] = k
        return out

    def to_dict(self) -> dict:
        """JSON-serialisable figures (classes 1-based, 0: unmatched)."""
        return {
            "confusion": self.confusion.tolist(),
            "matched_true_class": [int(j) + 1 for j in self.matching],
            "precision": self.precision.tolist(),
            "recall": self.recall.tolist(),
            "f1": self.f1.tolist(),
            "mean_f1": float(self.mean_f1),
            "accuracy": float(self.accuracy),
        }


def confusion_matrix(
    predicted: np.ndarray,
    true: np.ndarray,
    n_predicted: int | None = None,
    n_true: int | None = None,
) -> np.ndarray:
    """`(K_pred, K_true)` int64 counts of `(n,)` 0-based ``predicted`` and ``true`` labels."""
    p = np.asarray(predicted)
    t = np.asarray(true)
    if p.shape != t.shape or p.ndim != 1:
        raise ValueError(f"predicted and true must be (n,) alike, got {p.shape} and {t.shape}")
    if p.size and (p.min() < 0 or t.min() < 0):
        raise ValueError("class labels must be 0-based non-negative integers")
    kp = int(p.max()) + 1 if n_predicted is None and p.size else int(n_predicted or 0)
    kt = int(t.max()) + 1 if n_true is None and t.size else int(n_true or 0)
    if p.size and (p.max() >= kp or t.max() >= kt):
        raise ValueError(f"labels exceed the class counts {kp} (predicted), {kt} (true)")
    out = np.zeros((kp, kt), dtype=np.int64)
    np.add.at(out, (p.astype(np.int64), t.astype(np.int64)), 1)
    return out


def match_classes(
    predicted: np.ndarray,
    true: np.ndarray,
    n_predicted: int | None = None,
    n_true: int | None = None,
) -> Classification:
    """Hungarian matching of predicted to true classes and the F1 scores.

    Parameters
    ----------
    predicted, true
        `(n,)` 0-based labels.
    n_predicted, n_true
        Class counts (default: the largest label + 1), so that empty classes count.

    Returns
    -------
    Classification
    """
    conf = confusion_matrix(predicted, true, n_predicted, n_true)
    kp, kt = conf.shape
    rows, cols = linear_sum_assignment(conf, maximize=True)
    matching = np.full(kp, -1, dtype=np.int64)
    matching[rows] = cols
    row_sum = conf.sum(axis=1)
    col_sum = conf.sum(axis=0)
    precision = np.zeros(kt)
    recall = np.zeros(kt)
    f1 = np.zeros(kt)
    for k, j in zip(rows, cols, strict=True):
        hits = conf[k, j]
        precision[j] = hits / row_sum[k] if row_sum[k] else 0.0
        recall[j] = hits / col_sum[j] if col_sum[j] else 0.0
        den = row_sum[k] + col_sum[j]
        f1[j] = 2.0 * hits / den if den else 0.0
    total = conf.sum()
    accuracy = float(conf[rows, cols].sum() / total) if total else 0.0
    return Classification(
        conf, matching, precision, recall, f1, float(f1.mean()) if kt else 0.0, accuracy
    )
