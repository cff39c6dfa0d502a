"""serve.py as a real process on 127.0.0.1, over real HTTP: both endpoints against the Python API (fp32, so
to 1e-5), Perspective's shape field by field, concurrent requests each getting their own answer, limits and
malformed bodies as JSON 4xx naming the field, odd and huge comments, and SIGTERM with requests in flight."""
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from api import PERSPECTIVE, attributes
from classifier import Classifier
from common import LABELS
from conftest import ROOT

SERVE = os.path.join(ROOT, "serve.py")


class Server:
    """serve.py on a free loopback port; its stderr collected by a thread (so the pipe never fills)."""

    def __init__(self, model_dir, *args):
        self.proc = subprocess.Popen([sys.executable, SERVE, "--model", model_dir, "--runtime", "onnxruntime-fp32",
                                      "--port", "0", *args], stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines = []
        for line in self.proc.stderr:
            self.lines.append(line)
            if "listening on http://" in line:
                self.port = int(line.rsplit(":", 1)[1])
                break
        else:
            raise AssertionError("serve.py did not start: " + "".join(self.lines))
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def request(self, method, path, body=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, raw if raw is not None else None if body is None else json.dumps(body),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.reader.join(10)
        return code


@pytest.fixture(scope="module")
def server(export_dir):
    s = Server(export_dir[0], "--batch_wait_ms", "50", "--max_chars", "2000000")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def api(export_dir):
    return Classifier(export_dir[0], runtime="onnxruntime-fp32")


def same(a, b, tol=1e-5):
    """Two Classifier dicts alike: scores to tol, the same labels and spans."""
    assert a["labels"] == b["labels"] and {n: (s["begin"], s["end"]) for n, s in a["spans"].items()} == \
        {n: (s["begin"], s["end"]) for n, s in b["spans"].items()}
    assert max(abs(a["scores"][n] - b["scores"][n]) for n in LABELS) <= tol


# ----------------------------------------------------------------------------
# round trips

def test_classify_round_trip(server, api):
    texts = ["you are an idiot", "thanks for fixing the citation", "", "🙂🙂🙂 Привет 世界", "word " * 900]
    code, body = server.request("POST", "/v1/classify", {"texts": texts})
    assert code == 200 and list(body) == ["results"] and len(body["results"]) == len(texts)
    for got, ref in zip(body["results"], api.predict(texts)):
        same(got, ref)
    code, body = server.request("POST", "/v1/classify", {"texts": texts[:1], "thresholds": {"toxic": 0.0}})
    assert code == 200 and "toxic" in body["results"][0]["labels"] and body["results"][0]["spans"]["toxic"]["end"] == 16


def test_perspective_shape_field_by_field(server, api):
    text = "the weather is nice today and the river is calm. " * 40 + "you are an idiot"
    req = {"comment": {"text": text, "type": "PLAIN_TEXT"}, "languages": ["en"], "doNotStore": True,
           "clientToken": "t-1", "requestedAttributes": {"TOXICITY": {}, "INSULT": {"scoreType": "PROBABILITY"},
                                                         "IDENTITY_ATTACK": {"scoreThreshold": 1.0}}}
    code, body = server.request("POST", "/v1alpha1/comments:analyze", req)
    assert code == 200, body
    assert set(body) == {"attributeScores", "languages", "detectedLanguages", "clientToken"}
    assert body["languages"] == ["en"] and body["clientToken"] == "t-1"
    assert set(body["attributeScores"]) == {"TOXICITY", "INSULT"}  # IDENTITY_ATTACK is under its scoreThreshold
    ref = api.predict([text], windows=True)[0]
    for attr, label in (("TOXICITY", "toxic"), ("INSULT", "insult")):
        a = body["attributeScores"][attr]
        assert set(a) == {"summaryScore", "spanScores"}
        assert set(a["summaryScore"]) == {"value", "type"} and a["summaryScore"]["type"] == "PROBABILITY"
        assert abs(a["summaryScore"]["value"] - ref["scores"][label]) <= 1e-5
        assert len(a["spanScores"]) == len(ref["windows"]) > 1
        for span, w in zip(a["spanScores"], ref["windows"]):
            assert set(span) == {"begin", "end", "score"} and (span["begin"], span["end"]) == (w["begin"], w["end"])
            assert span["score"]["type"] == "PROBABILITY" and abs(span["score"]["value"] - w["scores"][label]) <= 1e-5
        assert a["spanScores"][-1]["end"] == len(text)
        assert abs(max(s["score"]["value"] for s in a["spanScores"]) - a["summaryScore"]["value"]) <= 1e-7


def test_health_and_model(server, export_dir):
    code, body = server.request("GET", "/health")
    assert code == 200 and body["status"] == "ok" and body["in_flight"] == 0
    code, body = server.request("GET", "/v1/model")
    meta = json.load(open(os.path.join(export_dir[0], "export.json")))
    assert code == 200 and body["labels"] == meta["labels"] and "thresholds" not in body
    assert body["policies"] == meta["policies"] and body["default_policy"] == meta["default_policy"] == "f1"
    assert body["serving"]["default_thresholds"] == meta["policies"]["f1"]["thresholds"]  # what it decides at
    assert body["versions"] == meta["versions"] and body["checkpoint"]["validation_metrics"]
    assert body["serving"]["runtime"] == "onnxruntime-fp32" and body["serving"]["limits"]["max_texts"] == 64


def test_concurrent_requests_get_their_own_answers(server, api):
    """40 requests at once, each a different comment (some long, so batches mix lengths): each answer is
    its own text's, and they shared model calls."""
    texts = [f"comment {i}: " + ("you are an idiot " if i % 3 else "thanks for the edit ") * (1 + (i * 37) % 300)
             for i in range(40)]
    _, before = server.request("GET", "/health")
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda t: server.request("POST", "/v1/classify", {"texts": [t]}), texts))
    _, after = server.request("GET", "/health")
    for (code, body), ref in zip(answers, api.predict(texts)):
        assert code == 200
        same(body["results"][0], ref)
    assert after["texts_scored"] - before["texts_scored"] == 40
    assert after["model_calls"] - before["model_calls"] < 40  # micro-batched
    assert any("batch=" in line and "batch=1\n" not in line for line in server.lines)


