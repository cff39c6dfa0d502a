"""Does the fine-tuned encoder beat TF-IDF + logistic regression within the same CPU time?

    python bench/quality.py --minutes 60                       # configs/mini.json against TF-IDF+LR
    python bench/quality.py --minutes 15 30 60 --config configs/mini.json configs/mini_average.json
    python bench/quality.py --minutes 60 --dropout 0.1         # any other flag is a config override: --key value
    python bench/quality.py --quick                            # tiny model on the sample data, seconds (CI)
    python bench/quality.py --runs runs/quality/mini-60min     # score finished runs instead of training

Both sides use the validation split the config defines (val_fraction, split_seed) of --data
(default ../shared/data/jigsaw/train.csv: 44,073 real Kaggle rows, toxic-enriched, ~26% toxic
against 9.58% in the full set). Each model trains for at most M minutes of wall time, or its
config's epochs where they end sooner (1.5 in the mini configs: more overfits these 39,665 rows), its
learning-rate schedule sized to whichever ends first (it reaches zero there, warmup 3 steps per
minute of budget), and is scored once at the end. F1 is given at 0.5 and at thresholds tuned on the
same validation predictions, for both sides alike. Each model's margin over TF-IDF+LR comes with a
95% paired-bootstrap interval over the validation rows (both scored on the same resampled rows), so
a target missed or met by less than the noise of 4,400 rows says so. --runs scores run folders that
train.py already wrote (their val_predictions.npz, on the same split). Prints two Markdown tables
(the metrics; tuned F1 per label with its margins) and the verdicts;
writes JSON to --out (default runs/quality/quality.json, beside the run folders; the figures the
docs quote are committed in bench/results/, so name a file there only to replace them on purpose).
Every config, with --data and each --minutes, is checked before anything trains; bad input (a flag,
the data, a run folder) prints one line naming it and exits 2.
Fairness, beside the Jigsaw AUC for every model run: its best.pt is exported (fp32) and scored on the project's
own identity set (bias per identity: BPSN and BNSP power means, the worst BPSN, the worst and the background
false-positive rates at the served decisions, toxic identity rows caught) and functional set (the share right
per behaviour), data/fairness/ (python data/make_fairness.py; never trained on): a third table.
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ROOT, BenchError, main_guard, tiny_encoder  # noqa: E402  (puts ROOT on sys.path)

import numpy as np  # noqa: E402

from common import FAIRNESS, LABELS, UsageError, atomic_write  # noqa: E402
from compare import bootstrap, percentile_interval  # noqa: E402
from data import read_csv, split_indices  # noqa: E402
from decisions import own_rate_thresholds  # noqa: E402
from metrics import compute_metrics  # noqa: E402

RESAMPLES = 1000


def tfidf_baseline(texts, labels, train_idx, val_idx, max_features=200_000):
    """Word 1-2-grams + char_wb 2-5-grams, sublinear tf, one C=4 logistic regression per label."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.time()
    word = TfidfVectorizer(ngram_range=(1, 2), max_features=max_features, sublinear_tf=True,
                           strip_accents="unicode", token_pattern=r"\w{1,}")
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), max_features=max_features,
                           sublinear_tf=True, strip_accents="unicode")
    tr, va = [texts[i] for i in train_idx], [texts[i] for i in val_idx]
    x_tr = hstack([word.fit_transform(tr), char.fit_transform(tr)]).tocsr()
    x_va = hstack([word.transform(va), char.transform(va)]).tocsr()
    probs = np.zeros((len(val_idx), len(LABELS)))
    for j in range(len(LABELS)):
        clf = LogisticRegression(C=4, solver="liblinear", max_iter=1000)
        clf.fit(x_tr, labels[train_idx, j])
        probs[:, j] = clf.predict_proba(x_va)[:, 1]
    y = labels[val_idx]
    thresholds = tuned_thresholds(probs, y)
    row = {"name": "TF-IDF+LR", "minutes": None, "train_seconds": time.time() - t0,
           "samples_seen": len(train_idx), "metrics": compute_metrics(probs, y, LABELS, thresholds)}
    return row, probs, thresholds


