"""metrics.py: Kaggle's mean ROC AUC, F1, per-label thresholds, and their weighted (bootstrap) variants.
numpy only, no model: seconds.

    python -m pytest -q tests/test_metrics.py
"""
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from data import LABELS
from metrics import (MIN_POSITIVES_TO_TUNE, THRESHOLD_GRID, evaluate, f1_scores, format_metrics, label_aucs,
                     tune_thresholds, weighted_f1s, weighted_label_aucs)

L = len(LABELS)


def one_class_labels(rng, n=120):
    """Labels where severe_toxic has no positive and threat is positive on every row: two undefined AUCs."""
    labels = (rng.random((n, L)) < 0.3).astype(np.uint8)
    labels[:, 1] = 0
    labels[:, 3] = 1
    probs = np.clip(0.4 * labels + 0.6 * rng.random((n, L)), 0, 1)
    return probs, labels


# ----------------------------------------------------------------------------
# AUC


def test_label_auc_is_nan_for_a_one_class_label_and_sklearn_elsewhere():
    probs, labels = one_class_labels(np.random.default_rng(10))
    aucs = label_aucs(probs, labels)
    assert aucs.shape == (L,)
    assert np.isnan(aucs[1]) and np.isnan(aucs[3])  # undefined, not 0.5
    for j in (0, 2, 4, 5):
        assert aucs[j] == pytest.approx(roc_auc_score(labels[:, j], probs[:, j]), abs=1e-12)
        assert aucs[j] > 0.6  # the planted signal, so 0.5 cannot pass for it


def test_mean_auc_is_over_the_defined_labels_and_counts_them():
    probs, labels = one_class_labels(np.random.default_rng(11))
    m = evaluate(probs, labels)
    defined = [roc_auc_score(labels[:, j], probs[:, j]) for j in (0, 2, 4, 5)]
    assert m["auc_labels_defined"] == 4
    assert m["aucroc_macro"] == pytest.approx(np.mean(defined), abs=1e-12)  # not a sum over 6, nor nan
    assert math.isnan(m["auc_severe_toxic"]) and math.isnan(m["auc_threat"])
    assert m["auc_toxic"] == pytest.approx(defined[0], abs=1e-12)
    full = evaluate(probs, (np.random.default_rng(12).random(labels.shape) < 0.5).astype(np.uint8))
    assert full["auc_labels_defined"] == L and not math.isnan(full["aucroc_macro"])


def test_mean_auc_is_nan_without_warning_when_no_label_has_two_classes():
    probs = np.random.default_rng(13).random((20, L))
    labels = np.zeros((20, L), dtype=np.uint8)
    labels[:, ::2] = 1  # every label one class: half all positive, half all negative
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        m = evaluate(probs, labels)
    assert math.isnan(m["aucroc_macro"]) and m["auc_labels_defined"] == 0


# ----------------------------------------------------------------------------
# F1 and evaluate's keys


def test_f1_scores_at_default_and_given_thresholds_match_sklearn_by_hand():
    """4 rows by 6 labels; the decisions each setting should take are written out by hand.
    A probability equal to the threshold counts as positive (>=)."""
    probs = np.array([[0.90, 0.40, 0.50, 0.20, 0.60, 0.10],
                      [0.30, 0.55, 0.45, 0.20, 0.70, 0.05],
                      [0.60, 0.20, 0.35, 0.80, 0.40, 0.30],
                      [0.10, 0.45, 0.05, 0.10, 0.20, 0.25]])
    labels = np.array([[1, 1, 1, 0, 1, 0],
                       [1, 0, 1, 0, 1, 0],
                       [0, 0, 0, 1, 0, 0],
                       [0, 1, 0, 0, 0, 0]], dtype=np.uint8)
    at_half = np.array([[1, 0, 1, 0, 1, 0],
                        [0, 1, 0, 0, 1, 0],
                        [1, 0, 0, 1, 0, 0],
                        [0, 0, 0, 0, 0, 0]], dtype=np.uint8)
    th = np.array([0.3, 0.45, 0.45, 0.9, 0.5, 0.3])
    at_th = np.array([[1, 0, 1, 0, 1, 0],
                      [1, 1, 1, 0, 1, 0],
                      [1, 0, 0, 0, 0, 1],
                      [0, 1, 0, 0, 0, 0]], dtype=np.uint8)
    for thresholds, pred in ((None, at_half), (th, at_th)):
        got = f1_scores(probs, labels) if thresholds is None else f1_scores(probs, labels, thresholds)
        assert got == pytest.approx((f1_score(labels, pred, average="macro", zero_division=0),
                                     f1_score(labels, pred, average="micro", zero_division=0)), abs=1e-12)
    # by hand, default 0.5: per-label F1 (1/2, 0, 2/3, 1, 1, 0) -> macro 19/36; micro TP 5, FP 2, FN 4 -> 10/16
    assert f1_scores(probs, labels) == pytest.approx((19 / 36, 10 / 16), abs=1e-12)
    # by hand, given: (4/5, 1/2, 1, 0, 1, 0) -> macro 33/60; micro TP 7, FP 3, FN 2 -> 14/19
    assert f1_scores(probs, labels, th) == pytest.approx((33 / 60, 14 / 19), abs=1e-12)
    assert f1_scores(probs, labels, np.full(L, 0.5)) == f1_scores(probs, labels)  # 0.5 is the default


