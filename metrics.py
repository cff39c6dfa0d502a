"""Kaggle's metric (mean ROC AUC over the 6 labels), F1, and per-label decision thresholds.

    from metrics import evaluate, tune_thresholds
    m = evaluate(probs, labels)                             # probs, labels: (N, 6)
    th = tune_thresholds(probs, labels); evaluate(probs, labels, th)
    weighted_label_aucs(probs, labels, counts)             # counts (R, N): R bootstrap resamples at once
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
        # per label too: macro F1 is their plain mean, so this shows which labels hold it back
        per_label = f1_score(labels, (probs >= np.asarray(thresholds)).astype(np.uint8), average=None,
                             zero_division=0)
        m.update({f"f1_{name}_tuned": float(f) for name, f in zip(LABELS, per_label)})
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
    if "macro_f1_at_rates" in m:  # validation.at_rates: calibrated and reweighted to the config's base_rates
        s += (f" | at base rates: macro_f1 {m['macro_f1_at_rates']:.4f} micro_f1 {m['micro_f1_at_rates']:.4f} "
              f"ece <= {m['ece_max_at_rates']:.4f}")
    if m["auc_labels_defined"] < len(LABELS):
        s += f" (AUC over {m['auc_labels_defined']} of {len(LABELS)} labels: the others have one class only)"
    return s


# ----------------------------------------------------------------------------
# the same metrics under many row weightings at once (bootstrap resamples as counts)


def weighted_label_aucs(probs, labels, weights):
    """ROC AUC per label under each row of weights (R, N) -> (R, L); nan where a label has one class.

    With bootstrap counts as weights this is exactly the AUC of the resampled rows (a row drawn
    k times counts k times), without building or re-sorting R copies. AUC = P(pos > neg) +
    P(pos == neg) / 2: each label's negatives are sorted once, and every resample's cumulative
    negative weight, read at each positive's score, counts the negatives below (ties half).
    """
    weights = np.asarray(weights, dtype=np.float64)
    out = np.full((weights.shape[0], labels.shape[1]), math.nan)
    for j in range(labels.shape[1]):
        y = labels[:, j].astype(bool)
        pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
        neg = neg[np.argsort(probs[neg, j], kind="stable")]
        cum_neg = np.zeros((weights.shape[0], len(neg) + 1))
        np.cumsum(weights[:, neg], axis=1, out=cum_neg[:, 1:])             # (R,Nn+1), 0 first
        lo = np.searchsorted(probs[neg, j], probs[pos, j], side="left")     # negatives strictly below
        hi = np.searchsorted(probs[neg, j], probs[pos, j], side="right")    # ... or tied
        w_pos = weights[:, pos]                                             # (R,P)
        num = (w_pos * 0.5 * (cum_neg[:, lo] + cum_neg[:, hi])).sum(1)      # (R,P) * (R,P) -> (R,)
        n_pos, n_neg = w_pos.sum(1), cum_neg[:, -1]
        ok = (n_pos > 0) & (n_neg > 0)
        out[ok, j] = num[ok] / (n_pos[ok] * n_neg[ok])
    return out


def weighted_f1s(probs, labels, thresholds, weights):
    """F1 per label of probs >= thresholds under each row of weights (R, N) -> (R, L).

    0 where a label has neither positives nor predictions, as f1_scores (zero_division=0),
    so mean(axis=1) is its macro F1 on the resampled rows.
    """
    weights = np.asarray(weights, dtype=np.float64)
    pred = (probs >= np.asarray(thresholds)[None, :]).astype(np.float64)  # (N,L)
    y = labels.astype(np.float64)
    tp = weights @ (pred * y)                         # (R,N) @ (N,L) -> (R,L)
    denom = weights @ pred + weights @ y              # predicted + actual positives
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
