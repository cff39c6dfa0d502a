"""metrics.py: Kaggle's mean ROC AUC, F1 (one weighted implementation: base-rate weights per row and label, or
bootstrap counts), the calibration errors, and their weighted (bootstrap) variants. numpy only, no model:
seconds. scikit-learn is the reference here; metrics.py itself does not import it.

    python -m pytest -q tests/test_metrics.py
"""
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, confusion_matrix, f1_score, roc_auc_score

from common import LABELS
from metrics import (ECE_BINS, calibration_errors, compute_metrics, format_metrics, label_aucs, reliability_bins,
                     weighted_f1, weighted_label_aucs)

L = len(LABELS)


def one_class_labels(rng, n=120):
    """Labels where severe_toxic has no positive and threat is positive on every row: two undefined AUCs."""
    labels = (rng.random((n, L)) < 0.3).astype(np.uint8)
    labels[:, 1] = 0
    labels[:, 3] = 1
    probs = np.clip(0.4 * labels + 0.6 * rng.random((n, L)), 0, 1)
    return probs, labels


def test_metrics_does_not_import_sklearn():
    import subprocess
    import sys

    from conftest import ROOT
    code = "import sys, metrics; sys.exit(int('sklearn' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0  # numpy only


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


def test_label_auc_counts_ties_half_as_sklearn_does():
    """Scores rounded to one decimal: most positives tie with some negatives, and a tie counts one half."""
    rng = np.random.default_rng(20)
    labels = (rng.random((500, L)) < 0.3).astype(np.uint8)
    probs = np.round(np.clip(0.3 * labels + 0.7 * rng.random((500, L)), 0, 1), 1)
    assert len(np.unique(probs)) <= 11  # ties everywhere
    expected = [roc_auc_score(labels[:, j], probs[:, j]) for j in range(L)]
    np.testing.assert_allclose(label_aucs(probs, labels), expected, rtol=1e-12)
    # by hand: one positive tied with one of two negatives, above the other -> (1 + 0.5) / 2
    assert label_aucs(np.array([[0.5], [0.5], [0.2]]), np.array([[1], [0], [0]])) == pytest.approx([0.75])
    every_tie = label_aucs(np.full((6, 1), 0.3), np.array([[1], [0], [1], [0], [0], [1]]))
    assert every_tie == pytest.approx([0.5])  # a constant score ranks nothing


def test_label_aucs_is_weighted_label_aucs_with_ones():
    probs, labels = one_class_labels(np.random.default_rng(21))
    np.testing.assert_array_equal(label_aucs(probs, labels),
                                  weighted_label_aucs(probs, labels, np.ones((1, len(labels))))[0])


def test_mean_auc_is_over_the_defined_labels_and_counts_them():
    probs, labels = one_class_labels(np.random.default_rng(11))
    m = compute_metrics(probs, labels, LABELS)
    defined = [roc_auc_score(labels[:, j], probs[:, j]) for j in (0, 2, 4, 5)]
    assert m["auc_labels_defined"] == 4
    assert m["aucroc_macro"] == pytest.approx(np.mean(defined), abs=1e-12)  # not a sum over 6, nor nan
    assert math.isnan(m["auc_severe_toxic"]) and math.isnan(m["auc_threat"])
    assert m["auc_toxic"] == pytest.approx(defined[0], abs=1e-12)
    full = compute_metrics(probs, (np.random.default_rng(12).random(labels.shape) < 0.5).astype(np.uint8), LABELS)
    assert full["auc_labels_defined"] == L and not math.isnan(full["aucroc_macro"])


def test_mean_auc_is_nan_without_warning_when_no_label_has_two_classes():
    probs = np.random.default_rng(13).random((20, L))
    labels = np.zeros((20, L), dtype=np.uint8)
    labels[:, ::2] = 1  # every label one class: half all positive, half all negative
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        m = compute_metrics(probs, labels, LABELS)
    assert math.isnan(m["aucroc_macro"]) and m["auc_labels_defined"] == 0


