"""The label set has one source: a checkpoint with 3 labels of its own (one of them not Kaggle's) goes through
export.py, predict.py, evaluate.py and serve.py, and every output names its labels, never Kaggle's six."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_main

NAMES = ("toxic", "insult", "spam")


@pytest.fixture(scope="module")
def three_label_export(tiny_encoder, tmp_path_factory):
    """A tiny 3-label checkpoint (validation logits that rank the labels well), exported with int8 -> folder."""
    import export
    from checkpoint import build_model, make_checkpoint, model_config, save_checkpoint
    from config import load_config
    from data import read_csv, split_indices
    tmp = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < [0.3, 0.2, 0.25]).astype(np.uint8)
    with open(tmp / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "comment_text", *NAMES])
        w.writerows([f"r{i}", f"comment number {i} " + " ".join(n for n, v in zip(NAMES, y[i]) if v), *y[i]]
                    for i in range(len(y)))
    cfg, _ = load_config(["--encoder", tiny_encoder, "--data_path", str(tmp / "train.csv"), "--aim", "false"])
    ds = read_csv(cfg.data_path, NAMES)
    _, val = split_indices(ds.labels, cfg.val_fraction, cfg.split_seed, NAMES)
    labels = ds.labels[val]
    logits = (3 * labels - 1.5 + rng.normal(0, 1, labels.shape)).astype(np.float32)
    model = build_model(tiny_encoder, "cls", 0.1, NAMES)
    metrics = {"aucroc_macro": 0.9}
    save_checkpoint(make_checkpoint(model, model_config(model, tiny_encoder, 0.1, NAMES), cfg, 1, metrics,
                                    validation=(logits, labels)), tmp / "best.pt")
    export.main(["--checkpoint", str(tmp / "best.pt"), "--out", str(tmp / "export"), "--quantize", "int8",
                 "--check_rows", "0"])
    return tmp


def test_export_json_and_model_card_carry_the_checkpoints_labels(three_label_export):
    meta = json.load(open(three_label_export / "export" / "export.json"))
    assert meta["labels"] == list(NAMES)
    for policy in meta["policies"].values():
        assert list(policy["thresholds"]) == list(NAMES)
    assert list(meta["calibration"]["a"]) == list(NAMES)
    # Kaggle's rates for its labels, the rows' own for the label Kaggle does not have
    assert meta["base_rates"]["rates"]["toxic"] == pytest.approx(15294 / 159571)
    assert 0.1 < meta["base_rates"]["rates"]["spam"] < 0.4
    card = open(three_label_export / "export" / "MODEL_CARD.md").read()
    assert "spam" in card and "identity_hate" not in card


def test_predict_scores_and_decides_the_three_labels(three_label_export, capsys):
    code, out, _ = run_main(capsys, ["--model", str(three_label_export / "export"), "--json", "--runtime",
                                     "onnxruntime-fp32", "buy cheap spam now", "thanks"])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [list(r["scores"]) for r in rows] == [list(NAMES)] * 2
    code, out, err = run_main(capsys, ["--model", str(three_label_export / "export"), "--thresholds", "threat=0.5",
                                       "hi"])
    assert code == 2 and "threat" in err and "spam" in err and len(err.strip().splitlines()) == 1


def test_evaluate_and_the_submission_use_the_three_columns(three_label_export, capsys):
    import evaluate
    sub = three_label_export / "submission.csv"
    code, out, _ = run_main(capsys, ["--model", str(three_label_export / "export"), "--data",
                                     str(three_label_export / "train.csv"), "--submission", str(sub),
                                     "--figure", str(three_label_export / "reliability.png")], evaluate.main)
    assert code == 0 and "spam" in out and "identity_hate" not in out
    assert next(csv.reader(open(sub))) == ["id", *NAMES]
    assert os.path.getsize(three_label_export / "reliability.png") > 0


def test_serve_offers_the_labels_it_has(three_label_export):
    """/v1/classify and Perspective's endpoint: TOXICITY and INSULT by their Perspective names, spam as SPAM, and
    Kaggle's other attributes refused by name."""
    import http.client
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve.py"), "--model",
                             str(three_label_export / "export"), "--runtime", "onnxruntime-fp32", "--port", "0"],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        port = next(int(line.rsplit(":", 1)[1]) for line in proc.stderr if "listening on http://" in line)

        def post(path, body):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        status, body = post("/v1/classify", {"texts": ["spam spam"]})
        assert status == 200 and list(body["results"][0]["scores"]) == list(NAMES)
        status, body = post("/v1alpha1/comments:analyze", {"comment": {"text": "spam"}, "requestedAttributes":
                                                           {"TOXICITY": {}, "INSULT": {}, "SPAM": {}}})
        assert status == 200 and set(body["attributeScores"]) == {"TOXICITY", "INSULT", "SPAM"}
        status, body = post("/v1alpha1/comments:analyze", {"comment": {"text": "x"},
                                                           "requestedAttributes": {"THREAT": {}}})
        assert status == 400 and body["error"]["field"] == "requestedAttributes.THREAT"
    finally:
        proc.terminate()
        proc.wait(60)