def test_odd_and_huge_comments(server, api):
    texts = ["", "   ", "🙂" * 500, "\x00\x07 bell \u2028 sep", "Привет 世界 مرحبا שלום नमस्ते", "\ud800 lone"]
    code, body = server.request("POST", "/v1/classify", {"texts": texts})
    assert code == 200 and len(body["results"]) == len(texts)
    for got, ref in zip(body["results"], api.predict(texts)):
        same(got, ref)
    huge = ("you are an idiot 🙂 Привет 世界 thanks " * 40000)[:1_000_000]  # a megabyte comment
    code, body = server.request("POST", "/v1alpha1/comments:analyze",
                                {"comment": {"text": huge}, "requestedAttributes": {"TOXICITY": {}}})
    assert code == 200 and body["attributeScores"]["TOXICITY"]["spanScores"][-1]["end"] == len(huge.rstrip())


# ----------------------------------------------------------------------------
# limits and malformed requests

@pytest.mark.parametrize("path, body, code, field, message", [
    ("/v1/classify", {"texts": ["x"] * 65}, 413, "texts", "texts: 65 texts, over the limit of 64"),
    ("/v1/classify", {"texts": ["ok", "x" * 2_000_001]}, 413, "texts[1]", "2,000,001 characters, over the limit"),
    ("/v1/classify", {"texts": []}, 400, "texts", "expected a non-empty list"),
    ("/v1/classify", {"texts": "hello"}, 400, "texts", "expected a non-empty list"),
    ("/v1/classify", {"texts": ["ok", None]}, 400, "texts[1]", "texts[1]: expected a string, got NoneType"),
    ("/v1/classify", {"text": ["x"]}, 400, "text", "'text': unknown field; expected texts, policy, thresholds"),
    ("/v1/classify", [1, 2], 400, "body", "body: expected a JSON object"),
    ("/v1/classify", {"texts": ["x"], "policy": "strict"}, 400, "policy", "unknown policy; this export has f1"),
    ("/v1/classify", {"texts": ["x"], "thresholds": 2}, 400, "thresholds", "thresholds: 2 is not a number in [0, 1]"),
    ("/v1/classify", {"texts": ["x"], "thresholds": {"tox": 0.1}}, 400, "thresholds", "unknown label 'tox'"),
    ("/v1alpha1/comments:analyze", {"comment": {"text": "x"}}, 400, "requestedAttributes", "at least one of"),
    ("/v1alpha1/comments:analyze", {"comment": {"text": "x"}, "requestedAttributes": {"FLIRTATION": {}}}, 400,
     "requestedAttributes.FLIRTATION", "not an attribute of this model; it has TOXICITY, SEVERE_TOXICITY"),
    ("/v1alpha1/comments:analyze", {"comment": {}, "requestedAttributes": {"TOXICITY": {}}}, 400, "comment.text",
     "comment.text: expected a string"),
    ("/v1alpha1/comments:analyze", {"comment": {"text": "x", "type": "HTML"}, "requestedAttributes": {"TOXICITY": {}}},
     400, "comment.type", "only PLAIN_TEXT"),
    ("/v1alpha1/comments:analyze", {"comment": {"text": "x"}, "languages": ["de"], "requestedAttributes":
                                    {"TOXICITY": {}}}, 400, "languages", "English (en) only"),
    ("/v1alpha1/comments:analyze", {"comment": {"text": "x"}, "requestedAttributes":
                                    {"THREAT": {"scoreThreshold": 7}}}, 400, "requestedAttributes.THREAT.scoreThreshold",
     "7 is not in [0, 1]"),
])
def test_limits_and_bad_bodies_are_json_4xx(server, path, body, code, field, message):
    got, answer = server.request("POST", path, body)
    assert got == code and answer["error"]["code"] == code and answer["error"]["field"] == field
    assert message in answer["error"]["message"], answer


