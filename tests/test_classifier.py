"""classifier.Classifier, the Python API: its dicts against scoring.score_texts, spans over long comments, and
decision policies (export.json format_version 2: export.py's own, and a hand-written set with known values):
defaults, overrides, and one-line errors naming the argument or flag; a format_version 1 export is refused."""
import json
import shutil

import numpy as np
import pytest
from conftest import POLICIES, run_main

import scoring
from classifier import Classifier, PolicyError, resolve_thresholds
from common import LABELS, UsageError


def version_1_export(export_dir, dest):
    """A copy of the tiny export with export.json as the previous export.py wrote it: format_version 1,
    top-level thresholds and default_model, no policies, calibration or base rates -> its export.json path."""
    shutil.copytree(export_dir, dest)
    meta = json.load(open(dest / "export.json"))
    old = {k: v for k, v in meta.items() if k not in ("policies", "default_policy", "calibration", "base_rates",
                                                      "validation_at_base_rates")}
    old.update(format_version=1, thresholds=meta["policies"]["f1"]["thresholds"], default_model="int8")
    json.dump(old, open(dest / "export.json", "w"))
    return dest / "export.json"


@pytest.fixture(scope="module")
def clf(export_dir):
    return Classifier(export_dir[0], runtime="onnxruntime-fp32")


@pytest.fixture(scope="module")
def policy_export(export_dir, tmp_path_factory):
    """A valid format_version 2 export with conftest's POLICIES (known values) and default_policy recall, so the
    default shows: export_dir's export.json edited; the calibration, base rates and validation keep their shape
    (the calibration's a and b are the export's own, the map inside its graph)."""
    out = tmp_path_factory.mktemp("policies") / "tiny"
    shutil.copytree(export_dir[0], out)
    meta = json.load(open(out / "export.json"))
    cal = meta["calibration"]
    meta.update(default_policy="recall", policies=POLICIES,
                calibration={"method": "platt", "a": {n: cal["a"][n] for n in LABELS},
                             "b": {n: cal["b"][n] for n in LABELS}, "applied": cal["applied"]},
                base_rates={"reweighted": True, "rates": dict.fromkeys(LABELS, 0.01)},
                validation_at_base_rates=meta["validation_at_base_rates"])
    json.dump(meta, open(out / "export.json", "w"))
    assert scoring.read_meta(str(out))["policies"] == POLICIES  # valid: read as any export
    return str(out)


# ----------------------------------------------------------------------------
# results

def test_predict_matches_score_and_thresholds(clf):
    texts = ["you are an idiot", "", "🙂🙂 Привет 世界", "thanks " * 700, "\ud800 lone surrogate"]
    got = clf.predict(texts)
    ref = scoring.score_texts(clf.model, [t.replace("\ud800", "\ufffd") for t in texts], progress=False)
    assert [list(r["scores"]) for r in got] == [list(LABELS)] * len(texts)
    assert np.abs(np.array([[r["scores"][n] for n in LABELS] for r in got]) - ref).max() <= 1e-6
    th = dict(zip(LABELS, clf.default_thresholds))  # the served thresholds: the default policy's
    assert clf.default_thresholds == resolve_thresholds(clf.meta) and clf.meta["default_policy"] == "f1"
    assert th == clf.meta["policies"]["f1"]["thresholds"]
    for r in got:
        assert r["labels"] == [n for n in LABELS if r["scores"][n] >= th[n]]
        assert set(r["spans"]) == set(r["labels"])
    loose = clf.predict(texts, thresholds=0.0)  # every label decided: every label has a span
    assert all(r["labels"] == list(LABELS) for r in loose)
    assert loose[1]["spans"]["toxic"] == {"begin": 0, "end": 0, "score": loose[1]["scores"]["toxic"]}
    assert loose[0]["spans"]["insult"]["begin"] == 0 and loose[0]["spans"]["insult"]["end"] == 16


