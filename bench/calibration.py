"""Are the decisions right at the deployment's base rates? Before (raw sigmoid, thresholds tuned for F1 on
the enriched split) against after (decisions.py: calibrated and tuned at the rates), out of sample.

    python bench/calibration.py runs/mini-25 runs/mini_average-25        # run folders of train.py
    python bench/calibration.py --quick                                   # a tiny run on the sample (CI)

Reads each run's val_predictions.npz (logits, labels). Every figure is cross-fitted: the validation rows
are split in random halves, everything (calibration, thresholds) is fitted on one half and scored on the
other, both ways, over --splits random splits, and averaged. Tables:
- F1 and ECE per label, before and after, at the enriched rates (the split as it is) and at Kaggle's
  full-set rates (the rows reweighted, decisions.rate_weights); "after" is fitted for the rates it is
  scored at;
- the half-split threshold test: macro F1 lost against the scored half's own best thresholds (the oracle)
  for the thresholds of before (BEFORE_GRID), the argmax of the weighted F1 curve, and decisions.tune_f1;
- the policies export.py would ship (fitted on the whole split at Kaggle's rates), with their validation
  precision and recall.
../shared/data/jigsaw/train.csv is toxic-enriched (about 26% toxic against 9.58% in Kaggle's full set).
Writes bench/results/calibration.{md,json}.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SHARED_NOTE, BenchError, add_common_args, main_guard, markdown_table, train_tiny,  # noqa: E402
                    write_results)

import numpy as np  # noqa: E402

import decisions  # noqa: E402
from common import LABELS  # noqa: E402
from metrics import calibration_errors, weighted_f1  # noqa: E402

# What export.json shipped before 2026-12-02 (the "before" side): per label, the threshold on this grid with the
# best F1 of the plain sigmoid on the validation rows as they are; a label with fewer positives keeps 0.5.
BEFORE_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)
BEFORE_MIN_POSITIVES = 10


def load_run(folder):
    """A run folder's val_predictions.npz -> (logits (N, L) float64, labels (N, L), label names)."""
    path = os.path.join(folder, "val_predictions.npz")
    try:
        with np.load(path) as z:
            p = np.clip(z["probs"].astype(np.float64), 1e-7, 1 - 1e-7)  # float32 rounds the extremes to 0 or 1
            logits = z["logits"] if "logits" in z.files else np.log(p) - np.log1p(-p)
            # runs from before label_names was saved trained the default label set
            names = [str(n) for n in z["label_names"]] if "label_names" in z.files else list(LABELS)
            labels = z["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise BenchError(f"{path}: not a readable val_predictions.npz ({type(e).__name__}: {e})") from None
    if not (logits.shape == labels.shape and labels.ndim == 2 and labels.shape[1] == len(names)):
        raise BenchError(f"{path}: logits {logits.shape}, labels {labels.shape} and {len(names)} label names disagree")
    return logits.astype(np.float64), labels, names


def before_thresholds(p, y):
    """The thresholds of before 2026-12-02, on the plain sigmoid p: per label the BEFORE_GRID value with the best
    F1 on these rows as they are (ties: the one nearest 0.5); 0.5 under BEFORE_MIN_POSITIVES positives."""
    out = np.full(y.shape[1], 0.5)
    for j in range(y.shape[1]):
        pos = y[:, j].astype(bool)
        if pos.sum() < BEFORE_MIN_POSITIVES:
            continue
        pred = p[:, j][:, None] >= BEFORE_GRID[None, :]  # (N,1) >= (1,G) -> (N,G)
        f1 = 2 * (pred & pos[:, None]).sum(0) / (pred.sum(0) + pos.sum())
        best = np.flatnonzero(f1 == f1.max())
        out[j] = BEFORE_GRID[best[np.argmin(np.abs(BEFORE_GRID[best] - 0.5))]]
    return out


def oracle(p, y, w):
    """Per label, the grid threshold with the best weighted F1 on these very rows."""
    out = []
    for j in range(y.shape[1]):
        tp, predicted, positives, _ = decisions.curves(p[:, j], y[:, j].astype(float), w[:, j])
        out.append(decisions.GRID[np.argmax(2 * tp / np.maximum(predicted + positives, 1e-12))])
    return np.array(out)


def one_way(z, y, names, fit_rows, score_rows, rates):
    """Fit on fit_rows, score on score_rows at rates -> {name: per-label F1 or ECE (L,)}."""
    w_fit = decisions.rate_weights(y[fit_rows], names, rates)
    w_score = decisions.rate_weights(y[score_rows], names, rates)
    raw_fit, raw_score = 1 / (1 + np.exp(-z[fit_rows])), 1 / (1 + np.exp(-z[score_rows]))
    before = before_thresholds(raw_fit, y[fit_rows])  # what export.json shipped before 2026-12-02
    fitted = decisions.fit(z[fit_rows], y[fit_rows], names, rates)
    cal_fit = decisions.apply_calibration(z[fit_rows], fitted["calibration"], names)
    cal_score = decisions.apply_calibration(z[score_rows], fitted["calibration"], names)
    after = [fitted["policies"]["f1"]["thresholds"][n] for n in names]
    ys = y[score_rows]
    return {"f1_before": weighted_f1(raw_score, ys, before, w_score)[0],
            "f1_after": weighted_f1(cal_score, ys, after, w_score)[0],
            "f1_argmax": weighted_f1(cal_score, ys, oracle(cal_fit, y[fit_rows], w_fit), w_score)[0],
            "f1_oracle": weighted_f1(cal_score, ys, oracle(cal_score, ys, w_score), w_score)[0],
            "ece_before": calibration_errors(raw_score, ys, w_score)[1],
            "ece_after": calibration_errors(cal_score, ys, w_score)[1]}


def cross_fit(z, y, names, rates, splits, seed=0):
    """one_way both ways over `splits` random halvings -> {name: mean per-label figure (L,)}."""
    rng, parts = np.random.default_rng(seed), []
    for _ in range(splits):
        perm = rng.permutation(len(y))
        a, b = perm[: len(y) // 2], perm[len(y) // 2:]
        parts += [one_way(z, y, names, a, b, rates), one_way(z, y, names, b, a, rates)]
    return {k: np.mean([p[k] for p in parts], 0) for k in parts[0]}


def run_tables(name, z, y, names, splits):
    """Markdown tables and JSON figures of one run."""
    at = {"enriched": cross_fit(z, y, names, None, splits),
          "kaggle": cross_fit(z, y, names, decisions.KAGGLE_RATES, splits)}
    rows = []
    for rates, f in at.items():
        for what in ("f1_before", "f1_after", "ece_before", "ece_after"):
            rows.append([rates, what.replace("_", " "), *(f"{v:.3f}" for v in f[what]), f"{f[what].mean():.3f}"])
    md = [f"### {name}: {len(y):,} validation rows, cross-fitted over {splits} random half-splits",
          markdown_table(["rates", "figure", *names, "mean"], rows), ""]
    k = at["kaggle"]
    lost = {m: float(k["f1_oracle"].mean() - k[f"f1_{m}"].mean()) for m in ("before", "argmax", "after")}
    md += ["Half-split threshold test at Kaggle's rates: macro F1 lost against the scored half's own best "
           f"thresholds (oracle {k['f1_oracle'].mean():.3f}): the enriched thresholds of before {lost['before']:.3f}, "
           f"the weighted F1 argmax {lost['argmax']:.3f}, decisions.tune_f1 {lost['after']:.3f}.", ""]
    fitted = decisions.fit(z, y, names, decisions.KAGGLE_RATES)
    prow = []
    for pname, pol in fitted["policies"].items():
        for n in names:
            t, p, r = pol["thresholds"][n], pol["precision"][n], pol["recall"][n]
            prow.append([pname + (f" ({pol['target']})" if "target" in pol else ""), n,
                         "not reached" if t is None else f"{t:.3f}", "-" if p is None else f"{p:.3f}",
                         "-" if r is None else f"{r:.3f}"])
    md += [f"Policies at Kaggle's rates (fitted on all {len(y):,} rows, as export.py does):",
           markdown_table(["policy", "label", "threshold", "precision", "recall"], prow), ""]
    return md, {"cross_fitted": {r: {k2: v.tolist() for k2, v in f.items()} for r, f in at.items()},
                "half_split_lost": lost, "policies": fitted["policies"], "calibration": fitted["calibration"]}


def run(argv=None):
    p = argparse.ArgumentParser(description="Decisions before and after calibration (see the docstring).")
    p.add_argument("runs", nargs="*", help="run folders with val_predictions.npz")
    p.add_argument("--splits", type=int, default=20, help="random half-splits (each fitted both ways)")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:  # a tiny run on the sample data, 2 splits
        import tempfile
        args.runs, args.splits = [os.path.dirname(train_tiny(tempfile.mkdtemp()))], 2
    if not args.runs:
        raise BenchError("give run folders (or --quick)")
    md, data = [SHARED_NOTE, ""], {"runs": {}}
    for folder in args.runs:
        lines, figures = run_tables(folder, *load_run(folder), args.splits)
        md += lines
        data["runs"][folder] = figures
    write_results("calibration", "\n".join(md), data, args.out, quick=args.quick)


if __name__ == "__main__":
    main_guard(run)
