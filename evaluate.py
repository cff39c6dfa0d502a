"""Score an exported model (export.py) on labelled data: Kaggle's mean ROC AUC, per-label AUC, F1.

    python evaluate.py --model exports/mini --data data/sample/train.csv      # a Kaggle train.csv
    python evaluate.py --test test.csv --test_labels test_labels.csv          # Kaggle's test set
    python evaluate.py --test test.csv --test_labels test_labels.csv --submission submission.csv
    python evaluate.py --data labelled.csv --runtime onnxruntime-fp32         # a runtime of predict.py's
    python evaluate.py --data ours.csv --base_rates none --figure ours.png    # your community's own rows

--model defaults to the newest folder under exports/, and the runtime to the one predict.py picks for
this CPU; the scores come from scoring.py, as predict.py's do (windows over long comments, max per label),
for the export's own labels (the CSV needs a column for each).
The test set's rows labelled -1 (not scored by Kaggle) are dropped from the metrics (data.read_test);
--submission writes every row of test.csv (or of --data) in Kaggle's submission format.
F1 is given at the export's served thresholds (its default policy's, tuned on validation) and at 0.5. The rows are first
reweighted to --base_rates (decisions.py; default: the rates the export was calibrated for, Kaggle's
full-set rates unless set, which leaves rows of a natural-rate set such as Kaggle's test about as they
are; an export made with base_rates none, and --base_rates none, take the rows as they are). At those rates: F1, Brier score and expected calibration
error (ECE, 10 equal-width bins) per label, and a reliability figure (--figure, PNG): a calibrated
model's points lie on the diagonal. AUC never depends on the rates.
Figures from ../shared/data/jigsaw/train.csv are on a toxic-enriched subset (about 26% toxic against
9.58% in the full set): say so wherever they are quoted.
"""
import argparse
import math
import sys

import numpy as np

from classifier import resolve_thresholds
from common import UsageError, atomic_write, exit_on_error
from data import read_csv, read_test, write_submission
from decisions import parse_rates, rate_weights, summary
from metrics import compute_metrics, reliability_bins
from scoring import load_model, newest_export, score_texts


def report(m, names, thresholds, n_rows, source, at_rates):
    """Lines for people: compute_metrics' per label, and F1, Brier and ECE at the base rates (at_rates)."""
    out = [f"{source}: {n_rows} rows", f"mean ROC AUC {m['aucroc_macro']:.4f}"
           + (f" (over the {m['auc_labels_defined']} labels with both classes)"
              if m["auc_labels_defined"] < len(names) else ""), f"at base rates: {at_rates['rates']}"]
    out.append(f"  {'label':<14} {'AUC':>7} {'threshold':>9} {'F1':>7} {'Brier':>7} {'ECE':>7}")
    for j, (name, t) in enumerate(zip(names, thresholds)):
        auc = m[f"auc_{name}"]
        out.append(f"  {name:<14} {'n/a' if math.isnan(auc) else f'{auc:.4f}':>7} {t:>9.3f} {at_rates['f1'][j]:>7.4f} "
                   f"{at_rates['brier'][j]:>7.4f} {at_rates['ece'][j]:>7.4f}")
    out.append(f"macro F1 {at_rates['macro_f1']:.4f} at the thresholds and base rates; as the rows are: "
               f"{m['macro_f1_tuned']:.4f} at the thresholds, {m['macro_f1']:.4f} at 0.5")
    out.append(f"micro F1 {at_rates['micro_f1']:.4f} at the thresholds and base rates; as the rows are: "
               f"{m['micro_f1_tuned']:.4f} at the thresholds, {m['micro_f1']:.4f} at 0.5")
    return "\n".join(out)


def at_base_rates(probs, labels, names, thresholds, rates):
    """decisions.summary of probs with labels reweighted to rates (None: as they are), and the weights."""
    w = rate_weights(labels, names, rates)
    return {**summary(probs, labels, w, thresholds), "weights": w,
            "rates": "as the rows are" if rates is None else ", ".join(f"{n} {r:.4g}" for n, r in rates.items())}


