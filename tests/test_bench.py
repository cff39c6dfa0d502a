"""bench/: each benchmark's --quick mode (tiny random model, sample data, a handful of steps) runs as a
subprocess and writes a well-formed Markdown table and JSON. Structure only: timings are never asserted
(DEVELOPERS.md), only what holds on any machine (padding, parity, one-line errors)."""
import ast
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import LABELS, ROOT, SAMPLE

VERDICTS = {"met", "missed", "n/a", "reported"}


def run_bench(name, out, *extra):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", f"{name}.py"), "--quick", "--out", str(out),
                        *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    with open(os.path.join(out, f"{name}.quick.json")) as f:
        data = json.load(f)
    assert os.path.isfile(os.path.join(out, f"{name}.quick.md"))
    return r.stdout, data


def tables(markdown):
    """Every Markdown table in the text -> list of (header, rows), each checked for shape."""
    found, block = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            header, sep, *rows = block
            assert all(set(c) <= {"-", ":"} and c for c in sep), block
            assert rows and all(len(r) == len(header) == len(sep) for r in rows), block
            found.append((header, rows))
            block = []
    return found


def check_common(stdout, data, name, n_variants):
    found = tables(stdout)
    results, targets = found[0], next(t for t in found if t[0] == ["target", "measured", "verdict"])
    assert len(results[1]) == n_variants and targets[0] == ["target", "measured", "verdict"]
    assert data["name"] == name and data["mode"] == "quick"
    assert data["machine"]["physical_cores"] >= 1 and data["machine"]["cpu"]
    assert data["peak"]["fp32_gflops"] > 0 and data["peak"]["bf16_gflops"] > 0
    assert len(data["variants"]) == n_variants and all(v["variant"] for v in data["variants"])
    assert data["targets"] and all(t["verdict"] in VERDICTS for t in data["targets"])
    assert [t[2] for t in targets[1]] == [t["verdict"] for t in data["targets"]]


# ----------------------------------------------------------------------------

def test_train_speed_quick(tmp_path):
    stdout, data = run_bench("train_speed", tmp_path)
    check_common(stdout, data, "train_speed", 8)
    a, b, c, c1, c2, c3, c4, d = data["variants"]
    for v in (a, b):
        assert v["samples_per_s"] > 0 and v["peak_rss_mb"] > 0 and v["steps"] == data["measured_steps"]
        assert 0 <= v["mfu_fp32_peak"] and 0 < v["val_auc"] <= 1
    assert a["padding_fraction"] > b["padding_fraction"]  # padded to max_length against grouped
    for v in (c, c1, c2, c4, d):  # bf16 rows: skipped together where the CPU has no bf16
        assert ("skipped" in v) == (not data["machine"]["torch_bf16_cpu"])
    for v in (a, b, c, c1, c2, c3, c4, d):
        if "skipped" not in v:
            assert v["user_s"] > 0 and v["sys_s"] >= 0 and v["minor_faults"] >= 0 and 0 <= v["sys_fraction"] <= 1
    assert "skipped" in d or d["compile"] and not c["compile"]
    kernel = tables(stdout)[1]
    assert kernel[0][:3] == ["variant", "samples/s", "user s"] and len(kernel[1]) == 6


def test_predict_speed_quick(tmp_path, tiny_run):
    import runtimes
    stdout, data = run_bench("predict_speed", tmp_path, "--checkpoint", str(tiny_run / "best.pt"))
    skipped = (not data["machine"]["torch_bf16_cpu"]) + (not runtimes.installed("openvino"))
    check_common(stdout, data, "predict_speed", 14 - skipped)  # 7 variants x 2 batches; a skipped one is 1 row
    assert sorted({v["batch"] for v in data["variants"] if "batch" in v}) == [1, 32]
    b32 = {v["variant"]: v for v in data["variants"] if v.get("batch") == 32}
    choice = [v for v in b32.values() if v["choice"]]  # measured through predict.py, named by its runtime
    assert len(choice) == 1 and choice[0]["variant"].startswith("predict.py's choice (")
    files = {f["variant"]: f for f in data["files"]}
    assert len(files) == 5 - (not runtimes.installed("openvino"))
    assert all(f["rows"] == 100 and f["comments_per_s"] > 0 and f["peak_rss_mb"] > 0 for f in files.values())
    assert b32["PyTorch eager fp32"]["max_abs_diff_vs_eager"] == 0
    for name in ("onnxruntime fp32", "onnxruntime fp32 + transformer fusions"):  # the same model, exported
        assert b32[name]["max_abs_diff_vs_eager"] < 1e-4
        # the tiny random model's scores nearly tie, and its calibration slope (up to 16) stretches 1e-6 logit
        # differences into rank flips among them: the max abs diff above is the parity check, AUC a sanity one
        assert b32[name]["mean_auc"] == pytest.approx(b32["PyTorch eager fp32"]["mean_auc"], abs=0.03)
    assert data["fused_ops"].get("Attention")  # the eager-attention export is what lets attention fuse


