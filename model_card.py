"""MODEL_CARD.md for an export, generated from its export.json: export.py writes it next to the model.

    python model_card.py exports/mini                      # (re)write exports/mini/MODEL_CARD.md
    python model_card.py exports/mini --data data/jigsaw/train.csv --stdout   # with the training file's rates

    from model_card import write_model_card
    write_model_card(folder, meta, cfg)                    # export.py, with the checkpoint's config

It states the intended use (triage for people, not automatic removal), the training data and its toxic
rate against Kaggle's full set, the validation metrics per label, the decision policies, base rates and
calibration, each runtime's agreement with fp32 (int8 included), and the known limits: English only,
Wikipedia talk pages of 2017-2018. Every label comes from export.json.
"""
import argparse
import os
import sys

from common import UsageError, atomic_write, exit_on_error, markdown_table
from data import read_csv
from decisions import KAGGLE_RATES
from scoring import read_meta


def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def num(x, spec=".4f"):
    return "n/a" if x is None else f"{x:{spec}}"


def table(header, rows):
    return "\n".join(markdown_table(header, rows))


def data_section(cfg, names):
    """The training file and its toxic rate, read from the file where it is here."""
    if not cfg:
        return ["The training configuration is not recorded with this card (regenerated without it: pass "
                "`--data`)."]
    path, lines = cfg["data_path"], []
    split = (f" (validation: {cfg['val_fraction']:.0%} of it, split_seed {cfg['split_seed']})"
             if "val_fraction" in cfg and "split_seed" in cfg else "")
    lines.append(f"Trained on `{path}`{split}" + (f", max_length {cfg['max_length']}" if "max_length" in cfg else "")
                 + ".")
    if os.path.isfile(path) and "toxic" in names:
        ds = read_csv(path, names)
        rate, kaggle = float(ds.labels[:, list(names).index("toxic")].mean()), KAGGLE_RATES["toxic"]
        enriched = rate > 1.5 * kaggle
        lines.append(f"{len(ds.ids):,} rows, {pct(rate)} toxic against {100 * kaggle:.2f}% in Kaggle's full "
                     f"train.csv" + (": **toxic-enriched**, so its precision, F1 and thresholds are not those of "
                                     "a stream with the full set's rates." if enriched else "."))
    elif os.path.isfile(path):
        lines.append(f"{len(read_csv(path, names).ids):,} rows.")
    else:
        lines.append("The file is not on this machine: its rates are not stated here.")
    return lines


def policy_section(meta):
    labels, policies, out = meta["labels"], meta["policies"], []
    out.append(f"Decision policies (default: `{meta['default_policy']}`; choose one with `predict.py --policy "
               f"NAME` or `\"policy\"` in a /v1/classify request). A blank threshold: the target is not reached for "
               f"that label on validation.")
    rows = []
    for name, pol in policies.items():
        for n in labels:
            rows.append([name, pol.get("target", ""), n, num(pol["thresholds"].get(n), ".3f").replace("n/a", ""),
                         num(pol.get("precision", {}).get(n), ".3f"), num(pol.get("recall", {}).get(n), ".3f")])
    out.append(table(["policy", "target", "label", "threshold", "precision", "recall"], rows))
    return out


def calibration_section(meta):
    base, cal, val = meta["base_rates"], meta["calibration"], meta["validation_at_base_rates"]
    where = "reweighted to" if base["reweighted"] else "as they are, at"
    per_label = [f"{k} " + ", ".join(f"{n} {v:.3f}" for n, v in cal[k].items()) for k in ("a", "b")]
    return [f"Base rates: the validation rows {where} these label rates (Kaggle's full set unless the exporter set "
            "others): " + ", ".join(f"{n} {pct(r)}" for n, r in base["rates"].items()) + ".",
            f"Calibration: `{cal['method']}` per label, sigmoid(a * logit + b), fitted at those rates and applied "
            "inside the ONNX graph: a score of 0.8 means about 80% at those rates. " + "; ".join(per_label) + ".",
            "Expected calibration error on the validation rows at those rates (10 bins): "
            + ", ".join(f"{n} {e:.4f}" for n, e in val["ece"].items()) + "."]


def runtime_section(meta):
    parity, checks, out = meta.get("parity", {}), meta.get("runtime_checks"), []
    if "int8_decision_agreement" in parity:
        out.append(f"int8 against fp32 on export.py's parity batch: decisions agree "
                   f"{pct(parity['int8_decision_agreement'])}, max abs score difference "
                   f"{num(parity['int8_max_abs_diff'])}.")
    if checks:
        out.append(table(["runtime", "mean AUC", "change vs fp32", "decisions agree with fp32", "rows", "ok"],
                         [[r, num(c.get("mean_auc")), num(c.get("auc_drop_vs_fp32") and -c["auc_drop_vs_fp32"], "+.4f"),
                           pct(c.get("decision_agreement")), f"{c.get('rows', 0):,}", c.get("ok")]
                          for r, c in checks.items()]))
    else:
        out.append("The runtimes were not checked on validation rows (export.json has no runtime_checks).")
    return out