def reliability_figure(path, probs, labels, names, weights, rates_text):
    """Per label, the weighted fraction of positives against the mean score in each equal-width bin (dot size:
    the bin's share of rows), and the diagonal a calibrated model lies on -> PNG at path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: only for --figure
    from matplotlib.figure import Figure
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4 * cols, 3.75 * rows))
    FigureCanvasAgg(fig)  # Agg: no display needed
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for j, (ax, name) in enumerate(zip(axes, names)):
        wb, wp, wy = reliability_bins(probs[:, j], labels[:, j], weights[:, j])
        seen = wb > 0
        mean_p, frac = wp[seen] / wb[seen], wy[seen] / wb[seen]
        ax.plot([0, 1], [0, 1], color="0.7", lw=1)
        ax.plot(mean_p, frac, "-", color="C0", lw=1)
        ax.scatter(mean_p, frac, s=10 + 300 * wb[seen] / wb.sum(), color="C0", zorder=3)
        ax.set_title(name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean score in bin")
        ax.set_ylabel("fraction positive")
    fig.suptitle(f"reliability at base rates: {rates_text}", fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.9, bottom=0.08, hspace=0.4, wspace=0.25)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))


def run(model_dir, data=None, test=None, test_labels=None, submission=None, runtime="auto", batch_size=32,
        base_rates=None, figure=None):
    """Score and evaluate -> (metrics dict, probs of the scored rows, labels). Prints the report; draws the
    reliability figure where figure is a path. base_rates None: the rates the export was calibrated for."""
    model = load_model(model_dir, runtime)
    names, thresholds = model.labels, resolve_thresholds(model.meta)
    if base_rates is None:
        base = model.meta["base_rates"]
        rates = base["rates"] if base["reweighted"] else None
    else:
        rates = parse_rates(base_rates, "--base_rates", names)
    if data:
        ds = read_csv(data, names)
        everything, source = ds, data
    else:
        ds = read_test(test, test_labels, names)  # the scored rows only
        everything, source = (read_csv(test, names=()) if submission else ds), test
    print(f"model: {model.path} on {model.runtime} ({model.why}); scoring {len(everything.texts)} rows",
          file=sys.stderr)
    probs_all = score_texts(model, everything.texts, batch_size)
    if submission:
        write_submission(submission, names, [(everything.ids, probs_all)])
        print(f"wrote {len(everything.ids)} rows to {submission}", file=sys.stderr)
    row = {rid: i for i, rid in enumerate(everything.ids)}
    probs = probs_all[[row[rid] for rid in ds.ids]].astype(np.float64)
    m = compute_metrics(probs, ds.labels, names, thresholds)
    at_rates = at_base_rates(probs, ds.labels, names, thresholds, rates)
    m.update({"macro_f1_at_rates": at_rates["macro_f1"], "micro_f1_at_rates": at_rates["micro_f1"]})
    m.update({f"{k}_{n}_at_rates": float(v) for k in ("f1", "brier", "ece") for n, v in zip(names, at_rates[k])})
    print(report(m, names, thresholds, len(ds.ids), source, at_rates))
    if figure:
        reliability_figure(figure, probs, ds.labels, names, at_rates["weights"], at_rates["rates"])
        print(f"wrote {figure}", file=sys.stderr)
    val = model.meta["checkpoint"]["validation_metrics"].get("aucroc_macro")
    if val is not None:
        print(f"(validation mean ROC AUC at export: {val:.4f})")
    return m, probs, ds.labels


def main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate an exported model on labelled data (see the docstring).")
    p.add_argument("--model", help="export folder (default: the newest under exports/)")
    p.add_argument("--data", help="labelled CSV in Kaggle's train.csv format")
    p.add_argument("--test", help="Kaggle's test.csv (with --test_labels)")
    p.add_argument("--test_labels", help="Kaggle's test_labels.csv; rows labelled -1 are dropped")
    p.add_argument("--submission", help="write a Kaggle submission CSV of every row scored")
    p.add_argument("--runtime", default="auto", help="as predict.py's: auto, openvino, onnxruntime-int8 or "
                                                     "onnxruntime-fp32")
    p.add_argument("--batch_size", type=int, default=32, help="windows per model call")
    p.add_argument("--base_rates", help="reweight the rows to these label rates: kaggle, none (as they are) or "
                                        "toxic=0.2,...; default: the export's")
    p.add_argument("--figure", help="also draw the reliability figure into this PNG")
    args = p.parse_args(argv)
    if bool(args.data) == bool(args.test) or bool(args.test) != bool(args.test_labels):
        p.error("give --data CSV, or --test CSV with --test_labels CSV")
    with exit_on_error():
        if args.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {args.batch_size}")
        run(args.model or newest_export(), args.data, args.test, args.test_labels, args.submission,
            args.runtime, args.batch_size, args.base_rates, args.figure)


if __name__ == "__main__":
    main()