def test_cold_start_quick(tmp_path, tiny_run):
    stdout, data = run_bench("cold_start", tmp_path, "--checkpoint", str(tiny_run / "best.pt"))
    import runtimes
    check_common(stdout, data, "cold_start", 5 - (not runtimes.installed("openvino")))
    by_name = {v["variant"]: v for v in data["variants"]}
    assert data["variants"][0]["default"] and data["variants"][-1]["variant"].startswith("torch")
    assert by_name["predict.py --runtime onnxruntime-fp32"]["max_abs_diff_vs_torch"] < 1e-4  # the same prediction
    assert all(v["max_abs_diff_vs_torch"] < 0.05 for v in data["variants"])  # int8 and bf16 close to it
    assert all(v["wall_s"] > 0 and v["peak_rss_mb"] > 0 for v in data["variants"])


def test_gpu_step_quick(tmp_path):
    stdout, data = run_bench("gpu_step", tmp_path)
    check_common(stdout, data, "gpu_step", 5)
    v = data["variants"]
    assert v[0]["padding_fraction"] > v[1]["padding_fraction"] and v[2]["compile"] and v[4]["compile"]
    assert [x["batch_size"] for x in v] == [4, 4, 4, 16, 16] and all(x["fused_adamw"] for x in v)
    assert v[4]["pad_multiple"] == 64 and v[4]["graphs_warmup"] >= 1 and v[1]["graphs_warmup"] == 0


def test_calibration_quick(tmp_path):
    """A tiny run's decisions before and after calibration, cross-fitted: a row per figure and rates, every label."""
    stdout, data = run_bench("calibration", tmp_path)
    (run,) = data["runs"].values()
    for rates in ("enriched", "kaggle"):
        assert set(run["cross_fitted"][rates]) == {"f1_before", "f1_after", "f1_argmax", "f1_oracle", "ece_before",
                                                   "ece_after"}
        assert all(len(v) == len(LABELS) for v in run["cross_fitted"][rates].values())
    assert set(run["policies"]) == {"f1", "precision", "recall"} and set(run["calibration"]["a"]) == set(LABELS)
    (header, rows), (p_header, p_rows) = tables(stdout)
    assert header == ["rates", "figure", *LABELS, "mean"] and len(rows) == 8
    assert p_header == ["policy", "label", "threshold", "precision", "recall"] and len(p_rows) == 3 * len(LABELS)


def test_serve_load_quick(tmp_path, export_dir):
    """serve.py under every level of clients: each request answered once, as the API scores it."""
    stdout, data = run_bench("serve_load", tmp_path, "--model", export_dir[0])
    assert [lv["clients"] for lv in data["levels"]] == [1, 8, 32, 128]
    for run in data["levels"] + [data["rss_run"]]:
        assert run["requests"] == run["ok"] == run["scored"] > 0
        assert run["max_abs_diff"] < 0.05  # int8 moves with the batch; fp32 would be ~1e-6
    assert data["targets"] and all(t["verdict"] in VERDICTS for t in data["targets"])
    assert tables(stdout)[0][0][0] == "load"


def test_missing_checkpoint_is_one_line(tmp_path):
    for name in ("predict_speed", "cold_start"):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", f"{name}.py"), "--checkpoint",
                            str(tmp_path / "none.pt"), "--out", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "no such checkpoint" in r.stderr and "python train.py configs/mini.json" in r.stderr


