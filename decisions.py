"""Decisions at the deployment's base rates: importance weights, calibration, thresholds per policy.

The training file is toxic-enriched (26% toxic against 9.58% in Kaggle's full set), so F1-tuned thresholds
and raw sigmoid scores describe the wrong world. Everything here reweights the validation rows to the
rates of the community that will use the model (Kaggle's full-set rates by default), then
- fits a per-label calibration map (Platt: sigmoid(a * logit + b), monotone, so AUC is unchanged) so that
  a score of 0.8 means about 80% at those rates;
- picks per label the thresholds of three policies on the calibrated scores: f1 (the default), precision
  (the lowest threshold reaching a target precision: automatic action) and recall (the highest reaching
  a target recall: a review queue), each with its validation precision and recall.

    from decisions import apply_calibration, fit, parse_rates
    rates = parse_rates("kaggle", "--base_rates", names)             # or "toxic=0.2,threat=0.01"
    d = fit(logits, labels, names, rates, target_precision=0.9, target_recall=0.9)   # JSON-able dict
    probs = apply_calibration(logits, d["calibration"], names)
names: the label names of the columns (the checkpoint's). "thresholds" here are always on the calibrated scale.
"""
import math

import numpy as np

from common import UsageError, sigmoid
from metrics import calibration_errors, weighted_f1

# Positives per label in Kaggle's full train.csv (159,571 rows; ../shared/data/jigsaw/README.md): the rates
# of the data the competition was scored on, and the default deployment rates.
KAGGLE_RATES = {"toxic": 15294 / 159571, "severe_toxic": 1595 / 159571, "obscene": 8449 / 159571,
                "threat": 478 / 159571, "insult": 7877 / 159571, "identity_hate": 1405 / 159571}
GRID = np.round(np.arange(0.005, 0.9951, 0.005), 3)  # candidate thresholds on the calibrated scale
MIN_POSITIVES = 5  # fewer validation positives than this: no threshold is tuned, the label keeps 0.5
A_MIN, A_MAX = 1 / 16, 16  # bounds of the calibration slope (fit_platt); trained models land near 1


class RatesError(UsageError):
    """Bad base rates or policy targets: the message names the flag or key."""


# ----------------------------------------------------------------------------
# base rates and importance weights

def parse_rates(text, where, names):
    """"kaggle", "none" (no reweighting: the rows' own rates) or "label=rate,..." (labels not named keep
    Kaggle's rate) -> {label: rate}, or None for "none". A label Kaggle has no rate for, and none is given,
    keeps the rows' own rate (it is left out of the dict). where names the key or flag in errors."""
    if text == "none":
        return None
    rates = {n: KAGGLE_RATES[n] for n in names if n in KAGGLE_RATES}
    if text == "kaggle":
        return rates
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise RatesError(f"{where}: {part.strip()!r} is not label=rate with a label among {', '.join(names)} "
                             f"(or kaggle, or none)")
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if not 0 < rate < 1:
            raise RatesError(f"{where}: the rate of {name} must be a number in (0, 1), got {value.strip()!r}")
        rates[name] = rate
    return rates


def check_target(value, where):
    if not 0 < value < 1:
        raise RatesError(f"{where}: a target must be in (0, 1), got {value}")


def rate_weights(labels, names, rates):
    """(N, L) importance weights: label j's positives weigh rate_j / validation rate_j, its negatives
    (1 - rate_j) / (1 - validation rate_j), so the weighted rows have the deployment's rate per label.
    rates None: all ones. A label with no rate, or no positives (or no negatives) here, keeps weight 1."""
    y = labels.astype(bool)
    w = np.ones(labels.shape, dtype=np.float64)
    if rates is None:
        return w
    for j, name in enumerate(names):
        here = y[:, j].mean()
        if name in rates and 0 < here < 1:
            w[:, j] = np.where(y[:, j], rates[name] / here, (1 - rates[name]) / (1 - here))
    return w


# ----------------------------------------------------------------------------
# calibration (Platt scaling on the logit, weighted)

def log_loss(z, y, w, a, b):
    """Weighted log loss of sigmoid(a * z + b) against y, computed stably."""
    t = a * z + b
    return float(w @ (np.logaddexp(0, t) - y * t))


