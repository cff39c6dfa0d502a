"""Score an exported model (export.py) on labelled data: Kaggle's mean ROC AUC, per-label AUC, F1.

    python evaluate.py --model exports/mini --data data/sample/train.csv      # a Kaggle train.csv
    python evaluate.py --test test.csv --test_labels test_labels.csv          # Kaggle's test set
    python evaluate.py --test test.csv --test_labels test_labels.csv --submission submission.csv
    python evaluate.py --data labelled.csv --runtime onnxruntime-fp32         # a runtime of predict.py's

--model defaults to the newest folder under exports/, and the runtime to the one predict.py picks for
this CPU, as in predict.py, whose scoring this reuses (windows over long comments, max per label).
The test set's rows labelled -1 (not scored by Kaggle) are dropped from the metrics (data.read_test);
--submission writes every row of test.csv (or of --data) in Kaggle's submission format.
F1 is given at the export's per-label thresholds (tuned on validation) and at 0.5.
Figures from ../shared/data/jigsaw/train.csv are on a toxic-enriched subset (about 26% toxic against
9.58% in the full set): say so wherever they are quoted.
"""
import argparse
import math
import sys

from data import LABELS, read_csv, read_test
from errors import exit_on_error
from predict import PredictError, load_model, newest_export, score, write_submission


def report(m, thresholds, n_rows, source):
    """Lines for people: the metrics of metrics.evaluate, one label per row."""
    out = [f"{source}: {n_rows} rows", f"mean ROC AUC {m['aucroc_macro']:.4f}"
           + (f" (over the {m['auc_labels_defined']} labels with both classes)"
              if m["auc_labels_defined"] < len(LABELS) else "")]
    out.append(f"  {'label':<14} {'AUC':>7} {'threshold':>9}")
    for name, t in zip(LABELS, thresholds):
        auc = m[f"auc_{name}"]
        out.append(f"  {name:<14} {'n/a' if math.isnan(auc) else f'{auc:.4f}':>7} {t:>9.2f}")
    out.append(f"macro F1 {m['macro_f1_tuned']:.4f} at the thresholds, {m['macro_f1']:.4f} at 0.5")
    out.append(f"micro F1 {m['micro_f1_tuned']:.4f} at the thresholds, {m['micro_f1']:.4f} at 0.5")
    return "\n".join(out)


def run(model_dir, data=None, test=None, test_labels=None, submission=None, runtime="auto", batch_size=32):
    """Score and evaluate -> (metrics dict, probs of the scored rows, labels). Prints the report."""
    import numpy as np

    from metrics import evaluate
    model = load_model(model_dir, runtime)
    if list(model.labels) != list(LABELS):
        raise PredictError(f"{model_dir}: labels {model.labels} differ from this project's {list(LABELS)}")
    if data:
        ds = read_csv(data)
        everything, source = ds, data
    else:
        ds = read_test(test, test_labels)  # the scored rows only
        everything, source = (read_csv(test, labels=False) if submission else ds), test
    print(f"model: {model.path} on {model.runtime} ({model.why}); scoring {len(everything.texts)} rows",
          file=sys.stderr)
    probs_all = score(model, everything.texts, batch_size)
    if submission:
        write_submission(submission, everything.ids, model.labels, probs_all)
        print(f"wrote {len(everything.ids)} rows to {submission}", file=sys.stderr)
    row = {rid: i for i, rid in enumerate(everything.ids)}
    probs = probs_all[[row[rid] for rid in ds.ids]].astype(np.float64)
    m = evaluate(probs, ds.labels, model.thresholds)
    print(report(m, model.thresholds, len(ds.ids), source))
    val = model.meta.get("checkpoint", {}).get("validation_metrics", {}).get("aucroc_macro")
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
    p.add_argument("--batch_size", type=int, default=32, help="windows per onnxruntime call")
    args = p.parse_args(argv)
    if bool(args.data) == bool(args.test) or bool(args.test) != bool(args.test_labels):
        p.error("give --data CSV, or --test CSV with --test_labels CSV")
    with exit_on_error():
        if args.batch_size < 1:
            raise PredictError(f"--batch_size must be >= 1, got {args.batch_size}")
        run(args.model or newest_export(), args.data, args.test, args.test_labels, args.submission,
            args.runtime, args.batch_size)


if __name__ == "__main__":
    main()
