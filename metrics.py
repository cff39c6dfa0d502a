"""Kaggle's metric (mean ROC AUC over the labels), F1 and calibration error: numpy alone, one implementation each.

    from metrics import compute_metrics, format_metrics, weighted_f1, weighted_label_aucs
    m = compute_metrics(probs, labels, names, thresholds)   # probs, labels: (N, L); names: the L label names
    weighted_label_aucs(probs, labels, counts)              # counts (R, N): R bootstrap resamples at once
    f1, micro = weighted_f1(probs, labels, thresholds, w)   # w: (N, L) weights per row and label (base rates)
    f1s, micros = weighted_f1(probs, labels, thresholds, counts, resamples=True)   # counts (R, N): R at once
"""
import math

import numpy as np

ECE_BINS = 10


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


def label_aucs(probs, labels):
    """ROC AUC per label; nan where a label has only one class in `labels` (undefined, not 0.5)."""
    return weighted_label_aucs(probs, labels, np.ones((1, len(labels))))[0]


def weighted_f1(probs, labels, thresholds, weights, resamples=False):
    """F1 per label of probs >= thresholds, and micro F1, with weighted rows. weights (N, L): a weight per row and
    label (base-rate weights) -> (L,), scalar; with resamples, (R, N): R weightings of the rows at once (bootstrap
    counts) -> (R, L), (R,). 0 where a label has neither positives nor flags (scikit-learn's zero_division=0)."""
    pred = (probs >= np.asarray(thresholds, dtype=np.float64)[None, :]).astype(np.float64)  # (N,L)
    y = labels.astype(np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if not resamples:  # per row and label
        tp, fp, fn = (w * pred * y).sum(0), (w * pred * (1 - y)).sum(0), (w * (1 - pred) * y).sum(0)
    else:  # (R,N) @ (N,L) -> (R,L)
        tp, fp, fn = w @ (pred * y), w @ (pred * (1 - y)), w @ ((1 - pred) * y)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    total = denom.sum(-1)
    micro = np.divide(2 * tp.sum(-1), total, out=np.zeros_like(total), where=total > 0)
    return f1, (float(micro) if micro.ndim == 0 else micro)


def reliability_bins(p, y, w, bins=ECE_BINS):
    """One label's rows in bins equal-width bins of score -> (weight, weighted score sum, weighted positives) per bin."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    return np.bincount(which, w, bins), np.bincount(which, w * p, bins), np.bincount(which, w * y, bins)


def calibration_errors(probs, labels, weights, bins=ECE_BINS):
    """Per label: (Brier score, expected calibration error over equal-width bins), both weighted -> (L,), (L,)."""
    brier, ece = np.zeros(labels.shape[1]), np.zeros(labels.shape[1])
    for j in range(labels.shape[1]):
        p, y, w = probs[:, j], labels[:, j].astype(np.float64), weights[:, j]
        brier[j] = np.sum(w * (p - y) ** 2) / w.sum()
        _, wp, wy = reliability_bins(p, y, w, bins)
        ece[j] = np.abs(wp - wy).sum() / w.sum()  # sum over bins of (W_b / W) * |mean p - mean y| in bin b
    return brier, ece


def compute_metrics(probs, labels, names, thresholds=None):
    """Flat dict of metrics, keyed by the label names. aucroc_macro is Kaggle's mean AUC over the labels where
    it exists; F1 at 0.5, and at thresholds (per label) where given."""
    aucs, ones = label_aucs(probs, labels), np.ones(labels.shape)
    m = {"aucroc_macro": float(np.nanmean(aucs)) if not np.isnan(aucs).all() else math.nan,
         "auc_labels_defined": int((~np.isnan(aucs)).sum())}
    m.update({f"auc_{name}": float(a) for name, a in zip(names, aucs)})
    f1, m["micro_f1"] = weighted_f1(probs, labels, np.full(len(names), 0.5), ones)
    m["macro_f1"] = float(f1.mean())
    if thresholds is not None:
        f1, m["micro_f1_tuned"] = weighted_f1(probs, labels, thresholds, ones)
        m["macro_f1_tuned"] = float(f1.mean())
        # per label too: macro F1 is their plain mean, so this shows which labels hold it back
        m.update({f"f1_{name}_tuned": float(f) for name, f in zip(names, f1)})
    return m


def format_metrics(m, names):
    """One readable line: mean AUC, per-label AUC (n/a where undefined), F1s."""
    aucs = " ".join(f"{n}={m[f'auc_{n}']:.4f}" if not math.isnan(m[f"auc_{n}"]) else f"{n}=n/a" for n in names)
    s = f"auc {m['aucroc_macro']:.4f} [{aucs}] macro_f1 {m['macro_f1']:.4f} micro_f1 {m['micro_f1']:.4f}"
    if "macro_f1_tuned" in m:
        s += f" | tuned: macro_f1 {m['macro_f1_tuned']:.4f} micro_f1 {m['micro_f1_tuned']:.4f}"
    if "macro_f1_at_rates" in m:  # validation: calibrated and reweighted to the config's base_rates
        s += (f" | at base rates: macro_f1 {m['macro_f1_at_rates']:.4f} micro_f1 {m['micro_f1_at_rates']:.4f} "
              f"ece <= {m['ece_max_at_rates']:.4f}")
    if m["auc_labels_defined"] < len(names):
        s += f" (AUC over {m['auc_labels_defined']} of {len(names)} labels: the others have one class only)"
    return s
