"""predict.py and evaluate.py on the tiny export: the CLI without torch, file modes and order, windows
over long comments, bad input (one line, never a traceback), and evaluate's AUC against sklearn's."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import evaluate
import predict
import scoring
from classifier import resolve_thresholds
from common import LABELS
from conftest import ROOT, SAMPLE, run_main

PREDICT = os.path.join(ROOT, "predict.py")


def run_cli(args, stdin=None, cwd=ROOT):
    return subprocess.run([sys.executable, PREDICT, *args], input=stdin, capture_output=True, cwd=cwd)


def json_lines(stdout):
    return [json.loads(line) for line in stdout.decode().splitlines()]


@pytest.fixture(scope="module")
def fp32(export_dir):
    return scoring.load_model(export_dir[0], runtime="onnxruntime-fp32")


def served_thresholds(model_dir):
    """{label: threshold} predict.py decides at by default: the export's default policy's."""
    meta = scoring.read_meta(model_dir)
    return dict(zip(meta["labels"], resolve_thresholds(meta)))


# ----------------------------------------------------------------------------
# the CLI, without torch

def test_cli_text_in_json_out(export_dir):
    r = run_cli(["--model", export_dir[0], "--json", "you are an idiot", "thanks for the edit"])
    assert r.returncode == 0, r.stderr.decode()
    rows = json_lines(r.stdout)
    assert [(o["index"], o["text"]) for o in rows] == [(0, "you are an idiot"), (1, "thanks for the edit")]
    th = served_thresholds(export_dir[0])
    meta = json.load(open(os.path.join(export_dir[0], "export.json")))
    assert th == meta["policies"][meta["default_policy"]]["thresholds"]
    for o in rows:
        assert list(o["scores"]) == list(LABELS)
        assert o["labels"] == [n for n in LABELS if o["scores"][n] >= th[n] - 1e-6]
    import runtimes
    chosen, why = runtimes.choose(meta, runtimes.cpu_flags(), small_job=True)  # two comments: a small job
    assert f"on {chosen} ({why})" in r.stderr.decode()


def test_prediction_never_imports_torch_or_transformers(export_dir, tmp_path):
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(open(SAMPLE).read())
    script = (f"import sys; sys.path.insert(0, {ROOT!r}); import predict, evaluate\n"
              f"predict.main(['--model', {export_dir[0]!r}, '--json', 'you are an idiot'])\n"
              f"evaluate.main(['--model', {export_dir[0]!r}, '--data', {str(labelled)!r}])\n"
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
              "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert json_lines(r.stdout.split(b"\n", 1)[0])[0]["text"] == "you are an idiot"


def test_short_comments_match_pytorch_on_training_tokens(export_dir, fp32, tiny_run):
    """A comment that fits is one window, the same tokens training saw: ONNX == PyTorch."""
    import torch
    from transformers import AutoTokenizer

    from data import pad_batch, tokenize
    from checkpoint import load_checkpoint, model_from_checkpoint
    ckpt = load_checkpoint(str(tiny_run / "best.pt"))
    texts = ["you are an idiot", "", "   ", "Thanks! 🙂 Привет 世界 مرحبا", "a " * 120]
    tok = AutoTokenizer.from_pretrained(ckpt["config"]["encoder"]).backend_tokenizer
    ids, mask = pad_batch(tokenize(tok, texts, ckpt["config"]["max_length"]))
    import decisions
    with torch.no_grad():
        z = model_from_checkpoint(ckpt)(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    ref = decisions.apply_calibration(z, fp32.meta["calibration"], fp32.labels)  # the export's map, in its graph
    assert np.abs(scoring.score_texts(fp32, texts) - ref).max() <= 1e-4


# ----------------------------------------------------------------------------
# inputs and order

TEXTS = ["short", "a much longer comment, with commas, \"quotes\" and\nno newline in txt", "", "emoji 🙂🙂",
         "word " * 300, "Привет 世界", "you are an idiot"]


def test_file_modes_and_order(export_dir, fp32, tmp_path, capsys):
    flat = [t.replace("\n", " ") for t in TEXTS]  # one comment per line in .txt and stdin
    expected = scoring.score_texts(fp32, flat)
    (tmp_path / "c.txt").write_text("".join(t + "\n" for t in flat))
    with open(tmp_path / "c.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "comment_text"]] + [[f"id{i}", t] for i, t in enumerate(flat)])
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"id": f"j{i}", "text": t}) + "\n"
                                              for i, t in enumerate(flat)))
    argv = ["--model", export_dir[0], "--runtime", "onnxruntime-fp32", "--json", "--file"]
    runs = {ext: run_main(capsys, argv + [str(tmp_path / f"c.{ext}")]) for ext in ("txt", "csv", "jsonl")}
    r = run_cli(["--model", export_dir[0], "--runtime", "onnxruntime-fp32", "--json", "-"],
                stdin=(tmp_path / "c.txt").read_bytes())
    runs["stdin"] = (r.returncode, r.stdout.decode(), r.stderr.decode())
    for mode, (code, out, err) in runs.items():
        assert code == 0, (mode, err)
        rows = [json.loads(line) for line in out.splitlines()]
        assert [o["text"] for o in rows] == flat, mode
        ids = {"csv": [f"id{i}" for i in range(len(flat))], "jsonl": [f"j{i}" for i in range(len(flat))]}
        assert [o.get("id") for o in rows] == ids.get(mode, [None] * len(flat))
        got = np.array([[o["scores"][n] for n in LABELS] for o in rows])
        assert np.abs(got - expected).max() <= 1e-5, mode  # JSON rounds to 6 decimals


def test_batched_scores_equal_one_by_one(fp32):
    """Sorting by length, padding and batching across comments change nothing (fp32)."""
    rng = np.random.default_rng(0)
    words = ["idiot", "thanks", "edit", "page", "🙂"]
    texts = [" ".join(rng.choice(words, int(n))) for n in rng.integers(0, 400, 25)]
    batched = scoring.score_texts(fp32, texts, batch_size=4)
    alone = np.concatenate([scoring.score_texts(fp32, [t]) for t in texts])
    assert np.abs(batched - alone).max() <= 1e-5


def test_submission_csv(export_dir, tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text("id,comment_text\nb2,hello\na1,\"you are, an idiot\"\n")
    sub = str(tmp_path / "sub.csv")
    code, out, _ = run_main(capsys, ["--model", export_dir[0], "--file", str(src), "--out", sub, "--json"])
    assert code == 0
    rows = list(csv.reader(open(sub)))
    assert rows[0] == ["id", *LABELS] and [r[0] for r in rows[1:]] == ["b2", "a1"]
    scores = [json.loads(line)["scores"] for line in out.splitlines()]
    written = [[float(x) for x in r[1:]] for r in rows[1:]]
    assert np.allclose(written, [[s[n] for n in LABELS] for s in scores], atol=1e-6)


# ----------------------------------------------------------------------------
# long comments: windows

def test_windows_cover_every_token():
    for body in (1, 2, 5, 126):
        for n in range(0, 3 * body + 10):
            starts = scoring.window_starts(n, body)
            covered = set().union(*(range(s, min(s + body, n)) for s in starts))
            assert covered == set(range(n)), (n, body)
            assert all(0 < b - a <= body - body // scoring.OVERLAP for a, b in zip(starts, starts[1:]))
            assert starts == [0] if n <= body else starts[-1] + body == n  # long: every window full


def test_huge_text_pieces_give_the_same_tokens(fp32):
    text = " ".join(["Thanks for the edit, idiot!", "🙂", "Привет", "x" * 50] * 3000)  # ~280k characters
    assert len(scoring.split_text(text)) > 1
    whole = fp32.tokenizer.encode(text, add_special_tokens=False).ids
    assert scoring.encode_texts(fp32.tokenizer, [text])[0].tolist() == whole


def test_signal_beyond_max_length_changes_the_score(export_dir, fp32):
    """Text after the first max_length tokens counts: the score is the max over every window, not
    the score of the comment truncated as in training."""
    from tokenizers import Tokenizer

    from data import tokenize
    truncating = Tokenizer.from_file(os.path.join(export_dir[0], "tokenizer.json"))
    body = fp32.meta["max_length"] - 2
    filler = "the weather is nice today and the river is calm. " * 60  # several windows on its own

    def probs(ids):
        return fp32.session.run(["probs"], {"input_ids": np.array([ids], dtype=np.int64),
                                            "attention_mask": np.ones((1, len(ids)), dtype=np.int64)})[0][0]
    changed = 0
    for tail in ["you are an idiot", "I will find you and hurt you", "🙂🙂🙂", "Привет 世界", "zebra"]:
        text = filler + (tail + " ") * 40
        ids = fp32.tokenizer.encode(text, add_special_tokens=False).ids
        assert len(ids) > 3 * body
        starts = scoring.window_starts(len(ids), body)
        per_window = np.array([probs([101] + ids[s:s + body] + [102]) for s in starts])
        truncated = probs(tokenize(truncating, [text], fp32.meta["max_length"])[0].tolist())
        got = scoring.score_texts(fp32, [text])[0]
        assert np.abs(got - per_window.max(0)).max() <= 1e-5  # the max over all the windows
        assert np.abs(per_window[0] - truncated).max() <= 1e-6  # window 0 is what training saw
        changed += np.abs(got - truncated).max() > 1e-5
    assert changed  # some planted tail beyond max_length moved some label's score


# ----------------------------------------------------------------------------
# bad input: one line, non-zero exit where it is an error, never a traceback

def test_odd_comments_are_scored(export_dir, capsys):
    texts = ["", "   ", "\t\n", "🙂🙂🙂", "Привет 世界 مرحبا שלום नमस्ते", "\x00\x07 bell", "a\u2028b"]
    code, out, _ = run_main(capsys, ["--model", export_dir[0], "--json", *texts])
    assert code == 0 and [json.loads(line)["text"] for line in out.splitlines()] == texts
    code, out, _ = run_main(capsys, ["--model", export_dir[0], *texts])  # the table too
    assert code == 0 and len(out.splitlines()) == len(texts) + 1


def test_megabyte_comment_and_ten_megabyte_line(export_dir, tmp_path, capsys):
    words = ("you are an idiot 🙂 Привет 世界 thanks " * 40000)[:1_000_000]
    (tmp_path / "big.txt").write_text(words + "\n" + ("A" * 5000 + " ") * 2000 + "\n")
    code, out, err = run_main(capsys, ["--model", export_dir[0], "--json", "--file", str(tmp_path / "big.txt")])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [len(o["text"]) for o in rows] == [1_000_000, 10_002_000] and "scoring [" in err


def test_invalid_utf8_is_replaced_and_counted(export_dir, tmp_path, capsys):
    (tmp_path / "bad.txt").write_bytes(b"ok\nbad \xff\xfe here\n\xc3\n")
    code, out, err = run_main(capsys, ["--model", export_dir[0], "--json", "--file", str(tmp_path / "bad.txt")])
    assert code == 0 and "3 invalid UTF-8 byte sequence(s) replaced" in err
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["ok", "bad \ufffd\ufffd here", "\ufffd"]
    r = run_cli(["--model", export_dir[0], "--json", "-"], stdin=b"fine\n\xff bad\n")
    assert r.returncode == 0 and b"stdin: 1 invalid UTF-8" in r.stderr and len(r.stdout.splitlines()) == 2


def test_binary_junk_on_stdin(export_dir):
    junk = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    r = run_cli(["--model", export_dir[0], "-"], stdin=junk)
    assert r.returncode == 0 and b"Traceback" not in r.stderr and b"invalid UTF-8" in r.stderr


@pytest.mark.parametrize("name, content, argv, expect", [
    ("empty.txt", "", [], "empty, no comments"),
    ("blank.txt", "\n  \n", [], "empty, no comments"),
    ("nocol.csv", "id,text\n1,hi\n", [], "missing column(s) comment_text"),
    ("header.csv", "id,comment_text\n", [], "header only"),
    ("bad.jsonl", '{"text": "ok"}\n{"txt": "no"}\n', [], "line 2: expected an object"),
    ("broken.jsonl", '{"text": "ok"\n', [], "line 1: not valid JSON"),
    ("dup.csv", "id,comment_text\na,x\nb,y\na,z\n", ["--out", "sub.csv"],
     "dup.csv: duplicate id 'a' (comments 1 and 3); a submission needs one row per id"),
    ("dup.jsonl", '{"id": 7, "text": "x"}\n\n{"id": "7", "text": "y"}\n', ["--out", "sub.csv"],
     "dup.jsonl: duplicate id '7' (comments 1 and 2)"),
    (None, None, ["--file", "missing.txt"], "missing.txt: cannot read"),
    (None, None, ["--batch_size", "0", "x"], "--batch_size must be >= 1"),
    (None, None, ["--file", "x.txt", "also a comment"], "not both"),
    (None, None, ["--runtime", "tpu", "x"], "--runtime 'tpu': choose one of auto, openvino, onnxruntime-int8"),
])
def test_bad_input_is_one_line(export_dir, tmp_path, capsys, monkeypatch,
                               name, content, argv, expect):
    monkeypatch.chdir(tmp_path)
    if name:
        (tmp_path / name).write_text(content)
        argv = ["--file", name, *argv]
    code, out, err = run_main(capsys, ["--model", export_dir[0], *argv])
    assert code != 0 and out == "" and not (tmp_path / "sub.csv").exists()
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: ") and expect in err, err


def test_repeated_ids_are_fine_without_a_submission(export_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # several comments of one user, say: a table or JSON lines keep them all
    (tmp_path / "dup.csv").write_text("id,comment_text\nu1,x\nu1,y\n")
    code, out, err = run_main(capsys, ["--model", export_dir[0], "--json", "--file", "dup.csv"])
    assert code in (0, None) and [json.loads(line)["id"] for line in out.splitlines()] == ["u1", "u1"], err


def test_no_arguments_prints_usage():
    r = run_cli([])
    assert r.returncode != 0 and r.stderr.startswith(b"usage: ") and b"Traceback" not in r.stderr


def test_bad_model_folders(export_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no exports/ here
    code, _, err = run_main(capsys, ["x"])
    assert code != 0 and "no model under exports/" in err and "python export.py" in err
    code, _, err = run_main(capsys, ["--model", "nowhere", "x"])
    assert code != 0 and "nowhere: no such folder" in err
    old = tmp_path / "old"
    shutil.copytree(export_dir[0], old)
    meta = json.load(open(old / "export.json"))
    json.dump(dict(meta, format_version=999), open(old / "export.json", "w"))
    code, _, err = run_main(capsys, ["--model", str(old), "x"])
    assert code == 2 and "format_version 999" in err and f"reads version {scoring.FORMAT_VERSION}" in err
    json.dump({k: v for k, v in meta.items() if k != "policies"}, open(old / "export.json", "w"))
    code, _, err = run_main(capsys, ["--model", str(old), "x"])
    assert code == 2 and err.strip() == f"error: {old / 'export.json'}: missing key(s) policies", err
    json.dump(meta, open(old / "export.json", "w"))
    (old / "model.int8.onnx").write_bytes(b"garbage")
    code, _, err = run_main(capsys, ["--model", str(old), "--runtime", "onnxruntime-int8", "x"])
    assert code != 0 and "cannot load" in err and len(err.strip().splitlines()) == 1
    os.makedirs(tmp_path / "exports")
    shutil.copytree(export_dir[0], tmp_path / "exports" / "tiny")  # the default: the newest export
    code, out, err = run_main(capsys, ["--json", "x"])
    assert code == 0 and f"model: {os.path.join('exports', 'tiny', 'model')}" in err


# ----------------------------------------------------------------------------
# evaluate.py

def test_evaluate_auc_matches_sklearn(export_dir, tmp_path, capsys):
    from sklearn.metrics import f1_score, roc_auc_score

    from data import read_csv
    m, probs, labels = evaluate.run(export_dir[0], data=SAMPLE)
    printed = capsys.readouterr().out
    ds = read_csv(SAMPLE)
    independent = scoring.score_texts(scoring.load_model(export_dir[0]), ds.texts, progress=False)
    aucs = [roc_auc_score(ds.labels[:, j], independent[:, j]) for j in range(len(LABELS))]
    assert m["aucroc_macro"] == pytest.approx(np.mean(aucs), abs=1e-9)
    assert [m[f"auc_{n}"] for n in LABELS] == pytest.approx(aucs, abs=1e-9)
    assert f"mean ROC AUC {np.mean(aucs):.4f}" in printed
    th = served_thresholds(export_dir[0])
    tuned = f1_score(ds.labels, independent >= np.array([th[n] for n in LABELS]), average="macro", zero_division=0)
    assert m["macro_f1_tuned"] == pytest.approx(tuned, abs=1e-9)

    # Kaggle's test set: rows labelled -1 are not scored, but the submission has every row.
    ids = ds.ids[:60]
    with open(tmp_path / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "comment_text"]] + [[i, t] for i, t in zip(ids, ds.texts[:60])])
    with open(tmp_path / "test_labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", *LABELS]] + [[i, *([-1] * 6 if k % 3 == 0 else ds.labels[k])]
                                                     for k, i in enumerate(ids)])
    evaluate.main(["--model", export_dir[0], "--test", str(tmp_path / "test.csv"), "--test_labels",
                   str(tmp_path / "test_labels.csv"), "--submission", str(tmp_path / "sub.csv")])
    assert "40 rows" in capsys.readouterr().out
    sub = list(csv.reader(open(tmp_path / "sub.csv")))
    assert sub[0] == ["id", *LABELS] and [r[0] for r in sub[1:]] == ids


def test_a_file_streams_block_by_block_in_input_order(export_dir, tmp_path, capsys, monkeypatch):
    """Blocks of 3 comments: the same rows, scores and order as one block, and the submission is whole."""
    texts = [f"comment number {i} " + "you idiot " * (i % 4) for i in range(10)]
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
    argv = ["--model", export_dir[0], "--runtime", "onnxruntime-fp32", "--json", "--file", str(tmp_path / "c.txt")]
    code, whole, _ = run_main(capsys, argv + ["--out", str(tmp_path / "one.csv")])
    monkeypatch.setattr(predict, "BLOCK", 3)
    code2, streamed, err = run_main(capsys, argv + ["--out", str(tmp_path / "blocks.csv")])
    assert code == code2 == 0 and "scored 9 comments" in err and "scored 10 comments" in err
    one, blocks = json_lines(whole.encode()), json_lines(streamed.encode())
    assert [o["index"] for o in blocks] == list(range(10)) and [o["text"] for o in blocks] == texts
    for a, b in zip(one, blocks):  # fp32 scores do not depend on the batch a window lands in
        assert all(abs(a["scores"][n] - b["scores"][n]) <= 1e-5 for n in LABELS)
    rows = list(csv.reader(open(tmp_path / "blocks.csv")))
    assert rows[0] == ["id", *LABELS] and [r[0] for r in rows[1:]] == [str(i) for i in range(10)]


def test_a_repeated_id_in_a_later_block_leaves_no_submission(export_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(predict, "BLOCK", 2)
    (tmp_path / "c.csv").write_text("id,comment_text\na,x\nb,y\nc,z\na,again\n")
    code, _, err = run_main(capsys, ["--model", export_dir[0], "--file", str(tmp_path / "c.csv"),
                                     "--out", str(tmp_path / "sub.csv")])
    assert code == 2 and "duplicate id 'a' (comments 1 and 4)" in err.strip().splitlines()[-1]
    assert not (tmp_path / "sub.csv").exists() and not list(tmp_path.glob("sub.csv*"))