# ----------------------------------------------------------------------------
# F1 and compute_metrics' keys


def test_f1_at_default_and_given_thresholds_match_sklearn_by_hand():
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
    ones = np.ones(labels.shape)
    for thresholds, pred in ((np.full(L, 0.5), at_half), (th, at_th)):
        f1, micro = weighted_f1(probs, labels, thresholds, ones)
        assert f1.shape == (L,) and isinstance(micro, float)
        np.testing.assert_allclose(f1, f1_score(labels, pred, average=None, zero_division=0), atol=1e-12)
        assert micro == pytest.approx(f1_score(labels, pred, average="micro", zero_division=0), abs=1e-12)
    # by hand, 0.5: per-label F1 (1/2, 0, 2/3, 1, 1, 0) -> macro 19/36; micro TP 5, FP 2, FN 4 -> 10/16
    f1, micro = weighted_f1(probs, labels, np.full(L, 0.5), ones)
    assert f1 == pytest.approx([1 / 2, 0, 2 / 3, 1, 1, 0], abs=1e-12)
    assert (f1.mean(), micro) == pytest.approx((19 / 36, 10 / 16), abs=1e-12)
    # by hand, given: (4/5, 1/2, 1, 0, 1, 0) -> macro 33/60; micro TP 7, FP 3, FN 2 -> 14/19
    f1, micro = weighted_f1(probs, labels, th, ones)
    assert (f1.mean(), micro) == pytest.approx((33 / 60, 14 / 19), abs=1e-12)
    m = compute_metrics(probs, labels, LABELS, th)  # compute_metrics' F1s are these
    assert (m["macro_f1"], m["micro_f1"]) == pytest.approx((19 / 36, 10 / 16), abs=1e-12)
    assert (m["macro_f1_tuned"], m["micro_f1_tuned"]) == pytest.approx((33 / 60, 14 / 19), abs=1e-12)


def test_weighted_f1_with_weights_per_row_and_label_is_sklearns_weighted_f1():
    """(N, L) weights, as decisions.rate_weights gives: each label's F1 is scikit-learn's with that label's
    column as sample_weight, and micro F1 pools the weighted counts over the labels."""
    rng = np.random.default_rng(3)
    n = 300
    labels = (rng.random((n, L)) < 0.25).astype(np.uint8)
    labels[:, 5] = 0  # no positive, and never flagged below: 0 (zero_division=0), not nan
    probs = np.clip(0.35 * labels + 0.6 * rng.random((n, L)), 0, 1)
    probs[:, 5] = 0.1
    th = np.array([0.5, 0.4, 0.45, 0.55, 0.35, 0.5])
    w = np.where(labels, rng.uniform(0.05, 0.5, (n, L)), rng.uniform(1.0, 1.4, (n, L)))  # base-rate-like
    f1, micro = weighted_f1(probs, labels, th, w)
    assert f1.shape == (L,) and f1.dtype == np.float64 and isinstance(micro, float)
    pred = (probs >= th).astype(np.uint8)
    expected = [f1_score(labels[:, j], pred[:, j], sample_weight=w[:, j], zero_division=0) for j in range(L)]
    np.testing.assert_allclose(f1, expected, rtol=1e-12)
    assert f1[5] == 0.0
    counts = np.array([confusion_matrix(labels[:, j], pred[:, j], labels=[0, 1], sample_weight=w[:, j]).ravel()
                       for j in range(L)])  # tn, fp, fn, tp per label
    tp, fp, fn = counts[:, 3].sum(), counts[:, 1].sum(), counts[:, 2].sum()
    assert micro == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)
    # one weight per row, the same for every label: micro F1 is scikit-learn's own weighted micro F1
    row_w = rng.uniform(0.1, 3.0, n)
    f1, micro = weighted_f1(probs, labels, th, np.repeat(row_w[:, None], L, 1))
    assert micro == pytest.approx(f1_score(labels, pred, average="micro", sample_weight=row_w), rel=1e-12)
    np.testing.assert_allclose(f1, f1_score(labels, pred, average=None, sample_weight=row_w, zero_division=0),
                               rtol=1e-12)
    # and all ones: the unweighted F1
    np.testing.assert_allclose(weighted_f1(probs, labels, th, np.ones((n, L)))[0],
                               f1_score(labels, pred, average=None, zero_division=0), rtol=1e-12)


