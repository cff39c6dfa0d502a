"""Compare finished runs: group them by experiment (config less the seed), summarise each group
over its seeds, and test group against group with a paired bootstrap over validation examples.

    for s in 0 1 2; do python train.py configs/base.json --seed $s --out_dir runs/base_s$s; done  # and average
    python compare.py runs/base_s0 runs/base_s1 runs/base_s2 runs/average_s0 runs/average_s1 runs/average_s2
    python compare.py runs/*_s? --out runs/compare --resamples 2000 --seed 0
Prints a Markdown report and writes it to OUT/results.md, draws OUT/pooling.png, and attaches that
figure to each run's Aim run (runs trained with aim false are skipped with a note). All runs must
share the same validation rows (train.py's split_seed and data), else nothing can be paired.
"""
import argparse
import itertools
import json
import os
import sys
import time
import zipfile
from dataclasses import fields

import numpy as np

from common import UsageError, atomic_write, exit_on_error, markdown_table
from config import Config
from decisions import own_rate_thresholds
from metrics import compute_metrics, weighted_f1, weighted_label_aucs
from tracking import held_by_live_process

# Keys that say where and how often things are written or run, not what is learnt, so runs that
# differ only there are replicates. eval_every is among them as agreed, though it changes which
# steps can become best.pt; seed is what the replicates vary.
IGNORED_KEYS = ("seed", "out_dir", "aim", "aim_repo", "cache_dir", "log_every", "eval_every", "device",
                "eval_batch_size", "dist_timeout_s")
# A key added to Config after a run was trained is missing from its run.json; new keys default to the
# behaviour from before they existed, so the default is what that run trained with. A key Config no longer has
# (a run from an older commit) stays in the run's experiment: such runs are never pooled with newer ones.
CONFIG_DEFAULTS = {f.name: f.default for f in fields(Config)}
NPZ_KEYS = ("ids", "rows", "probs", "logits", "labels", "label_names")
CHUNK = 250  # resamples per block: (250, N) float64 weights stay ~9 MB at N = 4,400
MIN_RESAMPLES = 1000  # fewer leave the 2.5% tails resting on a couple dozen draws
AIM_NAME = "compare_pooling"


class CompareError(UsageError):
    """Bad input: the message names the run folder, file or flag."""


# ----------------------------------------------------------------------------
# loading and grouping