def test_quality_quick(tmp_path):
    """TF-IDF+LR and one budgeted training run on the sample data: a row each in both tables and the JSON. Run from
    another folder (the config's relative data_path must not matter), leaving no temporary folder."""
    out, tmp = tmp_path / "quality.json", tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality.py"), "--quick", "--out", str(out),
                        "--weight_decay", "0.0", "--out_dir", str(tmp_path / "run")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp)})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    # its tiny encoder and token cache went with its mkdtemp folder (torch's compile cache may stay)
    assert not [f for f in os.listdir(tmp) if f.startswith("quality-quick-")], os.listdir(tmp)
    assert f"config overrides: --weight_decay 0.0 --out_dir {tmp_path / 'run'}" in r.stdout
    (header, rows), (f1_header, f1_rows), (fair_header, fair_rows) = tables(r.stdout)
    assert [row[0] for row in rows] == ["TF-IDF+LR", "mini"] and header[2] == "mean AUC"
    # the model run, exported and scored on the project's identity and functional sets
    assert fair_header[:3] == ["setup", "BPSN pm", "BNSP pm"] and [row[0] for row in fair_rows] == ["mini"]
    # the per-label F1 table ends in the macro F1 tuned of the main table, which is its mean
    assert f1_header[2:] == [*LABELS, "macro F1 tuned"] and [row[0] for row in f1_rows] == ["TF-IDF+LR", "mini"]
    for f1_row, row in zip(f1_rows, rows):
        assert float(f1_row[-1].split()[0]) == pytest.approx(float(row[header.index("macro F1 tuned")]), abs=6e-4)
    data = json.load(open(out))
    assert [row["name"] for row in data["rows"]] == ["TF-IDF+LR", "mini"]
    for row in data["rows"]:
        assert 0 <= row["metrics"]["aucroc_macro"] <= 1 and row["samples_seen"] > 0
    assert data["rows"][1]["peak_rss_mb"] > 0
    fairness = data["rows"][1]["fairness"]
    assert fairness["bias"]["identities"] == 44 and len(fairness["functional"]) == 12
    assert r.stdout.count("mean AUC >= TF-IDF + 0.010: ") == 1  # the targets, checked for the model row
    assert data["overrides"] == ["--weight_decay", "0.0", "--out_dir", str(tmp_path / "run")]
    run = json.load(open(os.path.join(data["rows"][1]["out_dir"], "run.json")))
    assert run["config"]["weight_decay"] == 0.0  # the override reached the training run


def test_quality_bad_override_is_one_line(tmp_path):
    """A config override with a wrong type, or one --out_dir for two runs, fails before anything trains."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality.py"), "--quick", "--out",
                        str(tmp_path / "q.json"), "--dropout", "abc"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == ["error: --dropout expects float, got 'abc'"]
    assert not (tmp_path / "q.json").exists()
    # one --out_dir for two runs would leave only the last run's folder
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality.py"), "--minutes", "1", "2",
                        "--out_dir", str(tmp_path / "run"), "--out", str(tmp_path / "q.json")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "error: --out_dir names one run folder: give one --config and one --minutes with it"]


def quality_error(args, cwd=ROOT):
    """bench/quality.py failing -> its one stderr line (exit 2, no traceback)."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality.py"), *args], cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = r.stderr.strip().splitlines()
    return line


def test_quality_bad_inputs_are_one_line(tmp_path):
    """Budgets that are no budget, a data file that is not Kaggle's and a data_path override fail in one
    line before anything trains (no --out written)."""
    out = str(tmp_path / "q.json")
    assert quality_error(["--minutes", "0", "--out", out]) == "error: --minutes must be > 0, got 0"
    assert quality_error(["--minutes", "15", "-1", "--out", out]) == "error: --minutes must be > 0, got 15 -1"
    bad = tmp_path / "bad.csv"
    bad.write_text("id,comment_text\n1,hello\n")
    line = quality_error(["--data", str(bad), "--minutes", "1", "--out", out])
    assert line.startswith(f"error: {bad}: row 1 (header): missing column(s) toxic")
    assert quality_error(["--data_path", str(bad), "--out", out]).startswith("error: --data_path: give it as --data")
    assert not os.path.exists(out)


def test_quality_checks_configs_with_data_and_minutes(tmp_path, tiny_run):
    """The early check builds each config as training will, with --data and each --minutes: a config whose
    own data_path is missing from here is fine with --data. --runs folders: a run.json without
    config.max_minutes only loses its budget (a warning); an unreadable one is a one-line error."""
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"data_path": "no/such/train.csv", "dropout": 0.0}))
    old = tmp_path / "old_run"
    old.mkdir()
    shutil.copy(tiny_run / "val_predictions.npz", old)
    (old / "run.json").write_text(json.dumps({"config": {"pooling": "cls"}}))
    out = tmp_path / "q.json"
    args = ["--config", str(cfg), "--data", SAMPLE, "--minutes", "5", "10", "--out", str(out), "--runs"]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality.py"), *args, str(tiny_run), str(old)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"warning: {old / 'run.json'}: no config.max_minutes" in r.stderr
    rows = json.load(open(out))["rows"]
    assert [row["name"] for row in rows] == ["TF-IDF+LR", "tiny", "old_run"] and rows[2]["minutes"] is None
    assert rows[1]["metrics"] == rows[2]["metrics"]
    (old / "run.json").write_text("{not json")
    line = quality_error([*args, str(old)], cwd=tmp_path)
    assert line.startswith(f"error: {old / 'run.json'}: unreadable")


