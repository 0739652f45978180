"""ROC analysis and decision-threshold calibration (sensitivity, specificity, AUC; no accuracy)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

log = logging.getLogger(__name__)


def auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present."""
    y = np.asarray(y_true).astype(int)
    if y.min() == y.max():
        return None
    return float(roc_auc_score(y, scores))


def threshold_at_sensitivity(y_true: np.ndarray, scores: np.ndarray, sensitivity: float) -> float:
    """Highest-specificity threshold whose sensitivity (``score >= t`` is positive) is at least
    ``sensitivity``; placed midway to the next lower score for a margin.
    """
    if not 0 < sensitivity <= 1:
        raise ValueError(f"sensitivity must be in (0, 1], got {sensitivity}")
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos = np.sort(s[y])[::-1]
    if len(pos) == 0:
        raise ValueError("threshold calibration needs at least one positive case")
    k = math.ceil(round(sensitivity * len(pos), 9))
    t = pos[k - 1]
    below = s[s < t]
    return float((t + below.max()) / 2) if len(below) else float(t)


def operating_point(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """Sensitivity, specificity and counts at ``score >= threshold``."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(scores) >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    return {
        "threshold": float(threshold),
        "sensitivity": tp / n_pos if n_pos else None,
        "specificity": tn / n_neg if n_neg else None,
        "n_positive": n_pos,
        "n_negative": n_neg,
    }


def label_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float, dataset: str = "") -> dict:
    """AUC + operating point, in the manifest's ``LabelMetrics`` shape."""
    m = operating_point(y_true, scores, threshold)
    m["auc"] = auc(y_true, scores)
    if dataset:
        m["dataset"] = dataset
    return m


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str) -> Path:
    """Save ROC curves (one per label, with the chosen operating point) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    for name, (y, s, thr) in curves.items():
        y = np.asarray(y).astype(int)
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        op = operating_point(y, s, thr)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(y, s):.3f})")
        ax.plot(1 - op["specificity"], op["sensitivity"], "o", color=ax.lines[-1].get_color())
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