def newton(z, y, w, a, b, fit_a, iters=100):
    """Weighted logistic regression of y on a * z + b, a fixed unless fit_a -> (a, b): Newton steps, each
    halved until the loss falls enough (Armijo). Full steps alone overshoot from (1, 0) when the logits
    sit on one side of zero, as pos_weight leaves them, and run off to a useless slope."""
    loss = log_loss(z, y, w, a, b)
    for _ in range(iters):
        p = sigmoid(np.clip(a * z + b, -50, 50))
        r, h = w * (p - y), w * p * (1 - p) + 1e-12
        grad = np.array([r @ z if fit_a else 0.0, r.sum()])
        if fit_a:
            try:
                step = np.linalg.solve([[h @ (z * z), h @ z], [h @ z, h.sum()]], grad)
            except np.linalg.LinAlgError:  # logits that do not vary: no slope to fit
                return math.nan, math.nan
        else:
            step = np.array([0.0, grad[1] / h.sum()])
        t = 1.0
        while t > 1e-10 and log_loss(z, y, w, a - t * step[0], b - t * step[1]) > loss - 1e-4 * t * (grad @ step):
            t /= 2
        a, b = a - t * step[0], b - t * step[1]
        new = log_loss(z, y, w, a, b)
        if not np.isfinite([a, b]).all() or abs(loss - new) <= 1e-12 * max(abs(loss), 1.0):
            break
        loss = new
    return a, b


def fit_platt(z, y, w):
    """a, b minimising the weighted log loss of sigmoid(a * z + b) against y, with a in [A_MIN, A_MAX] ->
    (a, b). a > 0 keeps the map increasing (AUC unchanged); the bound stops a model whose logits barely
    vary (a few steps in, or anti-correlated on a tiny split) from being stretched by hundreds, which
    would blow int8's rounding up with it. On the bound, b alone is fitted."""
    a, b = newton(z, y, w, 1.0, 0.0, fit_a=True)
    if np.isfinite([a, b]).all() and A_MIN <= a <= A_MAX:
        return float(a), float(b)
    a = A_MAX if np.isfinite(a) and a > A_MAX else A_MIN
    mean_y = np.clip((w @ y) / w.sum(), 1e-6, 1 - 1e-6)
    start = np.log(mean_y / (1 - mean_y)) - a * (w @ z) / w.sum()  # the base rate at the mean logit
    a, b = newton(z, y, w, a, start, fit_a=False)
    return float(a), float(b if np.isfinite(b) else start)


def fit_calibration(logits, labels, names, weights):
    """Per-label Platt maps -> {"method": "platt", "a": {label: a}, "b": {label: b}}."""
    a, b = {}, {}
    for j, name in enumerate(names):
        y = labels[:, j].astype(np.float64)
        a[name], b[name] = fit_platt(logits[:, j].astype(np.float64), y, weights[:, j]) if 0 < y.sum() < len(y) \
            else (1.0, 0.0)
    return {"method": "platt", "a": a, "b": b}


def apply_calibration(logits, calibration, names):
    """(N, L) logits -> calibrated probabilities."""
    a, b = (np.array([calibration[k][n] for n in names]) for k in ("a", "b"))
    return sigmoid(np.asarray(logits, dtype=np.float64) * a + b)


def raw_thresholds(calibration, thresholds, names):
    """Thresholds on the calibrated scale -> the same decisions on the plain sigmoid of the logits:
    sigmoid(a * z + b) >= t exactly where sigmoid(z) >= sigmoid((logit(t) - b) / a), a > 0."""
    t = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-12, 1 - 1e-12)
    a, b = (np.array([calibration[k][n] for n in names]) for k in ("a", "b"))
    return sigmoid((np.log(t / (1 - t)) - b) / a)


# ----------------------------------------------------------------------------
# thresholds

def curves(p, y, w, grid=GRID):
    """Weighted true positives, predicted positives and positives at each threshold, and which rows each
    flags -> (G,), (G,), scalar, (N, G)."""
    pred = p[:, None] >= grid[None, :]                             # (N,1) >= (1,G) -> (N,G)
    return (w * y) @ pred, w @ pred, float(w @ y), pred


def tune_f1(p, w, grid=GRID):
    """The threshold maximising the F1 that the calibrated scores p themselves expect: a row counts p_i of
    a true positive (times its importance weight), so the curve does not hang on which few positives
    happen to sit near the threshold.

    Tuned on one half of the validation split and scored on the other (weighted to Kaggle's rates),
    this lost 0.026 macro F1 against the other half's own best thresholds; the argmax of the empirical
    F1 curve lost 0.041, its average over 200 bootstrap resamples 0.041, and the enriched-rate thresholds
    of before 0.068 (docs/experiments.md, 2026-12-02)."""
    pred = p[:, None] >= grid[None, :]                             # (N,1) >= (1,G) -> (N,G)
    tp, predicted, positives = (w * p) @ pred, w @ pred, w @ p     # expected counts at each threshold
    return float(grid[np.argmax(2 * tp / np.maximum(predicted + positives, 1e-12))])