def test_per_label_tuned_f1_is_what_macro_f1_averages():
    rng = np.random.default_rng(2)
    labels = (rng.random((300, L)) < 0.2).astype(np.uint8)
    probs = np.clip(labels * 0.4 + rng.random((300, L)) * 0.6, 0, 1)
    th = tune_thresholds(probs, labels)
    m = evaluate(probs, labels, th)
    per_label = [m[f"f1_{name}_tuned"] for name in LABELS]
    assert np.mean(per_label) == pytest.approx(m["macro_f1_tuned"])
    y, pred = labels[:, 3] == 1, probs[:, 3] >= th[3]  # threat, by hand
    assert per_label[3] == pytest.approx(2 * (y & pred).sum() / (y.sum() + pred.sum()))
    assert "f1_toxic_tuned" not in evaluate(probs, labels)  # no thresholds, no tuned F1


def test_tuned_keys_appear_only_with_thresholds():
    """Without thresholds: AUCs and F1 at 0.5 only. With them: tuned macro, micro and one F1 per label,
    a label with no positive and no prediction counting 0 in the macro mean (zero_division=0)."""
    rng = np.random.default_rng(14)
    labels = (rng.random((80, L)) < 0.3).astype(np.uint8)
    labels[:, 5] = 0
    probs = np.clip(0.4 * labels + 0.5 * rng.random((80, L)), 0, 1)  # identity_hate never reaches 0.5
    base = {"aucroc_macro", "auc_labels_defined", "macro_f1", "micro_f1"} | {f"auc_{n}" for n in LABELS}
    assert set(evaluate(probs, labels)) == base
    th = np.array([0.5, 0.4, 0.45, 0.5, 0.35, 0.6])
    m = evaluate(probs, labels, th)
    per_label = {f"f1_{n}_tuned" for n in LABELS}
    assert set(m) == base | {"macro_f1_tuned", "micro_f1_tuned"} | per_label
    expected = f1_score(labels, (probs >= th).astype(np.uint8), average=None, zero_division=0)
    np.testing.assert_allclose([m[f"f1_{n}_tuned"] for n in LABELS], expected, atol=1e-12)
    assert m["f1_identity_hate_tuned"] == 0.0
    assert m["macro_f1_tuned"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert (m["macro_f1_tuned"], m["micro_f1_tuned"]) == pytest.approx(f1_scores(probs, labels, th), abs=1e-12)
    assert (m["macro_f1"], m["micro_f1"]) == f1_scores(probs, labels)  # the 0.5 ones stay at 0.5


# ----------------------------------------------------------------------------
# thresholds


def test_tune_thresholds_finds_planted_optimum():
    """Per label, positives start exactly at the planted threshold and negatives sit just below it,
    so F1 is 1 there and below 1 at every other grid value."""
    rng = np.random.default_rng(0)
    planted = np.array([0.3, 0.7, 0.45, 0.62, 0.5, 0.2])
    n = 400
    labels = (rng.random((n, L)) < 0.3).astype(np.uint8)
    labels[:20] = 1
    labels[20:40] = 0
    probs = np.where(labels == 1, rng.uniform(planted, 0.99, (n, L)), rng.uniform(0.01, planted - 0.01, (n, L)))
    probs[:20] = planted          # positives on the threshold: one grid step up loses them
    probs[20:40] = planted - 0.005  # negatives just under it: one grid step down takes them in
    th = tune_thresholds(probs, labels)
    assert np.allclose(th, planted), th
    assert f1_scores(probs, labels, th) == (1.0, 1.0)
    for j, t in enumerate(planted):  # strictly worse on both neighbours
        for other in (t - 0.01, t + 0.01):
            trial = th.copy()
            trial[j] = other
            assert f1_scores(probs, labels, trial)[0] < 1.0
    few = labels.copy()
    few[:, 0] = 0
    few[:9, 0] = 1  # under MIN_POSITIVES_TO_TUNE: keeps 0.5
    assert tune_thresholds(probs, few)[0] == 0.5
    assert set(np.round(tune_thresholds(rng.random((n, L)), labels), 2)) <= set(THRESHOLD_GRID)


def separated(pos_at, neg_at, n_pos=20, n_neg=40):
    """One label's column: positives all at pos_at, negatives all at neg_at, so every grid threshold
    in (neg_at, pos_at] separates them perfectly (F1 = 1): a tie over that whole range."""
    return np.r_[np.full(n_pos, pos_at), np.full(n_neg, neg_at)], np.r_[np.ones(n_pos), np.zeros(n_neg)]


def test_threshold_ties_go_to_the_value_nearest_one_half():
    # (positives, negatives) -> tie range -> nearest 0.5: below 0.5, above it, and around it
    cases = [((0.30, 0.10), 0.30), ((0.95, 0.70), 0.71), ((0.60, 0.40), 0.50), ((0.90, 0.05), 0.50),
             ((0.48, 0.20), 0.48), ((0.80, 0.52), 0.53)]
    cols = [separated(*pn) for pn, _ in cases]
    probs, labels = np.stack([p for p, _ in cols], 1), np.stack([y for _, y in cols], 1).astype(np.uint8)
    th = tune_thresholds(probs, labels)  # six cases, one per label
    np.testing.assert_array_equal(th, [t for _, t in cases])  # not the first (0.11) or last (0.95) of a tie
    assert f1_scores(probs, labels, th) == (1.0, 1.0)


def test_labels_with_too_few_positives_keep_one_half():
    p, y = separated(0.30, 0.10, n_pos=MIN_POSITIVES_TO_TUNE)  # tuning would move it to 0.30
    q, z = separated(0.30, 0.10, n_pos=MIN_POSITIVES_TO_TUNE - 1)
    probs = np.stack([p, np.r_[q, 0.10], p, np.r_[q, 0.10], p, p], 1)
    labels = np.stack([y, np.r_[z, 0], np.zeros_like(y), np.zeros_like(y), y, y], 1).astype(np.uint8)
    labels[:, 3] = 1  # threat all positive: enough positives, no negative, still tuned
    th = tune_thresholds(probs, labels)
    # toxic: exactly MIN_POSITIVES_TO_TUNE, tuned; severe_toxic: one fewer, keeps 0.5 though 0.30 scores
    # higher on these rows; obscene: no positive at all; threat: every row positive, tuned (all of
    # 0.05..0.10 predict every row, nearest 0.5 wins)
    np.testing.assert_array_equal(th, [0.30, 0.5, 0.5, 0.10, 0.30, 0.30])
    assert f1_scores(probs[:, 1:2], labels[:, 1:2], [0.30])[0] > f1_scores(probs[:, 1:2], labels[:, 1:2])[0]


# ----------------------------------------------------------------------------
# the printed line


def test_format_metrics_shows_na_and_the_defined_label_note():
    probs, labels = one_class_labels(np.random.default_rng(15))
    m = evaluate(probs, labels)
    s = format_metrics(m)
    assert s.startswith(f"auc {m['aucroc_macro']:.4f} [")
    assert "severe_toxic=n/a" in s and "threat=n/a" in s
    assert f"[toxic={m['auc_toxic']:.4f} " in s and f"identity_hate={m['auc_identity_hate']:.4f}]" in s
    assert f"macro_f1 {m['macro_f1']:.4f} micro_f1 {m['micro_f1']:.4f}" in s
    assert "(AUC over 4 of 6 labels: the others have one class only)" in s
    assert "tuned:" not in s
    t = evaluate(probs, labels, tune_thresholds(probs, labels))
    assert f"| tuned: macro_f1 {t['macro_f1_tuned']:.4f} micro_f1 {t['micro_f1_tuned']:.4f}" in format_metrics(t)

    full = evaluate(probs, (np.random.default_rng(16).random(labels.shape) < 0.5).astype(np.uint8))
    s = format_metrics(full)
    assert "n/a" not in s and "AUC over" not in s  # every label defined: no note


# ----------------------------------------------------------------------------
# the same metrics under row weightings (what compare.py's bootstrap uses)


def test_weighted_metrics_equal_metrics_on_resampled_rows():
    """Bootstrap counts as weights give exactly sklearn's AUC and F1 of the resampled rows, ties included."""
    rng = np.random.default_rng(1)
    n = 200
    labels = (rng.random((n, L)) < 0.2).astype(np.uint8)
    labels[:, 5] = 0
    labels[:2, 5] = 1  # so rare that some resamples have no positive
    probs = np.round(rng.random((n, L)) * 0.6 + 0.3 * labels, 2)  # rounded: many ties
    idx = rng.integers(0, n, (40, n))
    counts = np.stack([np.bincount(i, minlength=n) for i in idx])
    th = np.full(L, 0.45)
    aucs, f1s = weighted_label_aucs(probs, labels, counts), weighted_f1s(probs, labels, th, counts)
    for r in range(len(idx)):
        y, p = labels[idx[r]], probs[idx[r]]
        expected = [roc_auc_score(y[:, j], p[:, j]) if 0 < y[:, j].sum() < n else math.nan for j in range(L)]
        np.testing.assert_allclose(aucs[r], expected, rtol=1e-12)
        assert f1s[r].mean() == pytest.approx(f1_scores(p, y, th)[0], abs=1e-12)
    assert np.isnan(aucs[:, 5]).any()  # the one-class case is exercised
