"""fairness.py's bias metrics against hand-worked cases, evaluate.py's --bias and --functional on the tiny export,
the committed identity and functional sets as data/make_fairness.py writes them, and the made-up training rows
kept apart from them (identity_rows)."""
import csv
import importlib.util
import os
import re

import numpy as np
import pytest

import evaluate
from conftest import ROOT, run_main
from data import identity_rows
from fairness import (attacks_flagged, auc, bias_table, final_metric, functional_table, match_identities,
                      power_mean)

FAIRNESS = os.path.join(ROOT, "data", "fairness")


def test_identities_match_whole_words_case_insensitive():
    texts = ["Gay men", "gayety", "an African  American poet", "african", "muslims", "A MUSLIM friend"]
    g = match_identities(texts, ["gay", "african american", "muslim"])
    assert g["gay"].tolist() == [True, False, False, False, False, False]
    assert g["african american"].tolist() == [False, False, True, False, False, False]
    assert g["muslim"].tolist() == [False, False, False, False, False, True]


def test_bias_table_by_hand():
    """Two identities: 'a' is scored like an attack when harmless (BPSN 0), 'b' is fine (all AUCs 1)."""
    scores = np.array([0.9, 0.8, 0.9, 0.1, 0.2, 0.1, 0.7, 0.6])
    toxic = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    groups = {"a": np.array([1, 1, 0, 0, 0, 0, 0, 0], bool), "b": np.array([0, 0, 1, 1, 0, 0, 0, 0], bool)}
    flagged = scores >= 0.5
    rows = {r["identity"]: r for r in bias_table(scores, toxic, groups, flagged)}
    assert rows["a"]["subgroup_auc"] == 1.0 and rows["b"]["subgroup_auc"] == 1.0
    # a's harmless row (0.8) against the other toxic rows (0.9, 0.2, 0.7): above two of three
    assert rows["a"]["bpsn_auc"] == pytest.approx(1 / 3)
    assert rows["b"]["bpsn_auc"] == 1.0
    # b's toxic row (0.9) against the other harmless rows (0.8, 0.1, 0.6): above all
    assert rows["b"]["bnsp_auc"] == 1.0 and rows["a"]["fpr"] == 1.0 and rows["b"]["fpr"] == 0.0
    assert [r["identity"] for r in bias_table(scores, toxic, groups, flagged)] == ["a", "b"]  # worst BPSN first
    assert auc(np.array([0.5]), np.array([0.5])) == 0.5 and np.isnan(auc(np.array([]), np.array([0.1])))


def test_power_mean_and_final_metric():
    assert power_mean([0.9, 0.9]) == pytest.approx(0.9)
    assert power_mean([0.5, 1.0]) == pytest.approx((np.mean([0.5 ** -5, 1.0]) ** (-1 / 5)))
    assert power_mean([0.5, 1.0]) < 0.6  # the worst weighs most
    rows = [{"subgroup_auc": 0.9, "bpsn_auc": 0.8, "bnsp_auc": 1.0}]
    assert final_metric(0.96, rows) == pytest.approx(0.25 * 0.96 + 0.75 * (0.9 + 0.8 + 1.0) / 3)


def test_obscene_alone_is_no_attack_and_functional_rows():
    names = ["toxic", "obscene", "insult"]
    probs = np.array([[0.1, 0.9, 0.1], [0.6, 0.9, 0.1], [0.1, 0.1, 0.1]])
    assert attacks_flagged(probs, names, [0.5, 0.5, 0.5]).tolist() == [False, True, False]
    table = functional_table(["x", "x", "y"], [1, 1, 0], np.array([True, False, False]))
    assert table == [{"behaviour": "x", "hateful": True, "cases": 2, "correct": 0.5},
                     {"behaviour": "y", "hateful": False, "cases": 1, "correct": 1.0}]


def test_committed_sets_are_what_make_fairness_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_fairness", os.path.join(ROOT, "data", "make_fairness.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(tmp_path))
    for name in ("identity_eval.csv", "functional_eval.csv"):
        assert (tmp_path / name).read_bytes() == open(os.path.join(FAIRNESS, name), "rb").read(), name
    identity = list(csv.DictReader(open(tmp_path / "identity_eval.csv")))
    terms = {r["identity"] for r in identity if r["identity"]}
    assert len(terms) >= 40 and {r["category"] for r in identity} >= {"orientation", "gender", "race", "religion",
                                                                       "age", "disability", "none"}
    for term in terms:  # balanced: as many harmless as toxic rows per term
        toxic = [r["toxic"] for r in identity if r["identity"] == term]
        assert toxic.count("0") == toxic.count("1") >= 10
    functional = list(csv.DictReader(open(tmp_path / "functional_eval.csv")))
    per = {}
    for r in functional:
        per.setdefault(r["behaviour"], set()).add(r["comment_text"])
    assert len(per) >= 10 and all(len(v) >= 20 for v in per.values())  # distinct cases