def test_malformed_json_big_bodies_and_wrong_routes(server):
    code, body = server.request("POST", "/v1/classify", raw=b'{"texts": ["x"')
    assert code == 400 and body["error"]["field"] == "body" and "not valid JSON" in body["error"]["message"]
    code, body = server.request("POST", "/v1/classify", raw=b"\xff\xfe")
    assert code == 400 and "not valid JSON" in body["error"]["message"]
    code, body = server.request("POST", "/v1/classify", raw=b" " * (8 << 20) + b"{}")  # over --max_body
    assert code == 413 and body["error"]["field"] == "body" and "over the limit of 8,388,608" in body["error"]["message"]
    code, body = server.request("GET", "/v1/classify")
    assert code == 405 and body["error"]["code"] == 405
    code, body = server.request("GET", "/nowhere")
    assert code == 404 and "GET /nowhere" in body["error"]["message"]
    log = [line for line in server.lines if "POST /v1/classify" in line]
    assert log and all(" ms" in line for line in log)  # one line per request, with its latency


# ----------------------------------------------------------------------------
# start-up errors and SIGTERM

def test_sigterm_answers_every_request_in_flight(export_dir, api):
    """12 requests are held in one batch (a long --batch_wait_ms); SIGTERM arrives while they wait: every one
    is answered, right, and the server exits as a SIGTERM'd process does, after saying so."""
    s = Server(export_dir[0], "--batch_wait_ms", "3000")
    texts = [f"request {i}: you are an idiot" for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(s.request, "POST", "/v1/classify", {"texts": [t]}) for t in texts]
        for _ in range(600):  # until the server holds all 12 (bounded: the futures would show a failure)
            if s.request("GET", "/health")[1]["in_flight"] == 12:
                break
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        answers = [f.result() for f in futures]
    code = s.proc.wait(60)
    s.reader.join(10)
    for (status, body), ref in zip(answers, api.predict(texts)):
        assert status == 200
        same(body["results"][0], ref)
    assert code in (-signal.SIGTERM, 128 + signal.SIGTERM), "".join(s.lines)
    assert "stopped after" in "".join(s.lines) and "Traceback" not in "".join(s.lines)


def test_startup_errors_are_one_line(export_dir, tmp_path):
    r = subprocess.run([sys.executable, SERVE, "--model", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "no such folder" in r.stderr
    s = Server(export_dir[0])
    try:
        r = subprocess.run([sys.executable, SERVE, "--model", export_dir[0], "--port", str(s.port)],
                           capture_output=True, text=True)
        assert r.returncode == 2 and f"--port {s.port}: cannot listen" in r.stderr and "Traceback" not in r.stderr
    finally:
        s.stop()
    r = subprocess.run([sys.executable, SERVE, "--max_texts", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--max_texts must be >= 1" in r.stderr


def test_a_format_version_1_export_is_refused(export_dir, tmp_path):
    """An export from before format_version 2 (top-level thresholds, no policies): one line, exit 2, naming its
    export.json and saying to re-export it; the server never listens."""
    shutil.copytree(export_dir[0], tmp_path / "old")
    meta = json.load(open(tmp_path / "old" / "export.json"))
    old = {k: v for k, v in meta.items() if k not in ("policies", "default_policy", "calibration", "base_rates",
                                                      "validation_at_base_rates")}
    old.update(format_version=1, thresholds=meta["policies"]["f1"]["thresholds"], default_model="int8")
    json.dump(old, open(tmp_path / "old" / "export.json", "w"))
    r = subprocess.run([sys.executable, SERVE, "--model", str(tmp_path / "old"), "--port", "0"], capture_output=True,
                       text=True, timeout=120)
    path = tmp_path / "old" / "export.json"
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {path}: format_version 1, this project reads version 2: re-export it with this project's export.py"], \
        r.stderr


def test_perspective_attributes_follow_the_exports_labels():
    """Jigsaw's labels under Perspective's names, in label order; any other label under its own name in capitals,
    and a label the export lacks is not offered."""
    assert attributes(LABELS) == {attr: label for attr, label in PERSPECTIVE.items()}
    assert list(attributes(LABELS).values()) == list(LABELS)
    assert attributes(["insult", "spam", "toxic"]) == {"INSULT": "insult", "SPAM": "spam", "TOXICITY": "toxic"}


def test_serve_load_quick(export_dir, tmp_path):
    """bench/serve_load.py --quick on the tiny export: every level, the baseline and the targets, and no
    request lost (structure only: no timing is asserted)."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "serve_load.py"), "--model", export_dir[0],
                        "--runtime", "onnxruntime-fp32", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    data = json.load(open(tmp_path / "serve_load.quick.json"))
    assert [lv["clients"] for lv in data["levels"]] == [1, 8, 32, 128]
    assert all(lv["ok"] == lv["requests"] == lv["scored"] for lv in data["levels"])
    assert all(lv["max_abs_diff"] <= 1e-5 for lv in data["levels"])  # fp32: batch-independent
    lost = next(t for t in data["targets"] if t["target"].startswith("requests lost"))
    assert lost["measured"] == 0 and lost["verdict"] == "met" and data["predict_file"]["per_s"] > 0
    assert "| 32 client(s) |" in r.stdout and "predict.py --file" in r.stdout