def tuned_thresholds(probs, y):
    """Thresholds tuned on these validation predictions as train.py tunes a model's (its val_predictions.npz
    "thresholds"): decisions.own_rate_thresholds, the f1 policy of decisions.fit on the rows' own rates,
    mapped back to the scale of probs. Both sides of every table are tuned alike."""
    p = np.clip(probs.astype(np.float64), 1e-15, 1 - 1e-15)  # LR's 0 and 1 as finite logits
    return own_rate_thresholds(np.log(p) - np.log1p(-p), y, LABELS)


def load_predictions(path, val_idx, val_labels):
    """A finished run's val_predictions.npz (path: the file or its run folder), checked against the split."""
    f = path if path.endswith(".npz") else os.path.join(path, "val_predictions.npz")
    if not os.path.isfile(f):
        raise BenchError(f"{f}: no such file (train.py writes it at each evaluation)")
    try:  # dict of the arrays, so a truncated or foreign file fails here, once, in one line
        with np.load(f) as npz:
            z = {k: npz[k] for k in ("rows", "labels", "probs", "thresholds")}
            names = [str(n) for n in npz["label_names"]] if "label_names" in npz.files else list(LABELS)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise BenchError(f"{f}: not a readable val_predictions.npz ({e})") from None
    if names != list(LABELS):  # the split's label columns, and TF-IDF+LR's, are the default set
        raise BenchError(f"{f}: its labels are {', '.join(names)}; this benchmark compares {', '.join(LABELS)}")
    if not (np.array_equal(z["rows"], val_idx) and np.array_equal(z["labels"], val_labels)):
        raise BenchError(f"{f}: its validation rows are not this split's (check --data, val_fraction, split_seed)")
    return z


def margin_intervals(z, base_probs, base_thresholds, resamples=RESAMPLES, seed=0):
    """95% paired-bootstrap intervals of (model - TF-IDF+LR) mean AUC and tuned macro F1.

    compare.py's bootstrap, with the two as one-run groups: both are scored on the same resampled
    rows, so the luck of which rows were drawn cancels; thresholds stay where they were tuned.
    """
    groups = [{"letter": "model", "runs": [z]},
              {"letter": "tfidf", "runs": [{"probs": base_probs, "thresholds": base_thresholds}]}]
    draws, _ = bootstrap(groups, z["labels"], resamples, seed)
    return {k: percentile_interval(draws["model"][k] - draws["tfidf"][k]) for k in ("aucroc_macro", "macro_f1_tuned")}


def fairness_scores(run_dir, tmp):
    """Export the run's best.pt (fp32, 200 rows of runtime checks) into tmp and score the identity and functional
    sets through it -> {"bias": bias_report's summary and recall, "functional": {behaviour: share right}}, or
    None where the run folder has no best.pt."""
    import contextlib
    import io

    import evaluate
    import export
    from scoring import load_model
    best = os.path.join(run_dir, "best.pt")
    if not os.path.isfile(best):
        print(f"note: {run_dir}: no best.pt; fairness not scored", file=sys.stderr)
        return None
    folder = os.path.join(tmp, os.path.basename(os.path.normpath(run_dir)))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            export.export(best, folder, check_rows=200)
    except UsageError as e:  # e.g. its encoder folder is gone (a --quick run's): the rest of the row stands
        print(f"note: {run_dir}: not exported ({e}); fairness not scored", file=sys.stderr)
        return None
    model = load_model(folder, "onnxruntime-fp32")
    bias = evaluate.bias_report(model, os.path.join(FAIRNESS, "identity_eval.csv"), "toxic",
                                os.path.join(FAIRNESS, "eval_terms.txt"))
    functional = evaluate.functional_report(model, os.path.join(FAIRNESS, "functional_eval.csv"))
    return {"bias": {**bias["summary"], "toxic_recall": bias["toxic_recall"],
                     "worst": [{k: r[k] for k in ("identity", "bpsn_auc", "fpr")} for r in bias["identities"][:10]]},
            "functional": {r["behaviour"]: r["correct"] for r in functional}}