def test_weighted_f1_of_nothing_is_zero_not_nan():
    labels, probs = np.zeros((4, 2), dtype=np.uint8), np.full((4, 2), 0.1)
    f1, micro = weighted_f1(probs, labels, [0.5, 0.5], np.ones((4, 2)))
    assert f1.tolist() == [0.0, 0.0] and micro == 0.0
    f1, micro = weighted_f1(probs, labels, [0.5, 0.5], np.zeros((3, 4)), resamples=True)  # three resamples of no weight at all
    assert f1.shape == (3, 2) and micro.shape == (3,) and not np.isnan(f1).any() and (micro == 0).all()


def test_per_label_tuned_f1_is_what_macro_f1_averages():
    rng = np.random.default_rng(2)
    labels = (rng.random((300, L)) < 0.2).astype(np.uint8)
    probs = np.clip(labels * 0.4 + rng.random((300, L)) * 0.6, 0, 1)
    th = np.array([0.45, 0.5, 0.4, 0.55, 0.5, 0.35])
    m = compute_metrics(probs, labels, LABELS, th)
    per_label = [m[f"f1_{name}_tuned"] for name in LABELS]
    assert np.mean(per_label) == pytest.approx(m["macro_f1_tuned"])
    y, pred = labels[:, 3] == 1, probs[:, 3] >= th[3]  # threat, by hand
    assert per_label[3] == pytest.approx(2 * (y & pred).sum() / (y.sum() + pred.sum()))
    assert "f1_toxic_tuned" not in compute_metrics(probs, labels, LABELS)  # no thresholds, no tuned F1


