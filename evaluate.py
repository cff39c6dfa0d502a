"""Score an exported model (export.py) on labelled data: Kaggle's mean ROC AUC, per-label AUC, F1.

    python evaluate.py --model exports/mini --data data/sample/train.csv      # a Kaggle train.csv
    python evaluate.py --test test.csv --test_labels test_labels.csv          # Kaggle's test set
    python evaluate.py --test test.csv --test_labels test_labels.csv --submission submission.csv
    python evaluate.py --data labelled.csv --runtime onnxruntime-fp32         # a runtime of predict.py's
    python evaluate.py --data ours.csv --base_rates none --figure ours.png    # your community's own rows
    python evaluate.py --bias data/fairness/identity_eval.csv --identities data/fairness/eval_terms.txt
    python evaluate.py --bias civil_comments.csv --target_column target --figure bias.png   # identity columns
    python evaluate.py --functional data/fairness/functional_eval.csv                 # per behaviour

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
--bias CSV: bias across identities (fairness.py) of the --target label's score (default toxic), against the
CSV's --target_column (default the same name; 0/1 or a fraction, >= 0.5 counts as toxic), with identities from
--identities (a term list, one a line, "category<TAB>term" or the term alone, matched as whole words,
case-insensitive) or else columns (--identity_columns, default Jigsaw 2019's; >= 0.5 is a member): per
identity subgroup, BPSN and BNSP AUC and the false-positive rate on its non-toxic rows at the served
decisions (a row is flagged when
any label but obscene is decided), their power means (p = -5), Jigsaw 2019's final metric, the rate on
non-toxic rows that mention no identity, and --figure: the worst identities. --functional CSV (comment_text,
hateful, behaviour): the share of each behaviour's cases decided right. data/make_fairness.py writes both
sets; their templates and terms are never trained on.
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
from fairness import attacks_flagged, bias_figures, functional_table, read_bias_rows, read_functional, read_terms
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


# ----------------------------------------------------------------------------
# fairness: identities and functional behaviours


def bias_report(model, path, target="toxic", identities=None, batch_size=32, figure=None, target_column=None,
                identity_columns=None):
    """Score the rows, print the worst identities and the summary -> {"summary", "identities", "toxic_recall"}."""
    names, thresholds = model.labels, resolve_thresholds(model.meta)
    if target not in names:
        raise UsageError(f"--target {target!r}: not a label of {model.path}; it has {', '.join(names)}")
    texts, toxic, groups = read_bias_rows(path, target_column or target, read_terms(identities) if identities else None,
                                          identity_columns)
    probs = score_texts(model, texts, batch_size)
    result = bias_figures(probs, names, thresholds, target, toxic, groups)
    rows, s, recall, background = (result[k] for k in ("identities", "summary", "toxic_recall", "background_fpr"))
    print(f"{path}: {len(texts)} rows, {len(rows)} identities, score {target}; a row is flagged when any label but "
          f"obscene is decided (served thresholds)")
    print(f"  {'identity':<18} {'rows':>5} {'subgroup':>8} {'BPSN':>7} {'BNSP':>7} {'FPR':>6}")
    for r in rows[:10]:
        print(f"  {r['identity']:<18} {r['rows']:>5} {r['subgroup_auc']:>8.4f} {r['bpsn_auc']:>7.4f} "
              f"{r['bnsp_auc']:>7.4f} {r['fpr']:>6.1%}")
    print(f"power means (p=-5): subgroup {s['subgroup_power_mean']:.4f}, BPSN {s['bpsn_power_mean']:.4f}, BNSP "
          f"{s['bnsp_power_mean']:.4f}; overall AUC {s['overall_auc']:.4f}; final metric {s['final_metric']:.4f}")
    print(f"flagged: non-toxic identity rows at most {s['max_fpr']:.1%} per identity, non-toxic rows without one "
          f"{background:.1%}; toxic identity rows caught {recall:.1%}")
    if figure:
        bias_figure(figure, rows[:15], background)
        print(f"wrote {figure}", file=sys.stderr)
    return result


def bias_figure(path, rows, background):
    """The worst identities by BPSN: their BPSN AUC and their false-positive rate beside the background's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: only for --figure
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 0.35 * len(rows) + 1.5))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))[::-1]
    left.barh(y, [r["bpsn_auc"] for r in rows], color="C0")
    left.set(yticks=y, yticklabels=[r["identity"] for r in rows], xlim=(0.5, 1), xlabel="BPSN AUC")
    right.barh(y, [r["fpr"] for r in rows], color="C3")
    right.axvline(background, color="0.3", ls=":", label="rows without an identity")
    right.set(xlim=(0, 1), xlabel="non-toxic rows flagged")
    right.legend(fontsize=8)
    fig.suptitle("worst identities by BPSN AUC", fontsize=10)
    fig.subplots_adjust(left=0.16, right=0.98, top=0.9, bottom=0.1, wspace=0.08)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))


def functional_report(model, path, batch_size=32):
    """Each behaviour's share of cases decided right, printed -> functional_table's rows."""
    texts, hateful, behaviours = read_functional(path)
    probs = score_texts(model, texts, batch_size)
    flagged = attacks_flagged(probs, model.labels, resolve_thresholds(model.meta))
    table = functional_table(behaviours, hateful, flagged)
    print(f"{path}: {len(texts)} cases; a case is flagged when any label but obscene is decided")
    for t in table:
        print(f"  {t['behaviour']:<22} {'hateful' if t['hateful'] else 'not hateful':<12} {t['cases']:>4} cases  "
              f"{t['correct']:>6.1%} right")
    return table


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
    p.add_argument("--figure", help="also draw the reliability figure (with --bias: the worst identities) into "
                                    "this PNG")
    p.add_argument("--bias", help="a CSV of comments with a --target column and identities: bias per identity")
    p.add_argument("--target", default="toxic", help="with --bias: the label scored and its column (default toxic)")
    p.add_argument("--target_column", help="with --bias: the CSV's column of toxicity, 0/1 or a fraction "
                                           "(default: --target; Civil Comments calls it target)")
    p.add_argument("--identities", help="with --bias: a term list (one a line) instead of identity columns")
    p.add_argument("--identity_columns", help="with --bias: the identity columns, a,b,c (default: Jigsaw 2019's "
                                              "that the CSV has)")
    p.add_argument("--functional", help="a CSV of comment_text, hateful (0/1), behaviour: right per behaviour")
    args = p.parse_args(argv)
    kaggle = bool(args.data) + bool(args.test)
    if kaggle + bool(args.bias) + bool(args.functional) != 1 or bool(args.test) != bool(args.test_labels):
        p.error("give one of --data CSV, --test CSV with --test_labels CSV, --bias CSV or --functional CSV")
    with exit_on_error():
        if args.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {args.batch_size}")
        model_dir = args.model or newest_export()
        if args.bias or args.functional:
            model = load_model(model_dir, args.runtime)
            print(f"model: {model.path} on {model.runtime} ({model.why})", file=sys.stderr)
            if args.bias:
                bias_report(model, args.bias, args.target, args.identities, args.batch_size, args.figure,
                            args.target_column, args.identity_columns and args.identity_columns.split(","))
            else:
                functional_report(model, args.functional, args.batch_size)
            return
        run(model_dir, args.data, args.test, args.test_labels, args.submission, args.runtime, args.batch_size,
            args.base_rates, args.figure)


if __name__ == "__main__":
    main()