def test_quality_keeps_the_configs_epoch_cap_under_the_budget():
    """Budget-only training overfits the 44k rows (4.1 epochs in 60 bf16 minutes: below TF-IDF+LR on two
    labels), so the bare command must train the configs' recipe: their 1.5 epochs, or less if time runs out."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from quality import check_configs

    for name in ("mini.json", "mini_average.json"):
        cfg = check_configs([os.path.join(ROOT, "configs", name)], [60.0], SAMPLE, "runs/quality", [])
        assert (cfg.epochs, cfg.max_steps, cfg.max_minutes, cfg.warmup_steps) == (1.5, 0, 60.0, 180)
    cfg = check_configs([os.path.join(ROOT, "configs", "mini.json")], [60.0], SAMPLE, "runs/quality", ["--epochs", "2"])
    assert cfg.epochs == 2.0  # a flag still overrides it


def test_quality_default_out_is_not_a_committed_result():
    """Without --out the JSON goes beside the run folders, in git-ignored runs/, never over bench/results/."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from quality import default_out

    for quick in (False, True):
        assert os.path.relpath(default_out(quick), ROOT).split(os.sep)[:2] == ["runs", "quality"]
    assert "runs/" in open(os.path.join(ROOT, ".gitignore")).read().split()


@pytest.mark.parametrize("name, args, flag", [("cold_start", ["--runs", "0"], "--runs"),
                                              ("predict_speed", ["--rows", "0"], "--rows"),
                                              ("predict_speed", ["--batch1_rows", "0"], "--batch1_rows"),
                                              ("gpu_step", ["--steps", "0"], "--steps")])
def test_bench_counts_below_one_are_one_line(tmp_path, name, args, flag):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", f"{name}.py"), *args, "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and flag in line and ">= 1" in line
    assert os.listdir(tmp_path) == []


def test_margin_intervals_pair_the_rows():
    """The margin's interval is exactly 0 for a model equal to the baseline, and above 0 for a better one."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from quality import margin_intervals

    rng = np.random.default_rng(0)
    labels = (rng.random((400, 6)) < 0.2).astype(np.uint8)
    base = np.clip(labels * 0.3 + rng.random((400, 6)) * 0.7, 0, 1)   # informative but noisy
    better = np.clip(labels * 0.6 + rng.random((400, 6)) * 0.4, 0, 1)  # separates the classes fully
    th = np.full(6, 0.5)
    same = margin_intervals({"probs": base, "labels": labels, "thresholds": th}, base, th, resamples=200)
    assert same == {"aucroc_macro": (0.0, 0.0), "macro_f1_tuned": (0.0, 0.0)}
    up = margin_intervals({"probs": better, "labels": labels, "thresholds": th}, base, th, resamples=200)
    assert 0 < up["aucroc_macro"][0] <= up["aucroc_macro"][1] and 0 < up["macro_f1_tuned"][0]


def test_quality_runs_rescores_a_finished_run(tmp_path):
    """--runs scores a run folder's saved predictions: the same metrics and interval as when it trained
    (in the folder an --out_dir override chose); a folder without predictions is a one-line error."""
    out, run_dir = tmp_path / "quality.json", str(tmp_path / "my_run")
    script = os.path.join(ROOT, "bench", "quality.py")
    r = subprocess.run([sys.executable, script, "--quick", "--out", str(out), "--out_dir", run_dir], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    trained = json.load(open(out))["rows"][1]
    assert trained["out_dir"] == run_dir
    lo, hi = trained["margin_ci"]["aucroc_macro"]
    assert lo <= hi and "AUC margin 95% CI" in r.stdout and "(margin " in r.stdout
    again = tmp_path / "again.json"
    r = subprocess.run([sys.executable, script, "--quick", "--out", str(again), "--runs", trained["out_dir"]],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.load(open(again))["rows"][1]
    # validation loss needs the model, and the figures at base rates a calibration fit: not rescored
    scored = {k: v for k, v in trained["metrics"].items() if k != "loss" and not k.endswith("_at_rates")}
    assert row["metrics"] == scored and row["margin_ci"] == trained["margin_ci"]
    assert row["name"] == os.path.basename(trained["out_dir"]) and row["samples_seen"] is None
    r = subprocess.run([sys.executable, script, "--quick", "--out", str(again), "--runs", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    missing = os.path.join(str(tmp_path), "val_predictions.npz")
    assert r.returncode != 0 and "Traceback" not in r.stderr  # (--quick first builds its tiny encoder)
    assert r.stderr.strip().splitlines()[-1] == f"error: {missing}: no such file (train.py writes it at each evaluation)"
    (tmp_path / "val_predictions.npz").write_text("not an npz")
    r = subprocess.run([sys.executable, script, "--quick", "--out", str(again), "--runs", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {missing}: not a readable val_predictions.npz")


@pytest.mark.parametrize("kind, code, line", [
    ("stopped", 143, "stopped: SIGTERM at step 7; last.pt written, continue with --resume"),
    ("ctrl-c", 130, "stopped: interrupted"),
    ("disk", 4, "error: out.json: No space left on device")])
def test_a_stopped_training_in_a_benchmark_exits_as_train_py_does(capsys, kind, code, line):
    """A 60-minute quality run stopped by SIGTERM says so in one line with train.py's code, no traceback."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from common import Stopped
    from harness import main_guard
    exc = {"stopped": Stopped("SIGTERM at step 7; last.pt written, continue with --resume", 143),
           "ctrl-c": KeyboardInterrupt(), "disk": OSError(28, "No space left on device", "out.json")}[kind]

    def run(argv):
        raise exc
    with pytest.raises(SystemExit) as e:
        main_guard(run)
    assert e.value.code == code and capsys.readouterr().err == line + "\n"