def test_spans_point_at_the_window_that_scored(clf):
    filler = "the weather is nice today and the river is calm. " * 60
    text = filler + "you are an idiot " * 40 + filler
    r = clf.predict([text], thresholds=0.0, windows=True)[0]
    wins = r["windows"]
    assert len(wins) > 3 and wins[0]["begin"] == 0 and wins[-1]["end"] == len(text.rstrip())
    assert all(a["begin"] < b["begin"] < a["end"] for a, b in zip(wins, wins[1:]))  # overlapping, in order
    for n in LABELS:
        best = max(wins, key=lambda w: w["scores"][n])
        assert r["spans"][n] == {"begin": best["begin"], "end": best["end"], "score": best["scores"][n]}
        assert r["scores"][n] == best["scores"][n]
    # the offsets are the text's own: a window starts and ends on a word
    for w in wins:
        assert text[w["begin"]] != " " and text[w["end"] - 1] != " "


def test_huge_comment_offsets_cross_tokenizer_pieces(clf):
    text = "x" * 10 + " " + "word " * 20000 + "idiot"  # 100k characters: several tokenizer pieces
    assert len(scoring.split_text(text)) > 1
    ids, offsets = scoring.encode_texts(clf.model.tokenizer, [text], offsets=True)
    assert len(ids[0]) == len(offsets[0]) and offsets[0][-1].tolist() == [len(text) - 5, len(text)]
    assert {text[b:e] for b, e in offsets[0] if b > 10} == {"word", "idiot"}  # after the x's word pieces
    assert (np.diff(offsets[0][:, 0]) > 0).all()


# ----------------------------------------------------------------------------
# policies and thresholds

def test_default_and_chosen_policies(policy_export):
    meta = scoring.read_meta(policy_export)
    assert resolve_thresholds(meta) == [POLICIES["recall"]["thresholds"][n] for n in LABELS]  # default_policy
    assert resolve_thresholds(meta, "f1") == [POLICIES["f1"]["thresholds"][n] for n in LABELS]
    assert resolve_thresholds(meta, "f1", 0.3) == [0.3] * 6
    got = resolve_thresholds(meta, "precision", named={"severe_toxic": 0.6, "threat": 0.7})
    assert got == [0.8, 0.6, 0.85, 0.7, 0.8, 0.9]
    assert resolve_thresholds(meta, "precision", every=0.5, named={"toxic": 0.1}) == [0.1] + [0.5] * 5
    assert Classifier(policy_export, runtime="onnxruntime-fp32").default_thresholds == resolve_thresholds(meta)
    with pytest.raises(PolicyError) as e:  # a default that is not among the policies: refused, naming the key
        resolve_thresholds(dict(meta, default_policy="strict"))
    assert str(e.value) == "export.json: default_policy 'strict' is not among its policies (f1, precision, recall)"


@pytest.mark.parametrize("policy, thresholds, expect", [
    ("strict", None, "policy 'strict': unknown policy; this export has f1, precision, recall"),
    ("precision", None, "policy 'precision': no threshold reaches its target 0.9 on validation for "
                        "severe_toxic, threat; set them with thresholds severe_toxic=X,threat=X"),
    ("precision", {"threat": 0.5}, "for severe_toxic; set it with thresholds severe_toxic=X"),
    (None, 1.5, "thresholds: 1.5 is not a number in [0, 1]"),
    (None, "0.5", "thresholds: '0.5' is not a number"),
    (None, True, "thresholds: True is not a number"),
    (None, {"toxic": -0.1}, "thresholds toxic: -0.1 is not a number in [0, 1]"),
    (None, {"tox": 0.5}, "thresholds: unknown label 'tox'; the labels are toxic, severe_toxic"),
    (None, {"toxic": None}, "thresholds toxic: None is not a number"),
])
def test_api_errors_name_the_argument(policy_export, policy, thresholds, expect):
    clf = Classifier(policy_export, runtime="onnxruntime-fp32")
    with pytest.raises(PolicyError) as e:
        clf.predict(["x"], policy=policy, thresholds=thresholds)
    assert isinstance(e.value, UsageError) and expect in str(e.value) and "\n" not in str(e.value)