def fairness_table(rows):
    head = ["setup", "BPSN pm", "BNSP pm", "min BPSN", "max FPR", "FPR no identity", "toxic caught",
            "neutral/positive right", "obfuscated right", "functional mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        f = r.get("fairness")
        if not f:
            continue
        b, fn = f["bias"], f["functional"]
        mention = np.mean([fn.get(k, np.nan) for k in ("identity_neutral", "identity_positive")])
        lines.append(f"| {r['name']} | {b['bpsn_power_mean']:.4f} | {b['bnsp_power_mean']:.4f} | {b['min_bpsn']:.4f} | "
                     f"{b['max_fpr']:.1%} | {b['background_fpr']:.1%} | {b['toxic_recall']:.1%} | {mention:.1%} | "
                     f"{fn.get('obfuscated_hate', np.nan):.1%} | {np.mean(list(fn.values())):.1%} |")
    return "\n".join(lines)


def run_budget(run_json):
    """max_minutes from a run.json -> minutes, or 0 where it names none. It only labels the row, so a
    run.json from a train.py older than the key is shown without a budget, with a warning."""
    if not os.path.isfile(run_json):
        return 0
    try:
        with open(run_json) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise BenchError(f"{run_json}: unreadable ({e})") from None
    cfg = meta.get("config") if isinstance(meta, dict) else None
    minutes = cfg.get("max_minutes") if isinstance(cfg, dict) else None
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)):
        print(f"warning: {run_json}: no config.max_minutes; the run's budget is shown as '-'", file=sys.stderr)
        return 0
    return minutes


def finished_run(path, val_idx, val_labels):
    """A --runs row: metrics from the run's predictions; budget from its run.json where there is one."""
    folder = os.path.dirname(path) if path.endswith(".npz") else path
    z = load_predictions(path, val_idx, val_labels)
    minutes = run_budget(os.path.join(folder, "run.json"))
    return {"name": os.path.basename(os.path.normpath(folder)), "minutes": minutes or None, "train_seconds": None,
            "samples_seen": None, "out_dir": folder,
            "metrics": compute_metrics(z["probs"], z["labels"], LABELS, z["thresholds"])}, z


def run_argv(config, minutes, data, out_root, extra):
    """train.py's arguments for one budgeted run: the early check and the training build the same config."""
    name = os.path.splitext(os.path.basename(config))[0]
    out_dir = os.path.join(out_root, f"{name}-{minutes:g}min")  # the default: an --out_dir in extra wins
    return [config, "--data_path", data, "--max_minutes", str(minutes),
            "--warmup_steps", str(max(1, round(3 * minutes))), "--eval_every", str(10**9), "--out_dir", out_dir,
            *extra]


def check_configs(configs, minutes_list, data, out_root, overrides):
    """Every config as training will build it (--data, each budget, the overrides) -> the first one:
    a bad key, value or budget fails now, not after TF-IDF+LR has trained."""
    from config import load_config
    return [load_config(run_argv(c, m, data, out_root, overrides))[0] for c in configs for m in minutes_list][0]


def train_for(config, minutes, data, out_root, extra):
    """Train one config for a wall-time budget with the project's own loop; score its best checkpoint."""
    from config import load_config
    from train import train

    name = os.path.splitext(os.path.basename(config))[0]
    cfg, _ = load_config(run_argv(config, minutes, data, out_root, extra))
    result = train(cfg)
    return {"name": name, "minutes": minutes, "train_seconds": result["train_seconds"],
            "samples_seen": result["samples_seen"], "steps": result["steps"], "out_dir": cfg.out_dir,
            "precision": result["precision"], "peak_rss_mb": result["peak_rss_mb"], "metrics": result["best"]}


def trained(configs, minutes_list, data, out_root, extra, val_idx, val_labels):
    """Each config trained for each budget, in turn: yields (row, its validation predictions)."""
    for config in configs:
        for minutes in minutes_list:
            row = train_for(config, minutes, data, out_root, extra)
            yield row, load_predictions(row["out_dir"], val_idx, val_labels)