def test_training_templates_are_not_the_evaluation_templates():
    """No training template is, or nearly is (over half its words shared), a template of either evaluation set."""
    spec = importlib.util.spec_from_file_location("make_fairness", os.path.join(ROOT, "data", "make_fairness.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    evals = module.HARMLESS + module.TOXIC + [t for _, ts in module.FUNCTIONAL.values() for t in ts]

    def words(template):
        return set(re.findall(r"[a-z']+", template.lower().replace("{t}", " ")))
    train = [line.split("\t")[1] for line in open(os.path.join(FAIRNESS, "train_templates.txt")).read().splitlines()
             if line and not line.startswith("#")]
    close = [(t, e) for t in train for e in evals if len(words(t) & words(e)) / len(words(t) | words(e)) > 0.5]
    assert not close, close


def test_training_rows_use_other_words_than_the_evaluation_sets():
    rows = identity_rows(3000, 1234)
    eval_terms = [line.split("\t")[-1] for line in open(os.path.join(FAIRNESS, "eval_terms.txt")).read().splitlines()
                  if line and not line.startswith("#")]
    hits = match_identities(rows.texts, eval_terms)
    assert not any(v.any() for v in hits.values()), [k for k, v in hits.items() if v.any()]
    identity = {re.sub(r"\W+", " ", r["comment_text"].lower())
                for r in csv.DictReader(open(os.path.join(FAIRNESS, "identity_eval.csv")))}
    assert not identity & {re.sub(r"\W+", " ", t.lower()) for t in rows.texts}
    assert rows.labels.shape == (3000, 6) and 0.2 < rows.labels[:, 0].mean() < 0.5  # a third are attacks
    assert (rows.labels[:, [1, 2, 3]] == 0).all() and (rows.labels[:, 5] == rows.labels[:, 0]).all()
    again = identity_rows(3000, 1234)
    assert again.texts == rows.texts and (again.labels == rows.labels).all()


def test_evaluate_bias_and_functional_on_the_tiny_export(export_dir, tmp_path, capsys):
    model = export_dir[0]
    code, out, _ = run_main(capsys, ["--model", model, "--runtime", "onnxruntime-fp32", "--bias",
                                     os.path.join(FAIRNESS, "identity_eval.csv"), "--identities",
                                     os.path.join(FAIRNESS, "eval_terms.txt"), "--figure", str(tmp_path / "b.png")],
                            evaluate.main)
    assert code == 0 and "44 identities" in out and "BPSN" in out and "final metric" in out
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    cols = tmp_path / "cols.csv"  # Civil Comments style: a fractional target, identity and label columns
    cols.write_text("id,comment_text,target,homosexual_gay_or_lesbian,muslim,insult\n"
                    "1,I am gay,0.1,1,0,0\n2,gay people are scum,0.9,0.8,0,1\n3,my muslim friend,0.0,0,1,0\n"
                    "4,muslims are trash,0.7,0,0.6,1\n5,hello there,0.0,0,0,0\n6,you idiot,0.8,0,0,1\n")
    code, out, _ = run_main(capsys, ["--model", model, "--bias", str(cols)], evaluate.main)
    assert code == 2  # no toxic column: name it
    code, out, err = run_main(capsys, ["--model", model, "--bias", str(cols), "--target", "target"], evaluate.main)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --target 'target': not a label")
    code, out, _ = run_main(capsys, ["--model", model, "--bias", str(cols), "--target_column", "target"],
                            evaluate.main)
    assert code == 0 and "2 identities" in out and "insult " not in out  # a label column is no identity
    code, out, _ = run_main(capsys, ["--model", model, "--bias", str(cols), "--target_column", "target",
                                     "--identity_columns", "muslim"], evaluate.main)
    assert code == 0 and "1 identities" in out
    code, out, _ = run_main(capsys, ["--model", model, "--functional", os.path.join(FAIRNESS, "functional_eval.csv")],
                            evaluate.main)
    assert code == 0 and "negated_hate" in out and "obfuscated_hate" in out


def test_bias_input_errors_are_one_line(export_dir, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    for text, needle in (("id,comment_text,toxic,note\n1,hi,0,a\n", "no identity columns"),
                         ("id,comment_text,toxic\n1,hi,2\n", "column toxic: expected 0, 1 or a fraction"),
                         ("id,comment_text,toxic,black\n1,hi,0,x\n", "column black: not numbers")):
        bad.write_text(text)
        code, _, err = run_main(capsys, ["--model", export_dir[0], "--bias", str(bad)], evaluate.main)
        assert code == 2 and needle in err.strip().splitlines()[-1] and err.count("error:") == 1, err
    code, _, err = run_main(capsys, ["--model", export_dir[0], "--bias", str(bad), "--identities",
                                     str(tmp_path / "none.txt")], evaluate.main)
    assert code == 2 and "none.txt: cannot read" in err


def test_every_export_states_its_bias_figures(export_dir):
    """export.py scores the identity set through the new export: export.json and MODEL_CARD.md carry the figures."""
    import json
    meta = json.load(open(os.path.join(export_dir[0], "export.json")))
    f = meta["fairness"]
    assert f["set"] == "data/fairness/identity_eval.csv" and f["identities"] == 44 and len(f["worst"]) == 10
    assert 0 <= f["max_fpr"] <= 1 and 0 <= f["bpsn_power_mean"] <= 1 and 0 <= f["toxic_recall"] <= 1
    assert f["worst"] == sorted(f["worst"], key=lambda r: (r["bpsn_auc"], r["identity"]))
    card = open(os.path.join(export_dir[0], "MODEL_CARD.md")).read()
    assert "## Fairness across identities" in card and f["worst"][0]["identity"] in card
    assert "Training added no rows against this bias" in card