def test_a_format_version_1_export_is_refused(export_dir, tmp_path):
    """An export from before format_version 2 (top-level thresholds, no policies) is not misread: Classifier
    raises one line naming its export.json and saying to re-export it."""
    path = version_1_export(export_dir[0], tmp_path / "old")
    with pytest.raises(scoring.ModelError) as e:
        Classifier(str(tmp_path / "old"), runtime="onnxruntime-fp32")
    msg = str(e.value)
    assert isinstance(e.value, UsageError) and "\n" not in msg
    assert msg == (f"{path}: format_version 1, this project reads version 2: re-export it with this project's "
                   f"export.py"), msg


def test_the_exports_own_policies_decide(clf, export_dir):
    """export.py's policies (issue 25): the default is f1, and a policy with an unreached label says so."""
    meta = json.load(open(f"{export_dir[0]}/export.json"))
    (r,) = clf.predict(["you are an idiot"], policy="recall", thresholds={n: 0.5 for n in LABELS})
    assert r["labels"] == [n for n in LABELS if r["scores"][n] >= 0.5]
    (r,) = clf.predict(["you are an idiot"])
    assert r["labels"] == [n for n in LABELS if r["scores"][n] >= meta["policies"]["f1"]["thresholds"][n]]
    unreached = [n for n, t in meta["policies"]["precision"]["thresholds"].items() if t is None]
    if unreached:  # the tiny random model reaches 90% precision nowhere
        with pytest.raises(PolicyError, match=unreached[0]):
            clf.predict(["x"], policy="precision")


def test_cli_policies(policy_export, export_dir, capsys, tmp_path):
    base = ["--model", policy_export, "--runtime", "onnxruntime-fp32", "--json"]
    old = version_1_export(export_dir[0], tmp_path / "old")  # an export from before format_version 2
    code, out, _ = run_main(capsys, base + ["--policy", "precision", "--thresholds", "severe_toxic=0.6,threat=0.7",
                                            "you are an idiot"])
    assert code in (0, None)
    r = json.loads(out)
    th = [0.8, 0.6, 0.85, 0.7, 0.8, 0.9]
    assert r["labels"] == [n for n, t in zip(LABELS, th) if r["scores"][n] >= t]
    code, out, _ = run_main(capsys, base + ["--threshold", "0", "x"])
    assert code in (0, None) and json.loads(out)["labels"] == list(LABELS)
    for argv, expect in [
        (["--policy", "strict"], "--policy 'strict': unknown policy; this export has f1, precision, recall"),
        (["--policy", "precision"], "--policy 'precision': no threshold reaches its target 0.9 on validation for "
                                    "severe_toxic, threat; set them with --thresholds severe_toxic=X,threat=X"),
        (["--threshold", "abc"], "--threshold: 'abc' is not a number in [0, 1]"),
        (["--threshold", "1.01"], "--threshold: 1.01 is not a number in [0, 1]"),
        (["--thresholds", "toxic=2"], "--thresholds toxic: 2.0 is not a number in [0, 1]"),
        (["--thresholds", "toxic"], "--thresholds: 'toxic' is not label=number"),
        (["--thresholds", "nope=0.2"], "--thresholds: unknown label 'nope'"),
        (["--model", str(tmp_path / "old")], f"{old}: format_version 1, this project reads version 2: re-export it"),
        (["--model", str(tmp_path / "old"), "--policy", "f1"], f"{old}: format_version 1"),
    ]:
        code, out, err = run_main(capsys, base + argv + ["x"])
        assert code == 2 and out == "" and err.strip() == f"error: {err.strip()[7:]}" and expect in err, err
        assert len(err.strip().splitlines()) == 1
