"""Kaggle's metric (mean ROC AUC over the 6 labels), F1, and per-label decision thresholds.

    from metrics import evaluate, tune_thresholds
    m = evaluate(probs, labels)                             # probs, labels: (N, 6)
    th = tune_thresholds(probs, labels); evaluate(probs, labels, th)
"""
import math

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from data import LABELS

MIN_POSITIVES_TO_TUNE = 10
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def label_aucs(probs, labels):
    """ROC AUC per label; nan where a label has only one class in `labels` (undefined, not 0.5)."""
    out = []
    for j in range(labels.shape[1]):
        y = labels[:, j]
        out.append(roc_auc_score(y, probs[:, j]) if 0 < y.sum() < len(y) else math.nan)
    return np.array(out)


def f1_scores(probs, labels, thresholds=None):
    """Macro and micro F1 of the decisions probs >= thresholds (0.5 for every label by default)."""
    th = np.full(labels.shape[1], 0.5) if thresholds is None else np.asarray(thresholds)
    pred = (probs >= th).astype(np.uint8)
    return (f1_score(labels, pred, average="macro", zero_division=0),
            f1_score(labels, pred, average="micro", zero_division=0))


def evaluate(probs, labels, thresholds=None):
    """Flat dict of metrics. aucroc_macro is Kaggle's mean AUC, over the labels where it exists."""
    aucs = label_aucs(probs, labels)
    m = {"aucroc_macro": float(np.nanmean(aucs)) if not np.isnan(aucs).all() else math.nan,
         "auc_labels_defined": int((~np.isnan(aucs)).sum())}
    m.update({f"auc_{name}": float(a) for name, a in zip(LABELS, aucs)})
    m["macro_f1"], m["micro_f1"] = f1_scores(probs, labels)
    if thresholds is not None:
        m["macro_f1_tuned"], m["micro_f1_tuned"] = f1_scores(probs, labels, thresholds)
    return m


def tune_thresholds(probs, labels):
    """Per label, the threshold on a 0.05..0.95 grid that maximises F1 on these predictions.

    Guard against degenerate picks: with under MIN_POSITIVES_TO_TUNE positives, a label's
    best threshold is set by a handful of examples and does not carry to new data, so it
    keeps 0.5. The grid stops short of 0 and 1 for the same reason (one outlier could
    otherwise push the threshold to an extreme), and ties go to the value nearest 0.5.
    """
    out = np.full(labels.shape[1], 0.5)
    for j in range(labels.shape[1]):
        y = labels[:, j].astype(bool)
        if y.sum() < MIN_POSITIVES_TO_TUNE:
            continue
        pred = probs[:, j][:, None] >= THRESHOLD_GRID[None, :]  # (N,1) >= (1,G) -> (N,G)
        tp = (pred & y[:, None]).sum(0)
        f1 = 2 * tp / (pred.sum(0) + y.sum())
        best = np.flatnonzero(f1 == f1.max())
        out[j] = THRESHOLD_GRID[best[np.argmin(np.abs(THRESHOLD_GRID[best] - 0.5))]]
    return out


def format_metrics(m):
    """One readable line: mean AUC, per-label AUC (n/a where undefined), F1s."""
    aucs = " ".join(f"{n}={m[f'auc_{n}']:.4f}" if not math.isnan(m[f"auc_{n}"]) else f"{n}=n/a"
                    for n in LABELS)
    s = f"auc {m['aucroc_macro']:.4f} [{aucs}] macro_f1 {m['macro_f1']:.4f} micro_f1 {m['micro_f1']:.4f}"
    if "macro_f1_tuned" in m:
        s += f" | tuned: macro_f1 {m['macro_f1_tuned']:.4f} micro_f1 {m['micro_f1_tuned']:.4f}"
    if m["auc_labels_defined"] < len(LABELS):
        s += f" (AUC over {m['auc_labels_defined']} of {len(LABELS)} labels: the others have one class only)"
    return s