def fairness_section(meta, cfg):
    """The export's bias figures on the project's identity set (export.py's add_fairness), and what the
    training recipe did about them."""
    f = meta.get("fairness")  # only exports with a toxic label have them
    if not f:
        return ["Not measured: this export has no toxic label to score the project's identity set with."]
    rows = [[r["identity"], num(r["bpsn_auc"]), num(r["subgroup_auc"]), num(r["bnsp_auc"]), pct(r["fpr"])]
            for r in f["worst"]]
    extra = (cfg or {}).get("identity_rows", 0)
    return [f"On `{f['set']}` (the project's own templates, {f['identities']} identity terms, never trained on; "
            "`python evaluate.py --bias ... --identities data/fairness/eval_terms.txt` reproduces it): BPSN power "
            f"mean {num(f['bpsn_power_mean'])}, BNSP {num(f['bnsp_power_mean'])}, subgroup "
            f"{num(f['subgroup_power_mean'])}; Jigsaw 2019's final metric {num(f['final_metric'])}. At the served "
            f"decisions, harmless sentences that mention an identity are flagged up to {pct(f['max_fpr'])} of the "
            f"time (worst identity), against {pct(f['background_fpr'])} for the same sentences without one; toxic "
            f"ones are caught {pct(f['toxic_recall'])} of the time. The worst identities:",
            table(["identity", "BPSN AUC", "subgroup AUC", "BNSP AUC", "harmless flagged"], rows),
            f"Training added {extra:,} made-up rows of identity mentions (config `identity_rows`, "
            "data/fairness/train_*.txt, other words than the evaluation set's)." if extra else
            "Training added no rows against this bias (config `identity_rows` 0)."]


def card(meta, cfg=None):
    """The card's Markdown from export.json (and the checkpoint's config, where known)."""
    m, labels = meta["checkpoint"]["validation_metrics"], meta["labels"]
    rows = [[n, num(m.get(f"auc_{n}")), num(m.get(f"f1_{n}_tuned"))] for n in labels]
    parts = [
        f"# Model card: toxic-comment classifier ({meta['encoder']}, {meta['pooling']} pooling)",
        "Generated by model_card.py from export.json; code under the MIT license (LICENSE).",
        "## Intended use",
        f"Scores English comments for {len(labels)} kinds of toxicity (labels: " + ", ".join(labels) + ") so that "
        "people can **triage** them: sort a moderation queue, flag comments for review. The scores are for "
        "triage, **not for automatic removal**: every decision against a person's comment should be a person's. "
        "It is not a measure of a writer's intent, and should not be used to rank or judge people.",
        "## Training data",
        "Kaggle's Jigsaw Toxic Comment Classification Challenge (2018): Wikipedia talk-page comments labelled by "
        "crowd raters.", *data_section(cfg, labels),
        f"## Metrics (the validation split of the training file, at step {meta['checkpoint']['step']:,})",
        f"Mean ROC AUC {num(m.get('aucroc_macro'))}; macro F1 at the tuned thresholds "
        f"{num(m.get('macro_f1_tuned'))}, micro {num(m.get('micro_f1_tuned'))}.",
        table(["label", "ROC AUC", "F1 at its threshold"], rows),
        "## Thresholds and decision policies", *policy_section(meta),
        "## Base rates and calibration", *calibration_section(meta),
        "## Runtimes", *runtime_section(meta),
        "## Fairness across identities", *fairness_section(meta, cfg),
        "## Known limitations",
        "- English only: other languages and scripts get scores, but nothing was validated on them.\n"
        "- One domain: Wikipedia talk pages of about 2017-2018. Other forums, slang, newer terms and "
        "reclaimed words score less reliably.\n"
        "- The raters' labels carry their biases: comments that merely mention an identity group are known to "
        "score higher on Jigsaw's data.\n"
        "- Rare labels (the smallest base rates above) have few validation examples: their thresholds and "
        "F1 are the least certain.\n"
        "- Long comments are scored as overlapping windows, each label the max over them: one bad passage "
        "flags the whole comment, and the span says which window.",
        "## Versions",
        ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + f"; export format "
        f"{meta['format_version']}, opset {meta['opset']}.",
    ]
    return "\n\n".join(parts) + "\n"


def write_model_card(folder, meta, cfg=None):
    text = card(meta, cfg)
    atomic_write(os.path.join(folder, "MODEL_CARD.md"), lambda f: f.write(text), mode="w")
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description="Write MODEL_CARD.md for an export (see the docstring).")
    p.add_argument("model", help="export folder")
    p.add_argument("--data", help="the training CSV, for its rates (export.py passes the checkpoint's config)")
    p.add_argument("--stdout", action="store_true", help="print the card instead of writing it")
    args = p.parse_args(argv)
    with exit_on_error():
        meta = read_meta(args.model)
        cfg = None
        if args.data:
            if not os.path.isfile(args.data):
                raise UsageError(f"--data {args.data}: no such file")
            cfg = {"data_path": args.data}
        if args.stdout:
            sys.stdout.write(card(meta, cfg))
        else:
            write_model_card(args.model, meta, cfg)
            print(f"wrote {os.path.join(args.model, 'MODEL_CARD.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