def wilson_lower(rate, n, z=1.645):
    """One-sided 95% Wilson lower bound of a proportion observed as rate over n (effective) rows."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z2 = z * z / n
        return np.nan_to_num((rate + z2 / 2 - z * np.sqrt(rate * (1 - rate) / n + z2 / (4 * n))) / (1 + z2))


def tune_target(p, y, w, kind, target):
    """precision: the lowest threshold whose weighted precision reaches target with confidence; recall:
    the highest whose recall does -> threshold, or None where no threshold reaches it on these rows.

    "With confidence": the one-sided 95% Wilson lower bound, on the effective number of rows behind the
    estimate (Kish's, for weighted rows), reaches target. A precision of 1.0 from three lucky rows at the
    top of the scale is not a precision: tuned on one half of the validation split on point estimates, the
    precision policy for severe_toxic and threat reached 0.54 and 0.37 on the other half, against its 0.9
    target (docs/experiments.md, 2026-12-02)."""
    tp, predicted, positives, flagged = curves(p, y, w)
    if kind == "precision":
        rate, n = tp / np.maximum(predicted, 1e-300), predicted ** 2 / np.maximum((w ** 2) @ flagged, 1e-300)
        good = np.flatnonzero((predicted > 0) & (wilson_lower(rate, n) >= target))
        return float(GRID[good[0]]) if len(good) else None
    wy = w * y
    n = positives ** 2 / max(float(wy @ wy), 1e-300)                 # recall's rows: the positives
    good = np.flatnonzero(wilson_lower(tp / max(positives, 1e-300), n) >= target)
    return float(GRID[good[-1]]) if len(good) and positives > 0 else None


def precision_recall(p, y, w, threshold):
    """Weighted precision and recall of p >= threshold (None: never flagged) -> (precision, recall)."""
    positives = float(w @ y)
    if threshold is None:
        return None, (0.0 if positives else None)
    pred = p >= threshold
    tp, predicted = float(w @ (pred * y)), float(w @ pred)
    return (tp / predicted if predicted else None), (tp / positives if positives else None)


# ----------------------------------------------------------------------------
# everything at once

def fit(logits, labels, names, rates, target_precision=0.9, target_recall=0.9):
    """Calibration, the three policies and what they give on these rows, at rates (None: the rows' own) -> a
    JSON-able dict: {"base_rates", "calibration", "policies": {name: {"target"?, "thresholds", "precision",
    "recall", "unreached"?: {label: why its threshold is null}}}, "validation": summary at the f1 thresholds}."""
    w = rate_weights(labels, names, rates)
    calibration = fit_calibration(logits, labels, names, w)
    probs = apply_calibration(logits, calibration, names)
    y = labels.astype(np.float64)
    policies = {"f1": {}, "precision": {"target": target_precision}, "recall": {"target": target_recall}}
    for name, policy in policies.items():
        policy.update(thresholds={}, precision={}, recall={})
        for j, label in enumerate(names):
            if y[:, j].sum() < MIN_POSITIVES:
                t = 0.5 if name == "f1" else None
                why = f"fewer than {MIN_POSITIVES} validation positives"
            elif name == "f1":
                t = tune_f1(probs[:, j], w[:, j])
            else:
                t = tune_target(probs[:, j], y[:, j], w[:, j], name, policy["target"])
                why = f"no threshold reaches {name} {policy['target']} with 95% confidence on validation"
            if t is None:
                policy.setdefault("unreached", {})[label] = why
            policy["thresholds"][label] = t
            policy["precision"][label], policy["recall"][label] = precision_recall(probs[:, j], y[:, j], w[:, j], t)
    used = {n: float(rates[n]) if rates is not None and n in rates else float(y[:, j].mean())
            for j, n in enumerate(names)}
    s = summary(probs, labels, w, [policies["f1"]["thresholds"][n] for n in names])
    validation = {"rows": len(labels), "macro_f1": s["macro_f1"], "micro_f1": s["micro_f1"],
                  **{k: dict(zip(names, map(float, s[k]))) for k in ("f1", "brier", "ece")}}
    return {"base_rates": {"reweighted": rates is not None, "rates": used}, "calibration": calibration,
            "policies": policies, "validation": validation}


def own_rate_thresholds(logits, labels, names):
    """The f1 policy fitted on these rows as they are (no reweighting), on the plain sigmoid's scale -> (L,): the
    "tuned" thresholds training reports at and val_predictions.npz keeps, which compare.py recomputes."""
    fitted = fit(logits, labels, names, None)
    return raw_thresholds(fitted["calibration"], [fitted["policies"]["f1"]["thresholds"][n] for n in names], names)


def summary(probs, labels, weights, thresholds):
    """What the decisions give on these rows under these weights -> {"macro_f1", "micro_f1", and per
    label "f1", "brier", "ece" as (L,) arrays}."""
    f1, micro = weighted_f1(probs, labels, thresholds, weights)
    brier, ece = calibration_errors(probs, labels, weights)
    return {"macro_f1": float(f1.mean()), "micro_f1": micro, "f1": f1, "brier": brier, "ece": ece}