def test_tuned_keys_appear_only_with_thresholds():
    """Without thresholds: AUCs and F1 at 0.5 only. With them: tuned macro, micro and one F1 per label,
    a label with no positive and no prediction counting 0 in the macro mean (zero_division=0)."""
    rng = np.random.default_rng(14)
    labels = (rng.random((80, L)) < 0.3).astype(np.uint8)
    labels[:, 5] = 0
    probs = np.clip(0.4 * labels + 0.5 * rng.random((80, L)), 0, 1)  # identity_hate never reaches 0.5
    base = {"aucroc_macro", "auc_labels_defined", "macro_f1", "micro_f1"} | {f"auc_{n}" for n in LABELS}
    assert set(compute_metrics(probs, labels, LABELS)) == base
    th = np.array([0.5, 0.4, 0.45, 0.5, 0.35, 0.6])
    m = compute_metrics(probs, labels, LABELS, th)
    per_label = {f"f1_{n}_tuned" for n in LABELS}
    assert set(m) == base | {"macro_f1_tuned", "micro_f1_tuned"} | per_label
    expected = f1_score(labels, (probs >= th).astype(np.uint8), average=None, zero_division=0)
    np.testing.assert_allclose([m[f"f1_{n}_tuned"] for n in LABELS], expected, atol=1e-12)
    assert m["f1_identity_hate_tuned"] == 0.0
    assert m["macro_f1_tuned"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert m["micro_f1_tuned"] == pytest.approx(
        f1_score(labels, (probs >= th).astype(np.uint8), average="micro", zero_division=0), abs=1e-12)
    half = (probs >= 0.5).astype(np.uint8)  # the 0.5 ones stay at 0.5
    assert (m["macro_f1"], m["micro_f1"]) == pytest.approx(
        (f1_score(labels, half, average="macro", zero_division=0),
         f1_score(labels, half, average="micro", zero_division=0)), abs=1e-12)
    json_ready = all(isinstance(v, (int, float)) and not isinstance(v, np.generic) for v in m.values())
    assert json_ready  # plain Python numbers: checkpoints, Aim and JSON take them as they are


def test_compute_metrics_is_keyed_by_the_names_given():
    """A run's own label set: the keys are its names, in its order; nothing assumes Kaggle's six."""
    rng = np.random.default_rng(17)
    labels = (rng.random((60, 2)) < 0.4).astype(np.uint8)
    probs = np.clip(0.4 * labels + 0.6 * rng.random((60, 2)), 0, 1)
    m = compute_metrics(probs, labels, ("spam", "toxic"), [0.4, 0.6])
    assert set(m) == {"aucroc_macro", "auc_labels_defined", "macro_f1", "micro_f1", "auc_spam", "auc_toxic",
                      "macro_f1_tuned", "micro_f1_tuned", "f1_spam_tuned", "f1_toxic_tuned"}
    assert m["auc_toxic"] == pytest.approx(roc_auc_score(labels[:, 1], probs[:, 1]), abs=1e-12)
    assert m["f1_spam_tuned"] == pytest.approx(f1_score(labels[:, 0], probs[:, 0] >= 0.4), abs=1e-12)
    assert m["auc_labels_defined"] == 2


# ----------------------------------------------------------------------------
# calibration errors


def test_brier_and_ece_are_weighted_and_match_by_hand():
    rng = np.random.default_rng(5)
    n = 400
    probs = rng.random((n, L))
    probs[:7, 0] = 1.0  # a score of exactly 1 falls in the top bin, not an eleventh
    labels = (rng.random((n, L)) < probs ** 1.5).astype(np.uint8)  # over-confident scores
    w = rng.uniform(0.2, 2.0, (n, L))
    brier, ece = calibration_errors(probs, labels, w)
    assert brier.shape == ece.shape == (L,)
    for j in range(L):
        p, y, wj = probs[:, j], labels[:, j], w[:, j]
        assert brier[j] == pytest.approx(brier_score_loss(y, p, sample_weight=wj), rel=1e-12)
        k = np.minimum((p * 10).astype(int), 9)  # bins of width 0.1
        by_hand = sum(abs(wj[k == i] @ p[k == i] - wj[k == i] @ y[k == i]) for i in range(10)) / wj.sum()
        assert ece[j] == pytest.approx(by_hand, rel=1e-12)
    assert (ece > 0.02).all()  # the miscalibration planted is seen
    perfect = np.repeat([[0.25]], 8, 0)  # a quarter of the rows positive, every score 0.25
    assert calibration_errors(perfect, np.array([[1], [0], [0], [0]] * 2), np.ones((8, 1)))[1] == pytest.approx([0])


def test_reliability_bins_sum_the_weights_scores_and_positives_per_bin():
    p = np.array([0.0, 0.05, 0.15, 0.95, 1.0, 0.5])
    y = np.array([0, 1, 0, 1, 1, 0], dtype=np.float64)
    w = np.array([1.0, 2.0, 1.0, 0.5, 1.5, 3.0])
    wb, wp, wy = reliability_bins(p, y, w)
    assert ECE_BINS == 10 and wb.shape == wp.shape == wy.shape == (10,)
    assert wb.tolist() == [3.0, 1.0, 0, 0, 0, 3.0, 0, 0, 0, 2.0]  # 1.0 lands in the last bin
    assert wp == pytest.approx([0.1, 0.15, 0, 0, 0, 1.5, 0, 0, 0, 0.475 + 1.5])
    assert wy.tolist() == [2.0, 0, 0, 0, 0, 0, 0, 0, 0, 2.0]
    wb4, _, _ = reliability_bins(p, y, w, bins=4)
    assert wb4.tolist() == [4.0, 0, 3.0, 2.0]


# ----------------------------------------------------------------------------
# the printed line


def test_format_metrics_shows_na_and_the_defined_label_note():
    probs, labels = one_class_labels(np.random.default_rng(15))
    m = compute_metrics(probs, labels, LABELS)
    s = format_metrics(m, LABELS)
    assert s.startswith(f"auc {m['aucroc_macro']:.4f} [")
    assert "severe_toxic=n/a" in s and "threat=n/a" in s
    assert f"[toxic={m['auc_toxic']:.4f} " in s and f"identity_hate={m['auc_identity_hate']:.4f}]" in s
    assert f"macro_f1 {m['macro_f1']:.4f} micro_f1 {m['micro_f1']:.4f}" in s
    assert "(AUC over 4 of 6 labels: the others have one class only)" in s
    assert "tuned:" not in s and "at base rates" not in s
    t = compute_metrics(probs, labels, LABELS, np.full(L, 0.45))
    tuned = f"| tuned: macro_f1 {t['macro_f1_tuned']:.4f} micro_f1 {t['micro_f1_tuned']:.4f}"
    assert tuned in format_metrics(t, LABELS)
    t.update(macro_f1_at_rates=0.41234, micro_f1_at_rates=0.5, ece_max_at_rates=0.03)  # what validation adds
    assert format_metrics(t, LABELS).endswith(
        "| at base rates: macro_f1 0.4123 micro_f1 0.5000 ece <= 0.0300 (AUC over 4 of 6 labels: the others have "
        "one class only)")

    full = compute_metrics(probs, (np.random.default_rng(16).random(labels.shape) < 0.5).astype(np.uint8), LABELS)
    s = format_metrics(full, LABELS)
    assert "n/a" not in s and "AUC over" not in s  # every label defined: no note
    two = compute_metrics(probs[:, :2], labels[:, :2], ("spam", "toxic"))
    assert "[spam=" in format_metrics(two, ("spam", "toxic")) and "(AUC over 1 of 2 labels" in format_metrics(
        two, ("spam", "toxic"))


# ----------------------------------------------------------------------------
# the same metrics under row weightings (what compare.py's bootstrap uses)


def test_weighted_metrics_equal_metrics_on_resampled_rows():
    """Bootstrap counts (R, N) as weights give exactly sklearn's AUC and F1 (per label and micro) of the
    resampled rows, ties included."""
    rng = np.random.default_rng(1)
    n = 200
    labels = (rng.random((n, L)) < 0.2).astype(np.uint8)
    labels[:, 5] = 0
    labels[:2, 5] = 1  # so rare that some resamples have no positive
    probs = np.round(rng.random((n, L)) * 0.6 + 0.3 * labels, 2)  # rounded: many ties
    idx = rng.integers(0, n, (40, n))
    counts = np.stack([np.bincount(i, minlength=n) for i in idx])
    th = np.full(L, 0.45)
    aucs = weighted_label_aucs(probs, labels, counts)
    f1s, micros = weighted_f1(probs, labels, th, counts, resamples=True)
    assert aucs.shape == f1s.shape == (len(idx), L) and micros.shape == (len(idx),)
    for r in range(len(idx)):
        y, p = labels[idx[r]], probs[idx[r]]
        expected = [roc_auc_score(y[:, j], p[:, j]) if 0 < y[:, j].sum() < n else math.nan for j in range(L)]
        np.testing.assert_allclose(aucs[r], expected, rtol=1e-12)
        pred = (p >= th).astype(np.uint8)
        np.testing.assert_allclose(f1s[r], f1_score(y, pred, average=None, zero_division=0), atol=1e-12)
        assert micros[r] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert np.isnan(aucs[:, 5]).any()  # the one-class case is exercised
    # one weighting of ones, either shape: the plain F1
    f1_rows, micro_rows = weighted_f1(probs, labels, th, np.ones((1, n)), resamples=True)
    f1_cells, micro_cells = weighted_f1(probs, labels, th, np.ones((n, L)))
    np.testing.assert_allclose(f1_rows[0], f1_cells, rtol=1e-12)
    assert micro_rows[0] == pytest.approx(micro_cells, rel=1e-12)