def table(rows):
    head = (["setup", "budget", "mean AUC", "AUC margin 95% CI"] + list(LABELS) +
            ["macro F1 @0.5", "macro F1 tuned", "micro F1 @0.5", "micro F1 tuned", "train time", "samples seen",
             "samples/s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows[0]["metrics"]
    for r in rows:
        m = r["metrics"]
        delta = "" if r is rows[0] else f" ({m['aucroc_macro'] - base['aucroc_macro']:+.4f})"
        ci = r.get("margin_ci", {}).get("aucroc_macro")
        cells = [r["name"], f"{r['minutes']:g} min" if r["minutes"] else "-", f"{m['aucroc_macro']:.4f}{delta}",
                 f"{ci[0]:+.4f} to {ci[1]:+.4f}" if ci else "-"]
        cells += [f"{m[f'auc_{n}']:.4f}" for n in LABELS]
        cells += [f"{m[k]:.4f}" for k in ("macro_f1", "macro_f1_tuned", "micro_f1", "micro_f1_tuned")]
        known = r["train_seconds"] is not None  # unknown for --runs rows
        cells += [f"{r['train_seconds'] / 60:.1f} min" if known else "-",
                  f"{r['samples_seen']:,}" if known else "-",
                  f"{r['samples_seen'] / r['train_seconds']:.1f}" if known and r["minutes"] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def f1_table(rows):
    """Tuned F1 per label, and each model's margin over TF-IDF+LR: where the macro F1 target is won or lost."""
    head = ["setup", "budget"] + list(LABELS) + ["macro F1 tuned"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base, keys = rows[0]["metrics"], [f"f1_{n}_tuned" for n in LABELS] + ["macro_f1_tuned"]
    for r in rows:
        m = r["metrics"]
        cells = [f"{m[k]:.3f}" + ("" if r is rows[0] else f" ({m[k] - base[k]:+.3f})") for k in keys]
        lines.append("| " + " | ".join([r["name"], f"{r['minutes']:g} min" if r["minutes"] else "-"] + cells) + " |")
    return "\n".join(lines)


def verdict(rows):
    """The issue's targets, checked for every model row against the TF-IDF row, with the margins' intervals."""
    base, out = rows[0]["metrics"], []
    for r in rows[1:]:
        m, ci = r["metrics"], r["margin_ci"]
        margin = {k: m[k] - base[k] for k in ("aucroc_macro", "macro_f1_tuned")}
        checks = [("mean AUC >= TF-IDF + 0.010", margin["aucroc_macro"] >= 0.010, "aucroc_macro"),
                  ("no label below TF-IDF", all(m[f"auc_{n}"] >= base[f"auc_{n}"] for n in LABELS), None),
                  ("macro F1 tuned >= TF-IDF + 0.10", margin["macro_f1_tuned"] >= 0.10, "macro_f1_tuned")]
        budget = f" {r['minutes']:g} min" if r["minutes"] else ""  # --runs rows may not know theirs
        out.append(f"- {r['name']}{budget}: " + "; ".join(
            f"{name}: {'met' if ok else 'NOT met'}" +
            (f" (margin {margin[k]:+.4f}, 95% CI {ci[k][0]:+.4f} to {ci[k][1]:+.4f})" if k else "")
            for name, ok, k in checks))
    return "\n".join(out)


def default_out(quick):
    """Beside the run folders, in git-ignored runs/: bench/results/ holds the figures the docs quote."""
    return os.path.join(ROOT, "runs", "quality", "quality.quick.json" if quick else "quality.json")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[60.0])
    p.add_argument("--config", nargs="+", default=[os.path.join(ROOT, "configs", "mini.json")])
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "jigsaw", "train.csv"))
    p.add_argument("--out", help="JSON results (default runs/quality/quality.json; quality.quick.json with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny random model on the sample data (CI)")
    p.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="score these finished train.py runs (folders "
                   "or val_predictions.npz) against TF-IDF+LR instead of training; --config gives the split")
    return p.parse_known_args(argv)  # the rest override every config, as in train.py


def names(overrides, key):
    return any(o.split("=")[0] == f"--{key}" for o in overrides)  # --key X or --key=X