def load_run(path):
    """One run folder -> dict of its config, Aim link and validation predictions (checked)."""
    npz_path, json_path = os.path.join(path, "val_predictions.npz"), os.path.join(path, "run.json")
    if not os.path.isdir(path):
        raise CompareError(f"{path}: not a folder (pass train.py run folders, its out_dir)")
    if not os.path.isfile(npz_path):
        raise CompareError(f"{path}: no val_predictions.npz (not a train.py run folder, or it never evaluated)")
    try:
        with open(json_path) as f:
            meta = json.load(f)
        config = dict(meta["config"])
    except OSError as e:
        raise CompareError(f"{json_path}: cannot read ({e.strerror})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CompareError(f"{json_path}: not train.py's run.json ({type(e).__name__}: {e})") from None
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            run = {k: z[k] for k in NPZ_KEYS if k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CompareError(f"{npz_path}: cannot read ({type(e).__name__}: {e})") from None
    missing = [k for k in NPZ_KEYS if k not in run]
    if missing:
        raise CompareError(f"{npz_path}: missing {', '.join(missing)}")
    n, names = len(run["ids"]), [str(x) for x in run["label_names"]]
    if (run["probs"].shape != (n, len(names)) or run["labels"].shape != (n, len(names))
            or run["rows"].shape != (n,) or run["logits"].shape != (n, len(names))):
        raise CompareError(f"{npz_path}: arrays disagree in shape (ids {n}, probs {run['probs'].shape}, "
                           f"labels {run['labels'].shape}, logits {run['logits'].shape})")
    if not (np.isfinite(run["probs"]).all() and np.isfinite(run["logits"]).all()):
        raise CompareError(f"{npz_path}: probs or logits have non-finite values")
    key = {k: v for k, v in {**CONFIG_DEFAULTS, **config}.items() if k not in IGNORED_KEYS}
    # What the run actually trained with: a bf16 request can fall back to fp32, and world_size
    # multiplies the global batch, so runs that differ there are different experiments.
    key.update(precision_effective=meta.get("precision_effective"), world_size=meta.get("world_size"))
    run.update(path=path, config=config, key=json.dumps(key, sort_keys=True), seed=config.get("seed"),
               aim_hash=meta.get("aim_hash"), aim_repo=meta.get("aim_repo"), probs=run["probs"].astype(np.float64),
               names=names)
    # tuned here, not read from the npz: runs of every commit then share one tuner (it changed on 2026-12-07)
    run["thresholds"] = own_rate_thresholds(run["logits"].astype(np.float64), run["labels"], names)
    run["metrics"] = compute_metrics(run["probs"], run["labels"], names, run["thresholds"])
    return run


def check_same_rows(runs):
    """Pairing needs identical validation rows, in the same order, with the same labels."""
    ref = runs[0]
    for field in ("label_names", "ids", "rows", "labels"):
        bad = [r["path"] for r in runs[1:] if not np.array_equal(r[field], ref[field])]
        if bad:
            raise CompareError(f"{', '.join(bad)}: validation {field} differ from {ref['path']}'s "
                               f"({len(ref['ids'])} rows there); runs on different splits or data cannot be paired")


def group_runs(runs):
    """Runs with the same key form a group, in order of first appearance, named by the keys that differ."""
    by_key = {}
    for r in runs:
        by_key.setdefault(r["key"], []).append(r)
    configs = [json.loads(k) for k in by_key]
    differing = [k for k in sorted(set().union(*configs)) if len({json.dumps(c.get(k)) for c in configs}) > 1]
    groups = []
    for i, members in enumerate(by_key.values()):
        seen = {}
        for r in members:  # also catches one folder given twice
            if r["seed"] in seen:
                raise CompareError(f"{r['path']}: same experiment and seed {r['seed']} as {seen[r['seed']]} "
                                   f"(one run twice, or a copy); a repeated seed would be counted twice")
            seen[r["seed"]] = r["path"]
        # paths and hub names read best by their last part (encoder, data_path)
        name = ", ".join(f"{k}={os.path.basename(str(configs[i].get(k, '<missing>')).rstrip('/'))}"
                         for k in differing or ["pooling", "encoder"])
        letter = chr(ord("A") + i) if i < 26 else f"G{i + 1}"
        for r in members:
            r["label"] = f"{letter} seed {r['seed']}"
        groups.append({"letter": letter, "name": name, "runs": members})
    return groups


# ----------------------------------------------------------------------------
# bootstrap


def bootstrap(groups, labels, resamples, seed):
    """Paired bootstrap over validation rows -> ({letter: per-resample group metrics}, resamples that lost a label).

    Every run is scored on the same resampled rows (the pairing), and per resample a group's
    value is the mean over its seeds. A resample is kept as counts (how often each row was
    drawn), which weight the metrics exactly as duplicated rows would. A label with one class in
    a resample has no AUC there: it is skipped in that resample's mean AUC (the same label for
    every run, since labels are shared), never redrawn; macro F1 counts it as 0 (zero_division=0).
    """
    rng = np.random.default_rng(seed)
    n, n_labels = labels.shape
    aucs = {g["letter"]: np.zeros((resamples, n_labels)) for g in groups}  # summed over seeds
    f1s = {g["letter"]: np.zeros(resamples) for g in groups}
    for start in range(0, resamples, CHUNK):
        r = min(CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(r, n))
        counts = np.bincount((idx + n * np.arange(r)[:, None]).ravel(), minlength=r * n).reshape(r, n)  # (r,N)
        for g in groups:
            for run in g["runs"]:
                aucs[g["letter"]][start:start + r] += weighted_label_aucs(run["probs"], labels, counts)
                f1s[g["letter"]][start:start + r] += weighted_f1(run["probs"], labels, run["thresholds"], counts,
                                                                     resamples=True)[0].mean(1)
    draws = {}
    for g in groups:
        label_auc = aucs[g["letter"]] / len(g["runs"])  # (R,L), nan where the label had one class
        draws[g["letter"]] = {"label_auc": label_auc, "aucroc_macro": nanmean(label_auc, 1),
                              "macro_f1_tuned": f1s[g["letter"]] / len(g["runs"])}
    defined = (0 < labels.sum(0)) & (labels.sum(0) < n)  # labels with an AUC on all rows
    skipped = int(np.isnan(draws[groups[0]["letter"]]["label_auc"][:, defined]).any(1).sum())
    return draws, skipped


def nanmean(x, axis):
    """Mean over the finite values; nan (no warning) where there are none."""
    ok = np.isfinite(x)
    return np.where(ok.any(axis), np.where(ok, x, 0).sum(axis) / np.maximum(ok.sum(axis), 1), np.nan)


def percentile_interval(draws):
    """95% percentile interval over the resamples where the value exists."""
    draws = draws[np.isfinite(draws)]
    return tuple(np.percentile(draws, [2.5, 97.5])) if len(draws) else (np.nan, np.nan)


def pair_rows(groups, draws):
    """Each pair of groups: (A, B, metric, A - B on all rows, 95% interval of A - B)."""
    rows = []
    for a, b in itertools.combinations(groups, 2):
        for metric, key in (("mean AUC", "aucroc_macro"), ("macro F1 tuned", "macro_f1_tuned")):
            d = np.mean([r["metrics"][key] for r in a["runs"]]) - np.mean([r["metrics"][key] for r in b["runs"]])
            rows.append((a["letter"], b["letter"], metric, d,
                         *percentile_interval(draws[a["letter"]][key] - draws[b["letter"]][key])))
    return rows


# ----------------------------------------------------------------------------
# report, figure, Aim


def pm(values):
    """'mean ± std' over seeds (sample std, ddof=1); the mean alone for one seed."""
    v = np.asarray([x for x in values if x == x], dtype=float)  # x == x drops nan (an undefined AUC)
    return "n/a" if len(v) == 0 else f"{v.mean():.4f}" if len(v) == 1 else f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def report(groups, names, n_rows, data_path, pairs, resamples, seed, skipped):
    out = [f"# Run comparison: {sum(len(g['runs']) for g in groups)} runs in {len(groups)} groups", "",
           f"Validation: {n_rows} rows of {data_path}, identical in every run."]
    if os.path.basename(os.path.dirname(os.path.abspath(data_path))) == "jigsaw":
        out[-1] += " The shared Jigsaw file is toxic-enriched (about 26% toxic against 9.58% in Kaggle's full set)."
    out += ["", "## Groups", ""] + markdown_table(["group", "differs by", "seeds", "runs"], [
        [g["letter"], g["name"], ", ".join(str(r["seed"]) for r in g["runs"]), ", ".join(r["path"] for r in g["runs"])]
        for g in groups])
    keys = [("aucroc_macro", "mean AUC"), ("macro_f1", "macro F1 @0.5"), ("micro_f1", "micro F1 @0.5"),
            ("macro_f1_tuned", "macro F1 tuned"), ("micro_f1_tuned", "micro F1 tuned")]
    out += ["", "## Per group: mean ± std over seeds", ""] + markdown_table(["group", "n"] + [h for _, h in keys], [
        [g["letter"], len(g["runs"])] + [pm([r["metrics"][k] for r in g["runs"]]) for k, _ in keys] for g in groups])
    out += ["", "Per-label AUC:", ""] + markdown_table(["group"] + list(names), [
        [g["letter"]] + [pm([r["metrics"][f"auc_{n}"] for r in g["runs"]]) for n in names] for g in groups])
    if pairs:
        out += ["", f"## Group against group: paired bootstrap, {resamples} resamples (seed {seed})", ""]
        out += markdown_table(["pair", "metric", "difference", "95% interval", "excludes 0?"], [
            [f"{a} − {b}", metric, f"{d:+.4f}", f"[{lo:+.4f}, {hi:+.4f}]",
             f"yes: {a if lo > 0 else b} is higher" if lo > 0 or hi < 0 else "no: not distinguishable"]
            for a, b, metric, d, lo, hi in pairs])
    out += ["", "Notes:", "- ± is the standard deviation over seeds (ddof=1); one seed shows the value alone.",
            "- Every run's predictions come from its best checkpoint, chosen by mean AUC on these same rows.",
            "- Tuned thresholds are each run's f1 policy fitted on these same validation rows as they are "
            "(decisions.own_rate_thresholds, from the logits in val_predictions.npz), "
            "so tuned F1 is optimistic; the bootstrap keeps them fixed, leaving threshold selection out of the interval."]
    if pairs:
        out += [f"- Bootstrap: {resamples} resamples of the {n_rows} rows with replacement, the same resampled rows "
                "for every run (the pairing); per resample a group's value is the mean over its seeds; the interval "
                "is the 2.5 and 97.5 percentiles of the differences. It covers the sampling of validation examples "
                "for these trained seeds, not the spread of a new seed (see ±).",
                f"- A label with one class in a resample is skipped in that resample's mean AUC ({skipped} of "
                f"{resamples} resamples skipped one); macro F1 counts it as 0 (zero_division=0), as metrics.weighted_f1."]
    return "\n".join(out) + "\n"


def make_figure(groups, names, draws, best, labels):
    """Per-label AUC per group with bootstrap intervals and seed dots, and ROC curves of the two best runs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: imported where the figure is drawn
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    cols = min(3, len(names))
    rows = -(-len(names) // cols)  # ROC panels, cols to a row
    fig = Figure(figsize=(13, 4 + 3 * rows))
    FigureCanvasAgg(fig)  # Agg: no display needed, PNG out
    # fixed margins: constrained layout would take ~2 s of a 2-core machine per drawing
    grid = fig.add_gridspec(1 + rows, cols, height_ratios=[1.3] + [1] * rows, left=0.06, right=0.98, top=0.93,
                            bottom=0.06, hspace=0.45, wspace=0.2)
    ax = fig.add_subplot(grid[0, :])
    x, width = np.arange(len(names)), 0.8 / len(groups)
    for i, g in enumerate(groups):
        xs = x - 0.4 + width * (i + 0.5)
        seeds = np.array([[r["metrics"][f"auc_{n}"] for n in names] for r in g["runs"]])  # (S,L)
        mean = seeds.mean(0)
        lo_hi = np.array([percentile_interval(draws[g["letter"]]["label_auc"][:, j]) for j in range(len(names))])
        ok = np.isfinite(mean) & np.isfinite(lo_hi).all(1)
        ax.errorbar(xs[ok], mean[ok], yerr=[mean[ok] - lo_hi[ok, 0], lo_hi[ok, 1] - mean[ok]], fmt="o", capsize=4,
                    color=f"C{i}", label=f"{g['letter']}: {g['name']} ({len(g['runs'])} seeds)")
        for row in seeds:
            ax.plot(xs, row, ".", color=f"C{i}", alpha=0.4)
    ax.set_xticks(x, names)
    ax.set_ylabel("validation ROC AUC")
    ax.set_title("Per-label AUC: mean over seeds, 95% paired-bootstrap interval over examples; small dots: seeds")
    ax.legend(fontsize=8)
    color = {g["letter"]: f"C{i}" for i, g in enumerate(groups)}  # a group keeps its colour in every panel
    for j, name in enumerate(names):
        ax = fig.add_subplot(grid[1 + j // cols, j % cols])
        ax.plot([0, 1], [0, 1], ":", color="grey")
        two_classes = 0 < labels[:, j].sum() < len(labels)
        for r in best if two_classes else []:
            fpr, tpr, _ = roc_curve(labels[:, j], r["probs"][:, j])
            ax.plot(fpr, tpr, color=color[r["label"].split()[0]], label=f"{r['label']} (AUC {r['metrics'][f'auc_{name}']:.3f})")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"ROC {name}" + ("" if two_classes else ": one class only, no curve"))
        ax.set(xlabel="false positive rate", ylabel="true positive rate")
    fig.suptitle(f"{len(labels)} validation rows. ROC panels: the {len(best)} best run(s) by mean validation AUC")
    return fig


def attach_to_aim(runs, png_path, out_dir):
    """Track the figure in each run's Aim run. Never fatal: a failure is one warning line."""
    image = None
    for r in runs:
        repo = r["aim_repo"]
        if not r["aim_hash"]:
            print(f"note: {r['path']}: no aim_hash in run.json (aim was off); figure not attached", file=sys.stderr)
        elif not repo or not os.path.isdir(os.path.join(repo, ".aim")):  # aim.Run would create a new repo there
            print(f"note: {r['path']}: aim repo {repo!r} not found (relative to the current folder); "
                  f"figure not attached", file=sys.stderr)
        elif held_by_live_process(repo, r["aim_hash"]):  # opening it would drop a live training's lock
            print(f"note: {r['path']}: its Aim run is open in a live training; figure not attached", file=sys.stderr)
        else:
            try:
                import aim  # here: ~1.5 s that runs without Aim should not pay
                if image is None:  # the PNG drawn once; aim.Image(fig) would draw the figure again
                    image = aim.Image(png_path)
                run = aim.Run(run_hash=r["aim_hash"], repo=repo)
                try:
                    run.track(image, name=AIM_NAME, context={"compare": os.path.abspath(out_dir)})
                finally:  # release the run's lock even when tracking failed
                    run.close()
            except Exception as e:
                print(f"warning: {r['path']}: aim attach failed ({type(e).__name__}: {e}); figure not attached",
                      file=sys.stderr)


# ----------------------------------------------------------------------------


def compare(paths, out_dir, resamples, seed):
    """Everything main() does; returns the Markdown text."""
    if resamples < MIN_RESAMPLES:
        raise CompareError(f"--resamples must be >= {MIN_RESAMPLES}, got {resamples}")
    runs = [load_run(p) for p in paths]
    check_same_rows(runs)
    groups = group_runs(runs)
    labels = runs[0]["labels"]
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise CompareError(f"--out {out_dir}: cannot create the folder ({e.strerror})") from None

    t0 = time.time()
    draws, skipped = bootstrap(groups, labels, resamples, seed)
    print(f"bootstrap: {resamples} resamples x {len(runs)} runs x {labels.shape[1]} labels on {len(labels)} rows "
          f"in {time.time() - t0:.1f} s", file=sys.stderr)
    names = runs[0]["names"]
    text = report(groups, names, len(labels), runs[0]["config"].get("data_path", "?"), pair_rows(groups, draws),
                  resamples, seed, skipped)
    atomic_write(os.path.join(out_dir, "results.md"), lambda f: f.write(text), mode="w")
    # The two best runs; with several groups, the best of each of the two best groups, so the ROC
    # panels set one pooling against the other rather than two seeds of the same one.
    ranked = sorted(runs, key=lambda r: -np.nan_to_num(r["metrics"]["aucroc_macro"], nan=-1))
    tops = [next(r for r in ranked if any(r is x for x in g["runs"])) for g in groups]
    best = sorted(tops, key=lambda r: next(i for i, x in enumerate(ranked) if x is r))[:2] if len(groups) > 1 \
        else ranked[:2]
    png_path = os.path.join(out_dir, "pooling.png")
    figure = make_figure(groups, names, draws, best, labels)
    atomic_write(png_path, lambda f: figure.savefig(f, format="png", dpi=100))
    attach_to_aim(runs, png_path, out_dir)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description="Compare train.py runs: per-group summaries and paired bootstrap.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="train.py run folders (out_dir)")
    p.add_argument("--out", default="runs/compare", help="folder for results.md and pooling.png")
    p.add_argument("--resamples", type=int, default=1000, help=f"bootstrap resamples (>= {MIN_RESAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = p.parse_args(argv)
    with exit_on_error():
        print(compare(args.runs, args.out, args.resamples, args.seed), end="")


if __name__ == "__main__":
    main()
