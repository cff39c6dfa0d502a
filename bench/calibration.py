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
  for today's thresholds, the argmax of the weighted F1 curve, and decisions.tune_f1;
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
from data import LABELS  # noqa: E402
from metrics import tune_thresholds  # noqa: E402


def load_run(folder):
    path = os.path.join(folder, "val_predictions.npz")
    try:
        with np.load(path) as z:
            p = np.clip(z["probs"].astype(np.float64), 1e-7, 1 - 1e-7)  # float32 rounds the extremes to 0 or 1
            logits = z["logits"] if "logits" in z.files else np.log(p) - np.log1p(-p)
            return logits.astype(np.float64), z["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise BenchError(f"{path}: not a readable val_predictions.npz ({type(e).__name__}: {e})") from None


def oracle(p, y, w):
    """Per label, the grid threshold with the best weighted F1 on these very rows."""
    out = []
    for j in range(len(LABELS)):
        tp, predicted, positives, _ = decisions.curves(p[:, j], y[:, j].astype(float), w[:, j])
        out.append(decisions.GRID[np.argmax(2 * tp / np.maximum(predicted + positives, 1e-12))])
    return np.array(out)


def one_way(z, y, fit_rows, score_rows, rates):
    """Fit on fit_rows, score on score_rows at rates -> {name: per-label F1 or ECE (L,)}."""
    w_fit, w_score = decisions.rate_weights(y[fit_rows], rates), decisions.rate_weights(y[score_rows], rates)
    raw_fit, raw_score = 1 / (1 + np.exp(-z[fit_rows])), 1 / (1 + np.exp(-z[score_rows]))
    before = tune_thresholds(raw_fit, y[fit_rows])  # what export.json shipped before 2026-12-02
    fitted = decisions.fit(z[fit_rows], y[fit_rows], rates)
    cal_fit = decisions.apply_calibration(z[fit_rows], fitted["calibration"])
    cal_score = decisions.apply_calibration(z[score_rows], fitted["calibration"])
    after = [fitted["policies"]["f1"]["thresholds"][n] for n in LABELS]
    ys = y[score_rows]
    return {"f1_before": decisions.weighted_f1(raw_score, ys, w_score, before)[0],
            "f1_after": decisions.weighted_f1(cal_score, ys, w_score, after)[0],
            "f1_argmax": decisions.weighted_f1(cal_score, ys, w_score, oracle(cal_fit, y[fit_rows], w_fit))[0],
            "f1_oracle": decisions.weighted_f1(cal_score, ys, w_score, oracle(cal_score, ys, w_score))[0],
            "ece_before": decisions.calibration_errors(raw_score, ys, w_score)[1],
            "ece_after": decisions.calibration_errors(cal_score, ys, w_score)[1]}


def cross_fit(z, y, rates, splits, seed=0):
    """one_way both ways over `splits` random halvings -> {name: mean per-label figure (L,)}."""
    rng, parts = np.random.default_rng(seed), []
    for _ in range(splits):
        perm = rng.permutation(len(y))
        a, b = perm[: len(y) // 2], perm[len(y) // 2:]
        parts += [one_way(z, y, a, b, rates), one_way(z, y, b, a, rates)]
    return {k: np.mean([p[k] for p in parts], 0) for k in parts[0]}


def run_tables(name, z, y, splits):
    """Markdown tables and JSON figures of one run."""
    at = {"enriched": cross_fit(z, y, None, splits), "kaggle": cross_fit(z, y, decisions.KAGGLE_RATES, splits)}
    rows = []
    for rates, f in at.items():
        for what in ("f1_before", "f1_after", "ece_before", "ece_after"):
            rows.append([rates, what.replace("_", " "), *(f"{v:.3f}" for v in f[what]), f"{f[what].mean():.3f}"])
    md = [f"### {name}: {len(y):,} validation rows, cross-fitted over {splits} random half-splits",
          markdown_table(["rates", "figure", *LABELS, "mean"], rows), ""]
    k = at["kaggle"]
    lost = {m: float(k["f1_oracle"].mean() - k[f"f1_{m}"].mean()) for m in ("before", "argmax", "after")}
    md += ["Half-split threshold test at Kaggle's rates: macro F1 lost against the scored half's own best "
           f"thresholds (oracle {k['f1_oracle'].mean():.3f}): today's enriched thresholds {lost['before']:.3f}, "
           f"the weighted F1 argmax {lost['argmax']:.3f}, decisions.tune_f1 {lost['after']:.3f}.", ""]
    fitted = decisions.fit(z, y, decisions.KAGGLE_RATES)
    prow = []
    for pname, pol in fitted["policies"].items():
        for n in LABELS:
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