def test_gpu_profile_quick(tmp_path):
    """bench/gpu_profile.py (gpu_check.sh's profiler count) keeps running: eager and compiled, per-step counts."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_profile.py"), "--quick", "--out",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    data = json.load(open(tmp_path / "gpu_profile.quick.json"))
    assert [v["steps"] for v in data["variants"]] == [2, 2] and all(v["syncs_per_step"] == 0 for v in data["variants"])


# ----------------------------------------------------------------------------
# what the bench takes from the project


def bench_sources():
    """Every bench script, and the scripts it runs with `python -c` (module-level *_SCRIPT strings) -> (name, ast)."""
    for f in sorted(os.listdir(os.path.join(ROOT, "bench"))):
        if f.endswith(".py"):
            tree = ast.parse(open(os.path.join(ROOT, "bench", f), encoding="utf-8").read(), f)
            yield f, tree
            for node in tree.body:
                if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                        and any(isinstance(t, ast.Name) and t.id.endswith("_SCRIPT") for t in node.targets)):
                    yield f"{f}:{node.targets[0].id}", ast.parse(node.value.value)


def defined_in(module):
    """The names a project module defines itself (def, class, assignment at its top level): not the ones it
    imports, so a name that moved away (data.LABELS, now common's) is not found where it was."""
    tree = ast.parse(open(os.path.join(ROOT, f"{module}.py"), encoding="utf-8").read())
    names, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            todo += [x for h in getattr(node, "handlers", []) for x in h.body]
    return names


def test_bench_uses_only_names_the_project_has_and_patches_none():
    """Each name the bench imports from a project module (or reads off one: predict.score) is defined there, every
    module it imports exists; nothing comes from tests/, and no project module's attribute is assigned (a patched
    module measures something else)."""
    import importlib.util
    project = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    bench = {f[:-3] for f in os.listdir(os.path.join(ROOT, "bench")) if f.endswith(".py")}
    known = lambda m: m in project or m in bench or importlib.util.find_spec(m) is not None  # noqa: E731
    missing, patched, from_tests = [], [], []
    for name, tree in bench_sources():
        modules = {}  # local name -> project module, for `import X [as Y]`
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    top = a.name.split(".")[0]
                    from_tests += [name] if top in ("conftest", "tests") else []
                    missing += [] if known(top) else [f"{name}: import {a.name}"]
                    if a.name in project:
                        modules[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                top = node.module.split(".")[0]
                from_tests += [name] if top in ("conftest", "tests") else []
                missing += [] if known(top) else [f"{name}: from {node.module} import ..."]
                if node.module in project:
                    missing += [f"{name}: from {node.module} import {a.name}" for a in node.names
                                if a.name not in defined_in(node.module)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                mod = modules[node.value.id]
                if isinstance(node.ctx, ast.Store):
                    patched.append(f"{name}: {mod}.{node.attr} assigned")
                elif node.attr not in defined_in(mod):
                    missing.append(f"{name}: {mod}.{node.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
                patched.append(f"{name}: setattr at line {node.lineno}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "conftest" in node.value:
                from_tests.append(name)
    assert not missing and not patched and not from_tests, (missing, patched, from_tests)