def check_flags(args, overrides):
    """What the flags alone can tell, before any file is read."""
    if not all(math.isfinite(m) and m > 0 for m in args.minutes):  # 0 would mean no budget at all
        raise BenchError(f"--minutes must be > 0, got {' '.join(f'{m:g}' for m in args.minutes)}")
    for key, flag in (("data_path", "--data"), ("max_minutes", "--minutes")):
        if names(overrides, key):  # TF-IDF+LR and the split read --data; the schedule is sized to --minutes
            raise BenchError(f"--{key}: give it as {flag} here (TF-IDF+LR and every run share it)")
    if names(overrides, "out_dir") and len(args.config) * len(args.minutes) > 1 and not args.runs:
        raise BenchError("--out_dir names one run folder: give one --config and one --minutes with it")


def run(argv=None):
    """Flags, data and configs checked first; --quick's tiny encoder and runs live in a folder removed at the end."""
    args, overrides = parse(argv)
    max_features = 200_000
    if args.quick:  # everything small: proves the code path, says nothing about quality
        args.data, args.minutes, max_features = os.path.join(ROOT, "data", "sample", "train.csv"), [0.05], 5000
        args.config = [os.path.join(ROOT, "configs", "mini.json")]
    check_flags(args, overrides)
    if not os.path.isfile(args.data):
        raise BenchError(f"{args.data}: no such file (the real data; see README: Data)")
    out_root, args.out = os.path.join(ROOT, "runs", "quality"), args.out or default_out(args.quick)
    cfg0 = check_configs(args.config, args.minutes, args.data, out_root, overrides)  # the split comes from it
    if not args.quick:
        return measure(args, overrides, overrides, out_root, cfg0, max_features)
    tmp = tempfile.mkdtemp(prefix="quality-quick-")
    try:  # the tiny encoder, its token cache and (without --out_dir) the run go with the folder
        extra = ["--encoder", tiny_encoder(os.path.join(tmp, "tiny")), "--aim", "false",
                 "--cache_dir", os.path.join(tmp, "cache"), *overrides]
        measure(args, overrides, extra, os.path.join(tmp, "runs"), cfg0, max_features)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(args, overrides, extra, out_root, cfg0, max_features):
    """TF-IDF+LR, then each trained (or --runs) model against it: the table, the verdicts, --out."""
    ds = read_csv(args.data)
    train_idx, val_idx = split_indices(ds.labels, cfg0.val_fraction, cfg0.split_seed)
    print(f"data {args.data}: {len(train_idx)} train / {len(val_idx)} val rows (split_seed {cfg0.split_seed})")
    # bad --runs paths fail here, before TF-IDF+LR trains
    finished = [finished_run(path, val_idx, ds.labels[val_idx]) for path in args.runs or []]
    base, base_probs, base_thresholds = tfidf_baseline(ds.texts, ds.labels, train_idx, val_idx, max_features)
    rows = [base]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    exports = tempfile.mkdtemp(prefix="quality-exports-")
    for row, z in finished or trained(args.config, args.minutes, args.data, out_root, extra, val_idx,
                                        ds.labels[val_idx]):
        row["margin_ci"] = margin_intervals(z, base_probs, base_thresholds)
        row["fairness"] = fairness_scores(row["out_dir"], exports)
        rows.append(row)
        text = json.dumps({"data": args.data, "val_rows": len(val_idx), "overrides": overrides, "rows": rows,
                           "resamples": RESAMPLES, "machine": f"{os.cpu_count()} cores"}, indent=1, default=float)
        atomic_write(args.out, lambda f: f.write(text), mode="w")  # after every run: a crash keeps what was measured
    shutil.rmtree(exports, ignore_errors=True)
    print("\n" + (f"config overrides: {' '.join(overrides)}\n\n" if overrides else "") + table(rows) + "\n\n" +
          f1_table(rows) + "\n\n" + fairness_table(rows) + "\n\n" + verdict(rows))
    print(f"\nwrote {args.out}")


def main(argv=None):
    main_guard(run, argv)


if __name__ == "__main__":
    main()
