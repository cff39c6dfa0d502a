"""Bias of a toxicity score across identities (Jigsaw 2019's metrics), and how identities are found in text.

    from fairness import bias_table, final_metric, match_identities
    groups = match_identities(texts, ["gay", "muslim", "african american"])   # {term: (N,) bool}, whole words
    rows = bias_table(scores, toxic, groups, flagged)   # per identity: subgroup, BPSN, BNSP AUC, FPR at decisions
    final_metric(overall_auc, rows)                     # 0.25 overall + 0.75 mean of the power means (p = -5)

Per identity (Borkan et al. 2019, the metrics of Kaggle's "Unintended Bias in Toxicity Classification"):
- subgroup AUC: toxic against non-toxic rows that mention it;
- BPSN (background positive, subgroup negative): its non-toxic rows against the other toxic rows; low when
  harmless mentions of it score like attacks;
- BNSP (background negative, subgroup positive): its toxic rows against the other non-toxic rows;
- its false-positive rate: the share of its non-toxic rows flagged at the export's decisions.
The sets are read here too (term lists, bias CSVs, functional CSVs); the scores come from the caller.
"""
import re

import numpy as np

from inputs import InputError, read_rows
from metrics import label_aucs

POWER = -5  # the power mean's p: the worst identities weigh most
# The identity columns of Jigsaw 2019's Civil Comments data: the columns read as identities when no others are named
# (its other numeric columns are labels and reactions, not identities).
JIGSAW_2019_IDENTITIES = (
    "asian", "atheist", "bisexual", "black", "buddhist", "christian", "female", "heterosexual", "hindu",
    "homosexual_gay_or_lesbian", "intellectual_or_learning_disability", "jewish", "latino", "male", "muslim",
    "other_disability", "other_gender", "other_race_or_ethnicity", "other_religion", "other_sexual_orientation",
    "physical_disability", "psychiatric_or_mental_illness", "transgender", "white")
# A comment is flagged when the export decides any label but these: obscene is profanity itself, which
# says nothing of an attack on someone (a community that wants it flagged reads that label on its own).
NOT_ATTACKS = ("obscene",)


def match_identities(texts, terms):
    """{term: (N,) bool}: rows that hold the term as whole words, case-insensitive ("gay" in "Gay men", not in
    "gayety"; "african american" across any run of spaces)."""
    out = {}
    for term in terms:
        words = r"\s+".join(re.escape(w) for w in term.split())
        pattern = re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)
        out[term] = np.array([bool(pattern.search(t)) for t in texts])
    return out


def auc(pos_scores, neg_scores):
    """ROC AUC of positives against negatives (ties half), nan where either side is empty."""
    if not len(pos_scores) or not len(neg_scores):
        return float("nan")
    scores = np.concatenate([pos_scores, neg_scores])
    labels = np.concatenate([np.ones(len(pos_scores)), np.zeros(len(neg_scores))])
    return float(label_aucs(scores[:, None], labels[:, None].astype(np.uint8))[0])


def bias_table(scores, toxic, groups, flagged):
    """Per identity with rows on both sides -> [{identity, rows, toxic_rows, subgroup_auc, bpsn_auc, bnsp_auc,
    fpr, fpr_rows}], worst BPSN first. scores (N,) the label's scores, toxic (N,) 0/1, flagged (N,) bool: the
    export's decision per row. An identity without toxic or non-toxic rows gets nan AUCs (and is kept)."""
    toxic, flagged = np.asarray(toxic).astype(bool), np.asarray(flagged).astype(bool)
    rows = []
    for name, member in groups.items():
        member = np.asarray(member, dtype=bool)
        if not member.any():
            continue
        out = ~member
        sub_neg = member & ~toxic
        rows.append({"identity": name, "rows": int(member.sum()), "toxic_rows": int((member & toxic).sum()),
                     "subgroup_auc": auc(scores[member & toxic], scores[sub_neg]),
                     "bpsn_auc": auc(scores[out & toxic], scores[sub_neg]),
                     "bnsp_auc": auc(scores[member & toxic], scores[out & ~toxic]),
                     "fpr": float(flagged[sub_neg].mean()) if sub_neg.any() else float("nan"),
                     "fpr_rows": int(sub_neg.sum())})
    return sorted(rows, key=lambda r: (np.nan_to_num(r["bpsn_auc"], nan=2.0), r["identity"]))


def power_mean(values, p=POWER):
    """(mean of v^p)^(1/p) over the defined values; nan where there are none."""
    v = np.asarray([x for x in values if x == x], dtype=np.float64)
    with np.errstate(divide="ignore"):  # an AUC of 0 makes the mean 0, as it should
        return float(np.mean(v ** p) ** (1 / p)) if len(v) else float("nan")


def final_metric(overall_auc, rows, weight=0.25):
    """Jigsaw 2019's final metric: weight x overall AUC + (1 - weight) x the mean of the power means of the
    subgroup, BPSN and BNSP AUCs."""
    means = [power_mean([r[k] for r in rows]) for k in ("subgroup_auc", "bpsn_auc", "bnsp_auc")]
    return float(weight * overall_auc + (1 - weight) * np.mean(means))


def summary(overall_auc, rows, background_fpr):
    """The figures a model card and a bench row quote -> dict."""
    fprs = [r["fpr"] for r in rows if r["fpr"] == r["fpr"]]
    return {"overall_auc": overall_auc, "identities": len(rows),
            "subgroup_power_mean": power_mean([r["subgroup_auc"] for r in rows]),
            "bpsn_power_mean": power_mean([r["bpsn_auc"] for r in rows]),
            "bnsp_power_mean": power_mean([r["bnsp_auc"] for r in rows]),
            "final_metric": final_metric(overall_auc, rows),
            "min_bpsn": min((r["bpsn_auc"] for r in rows if r["bpsn_auc"] == r["bpsn_auc"]), default=float("nan")),
            "max_fpr": max(fprs, default=float("nan")), "background_fpr": background_fpr}


def attacks_flagged(probs, names, thresholds):
    """(N,) bool: rows with any label other than NOT_ATTACKS at or above its threshold (all labels where the
    export has no other)."""
    keep = [j for j, n in enumerate(names) if n not in NOT_ATTACKS] or list(range(len(names)))
    return (np.asarray(probs)[:, keep] >= np.asarray(thresholds)[keep]).any(1)


def functional_table(behaviours, hateful, flagged):
    """Per behaviour -> [{behaviour, hateful, cases, correct}]: hateful cases should be flagged, the others not;
    correct is the share that were decided right."""
    behaviours, hateful, flagged = np.asarray(behaviours), np.asarray(hateful).astype(bool), np.asarray(flagged)
    rows = []
    for b in dict.fromkeys(behaviours.tolist()):
        k = behaviours == b
        rows.append({"behaviour": b, "hateful": bool(hateful[k][0]), "cases": int(k.sum()),
                     "correct": float((flagged[k] == hateful[k]).mean())})
    return rows


def bias_figures(probs, names, thresholds, target, toxic, groups):
    """A set's scores (N, L) at the served thresholds -> {"identities": bias_table's rows, "summary",
    "toxic_recall": share of toxic identity rows flagged, "background_fpr": share of non-toxic rows that
    mention no identity flagged}."""
    score, flagged = probs[:, list(names).index(target)].astype(np.float64), attacks_flagged(probs, names, thresholds)
    rows = bias_table(score, toxic, groups, flagged)
    anyone = np.any(list(groups.values()), axis=0)
    background = float(flagged[~anyone & ~toxic].mean()) if (~anyone & ~toxic).any() else float("nan")
    recall = float(flagged[anyone & toxic].mean()) if (anyone & toxic).any() else float("nan")
    return {"identities": rows, "summary": summary(auc(score[toxic], score[~toxic]), rows, background),
            "toxic_recall": recall, "background_fpr": background}


# ----------------------------------------------------------------------------
# the sets


def read_terms(path):
    """A term list: one a line, "category<TAB>term" or the term alone; '#' lines and blank lines skipped."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    terms = [line.split("\t")[-1].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not terms:
        raise InputError(f"{path}: no identity terms")
    return terms


def read_bias_rows(path, target_column, terms=None, columns=None):
    """A bias CSV -> (texts, toxic (N,) bool, {identity: (N,) bool}). Identities: whole-word matches of terms; else
    the named columns; else the Jigsaw 2019 identity columns the file has (values 0 to 1, >= 0.5 a member)."""
    texts, values, header = [], [], None
    for where, row in read_rows(path, ("comment_text", target_column)):
        header = header or list(row)
        try:
            v = float(row[target_column])
        except ValueError:
            v = -1.0
        if not 0 <= v <= 1:
            raise InputError(f"{path}: {where}, column {target_column}: expected 0, 1 or a fraction, "
                             f"got {row[target_column]!r}")
        texts.append(row["comment_text"])
        values.append(row)
    if not texts:
        raise InputError(f"{path}: header only, no rows")
    toxic = np.array([float(r[target_column]) for r in values]) >= 0.5
    if terms is not None:
        return texts, toxic, match_identities(texts, terms)
    columns = columns or [c for c in JIGSAW_2019_IDENTITIES if c in header]
    missing = [c for c in columns if c not in header]
    if not columns or missing:
        raise InputError(f"{path}: " + (f"no column {', '.join(missing)}" if missing else "no identity columns")
                         + "; name them with --identity_columns, or pass a term list with --identities FILE")
    groups = {}
    for c in columns:
        try:
            x = np.array([float(r[c]) if r[c].strip() else 0.0 for r in values])
        except ValueError:
            raise InputError(f"{path}: column {c}: not numbers, so not an identity column") from None
        groups[c] = x >= 0.5
    return texts, toxic, groups


def read_functional(path):
    """A functional CSV (comment_text, hateful 0/1, behaviour) -> (texts, hateful (N,) int, behaviours)."""
    rows = [(where, r) for where, r in read_rows(path, ("comment_text", "hateful", "behaviour"))]
    if not rows:
        raise InputError(f"{path}: header only, no cases")
    first = {}
    for where, r in rows:
        if r["hateful"].strip() not in ("0", "1"):
            raise InputError(f"{path}: {where}, column hateful: expected 0 or 1, got {r['hateful']!r}")
        if first.setdefault(r["behaviour"], r["hateful"].strip()) != r["hateful"].strip():
            raise InputError(f"{path}: {where}: behaviour {r['behaviour']!r} mixes hateful 0 and 1")
    return ([r["comment_text"] for _, r in rows], np.array([int(r["hateful"]) for _, r in rows]),
            [r["behaviour"] for _, r in rows])
