"""train.py end to end on the tiny model: outputs, Aim, resume, accumulation; and one quality run."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from checkpoint import CHECKPOINT_VERSION, load_checkpoint
from common import LABELS
from config import load_config
from conftest import ROOT, SHARED_TRAIN, max_diff, run_train, tiny_args, weights_of


def test_short_run_writes_checkpoints_predictions_and_aim_run(tiny_encoder, tmp_path):
    out, repo = tmp_path / "run", tmp_path / "aim"
    r = run_train(tiny_args(tiny_encoder, out, aim="true", aim_repo=repo, max_steps=4, eval_every=2))
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"max_steps": 4' in r.stdout and "samples/s" in r.stdout and "eta" in r.stdout
    best, last = load_checkpoint(str(out / "best.pt")), load_checkpoint(str(out / "last.pt"))
    assert best["config"]["max_steps"] == 4 and last["step"] == 4 and "optimizer" in last
    assert set(best) >= {"version", "model", "model_config", "config", "step", "metrics", "validation"}
    assert best["version"] == last["version"] == CHECKPOINT_VERSION == 2
    assert "optimizer" not in best and "thresholds" not in best and "thresholds" not in last  # export.py fits them
    assert best["model_config"]["labels"] == list(LABELS) and "num_labels" not in best["model_config"]
    assert 0 <= best["metrics"]["aucroc_macro"] <= 1 and "auc_threat" in best["metrics"]
    # best.pt keeps its validation rows' logits and labels (what export.py calibrates on); last.pt has none
    assert best["validation"]["logits"].shape == best["validation"]["labels"].shape == (80, 6)
    assert "validation" not in last
    preds = np.load(out / "val_predictions.npz")
    assert preds["probs"].shape == preds["labels"].shape == (80, 6) and len(preds["ids"]) == 80
    assert list(preds["label_names"]) == list(LABELS) and preds["thresholds"].shape == (6,)
    assert np.allclose(preds["logits"], best["validation"]["logits"].numpy())
    assert np.array_equal(preds["labels"], best["validation"]["labels"].numpy())
    assert not list(out.glob("*.tmp"))
    run = json.load(open(out / "run.json"))
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "aim"), "storage", "--repo", str(repo),
                    "reindex", "-y"], check=True, capture_output=True)
    import aim
    aim_run = aim.Run(run_hash=run["aim_hash"], repo=str(repo), read_only=True)
    assert aim_run["hparams"]["max_steps"] == 4 and aim_run["hparams"]["pooling"] == "cls"
    metrics = {(m.name, m.context.to_dict()["subset"]): list(m.values.values_list()) for m in aim_run.metrics()
               if not m.name.startswith("__")}
    assert len(metrics[("train_loss", "train")]) == 2  # logged at steps 2 and 4
    assert len(metrics[("eval_aucroc_macro", "val")]) == 2 and ("eval_macro_f1", "val") in metrics
    assert len(metrics[("eval_f1_threat_tuned", "val")]) == 2  # per-label tuned F1 too


# train.py run with os.replace wrapped from the outside: it freezes while replacing an existing checkpoint,
# so the test can SIGKILL it mid-write (after the new file is fsynced, before the rename)
FROZEN_IN_SAVE = """
import os, runpy, sys, time
real_replace = os.replace
def replace_or_freeze(src, dst, *a, **k):
    if str(dst).endswith(".pt") and os.path.exists(dst):
        open({flag!r}, "w").close()
        time.sleep(3600)
    real_replace(src, dst, *a, **k)
os.replace = replace_or_freeze
sys.argv = ["train.py", *sys.argv[1:]]
sys.path.insert(0, {root!r})
runpy.run_path(os.path.join({root!r}, "train.py"), run_name="__main__")
"""


def test_killed_during_checkpoint_write_then_resumed_gives_the_same_weights(tiny_encoder, tmp_path):
    args = dict(max_steps=9, eval_every=3)
    ref = tmp_path / "ref"
    assert run_train(tiny_args(tiny_encoder, ref, **args)).returncode == 0
    out, flag = tmp_path / "killed", tmp_path / "paused"
    script = FROZEN_IN_SAVE.format(flag=str(flag), root=ROOT)
    proc = subprocess.Popen([sys.executable, "-c", script, *tiny_args(tiny_encoder, out, **args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):  # it freezes while replacing a checkpoint written at step 3
        if flag.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert flag.exists(), "the training never reached a checkpoint replacement"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(str(out / "last.pt"))["step"] == 3  # the old checkpoint is intact
    r = run_train(tiny_args(tiny_encoder, out, **args) + ["--resume"])
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-2000:]
    assert max_diff(weights_of(ref / "last.pt"), weights_of(out / "last.pt")) <= 1e-6
    assert load_checkpoint(str(ref / "best.pt"))["metrics"] == load_checkpoint(str(out / "best.pt"))["metrics"]


def test_resume_takes_the_new_learning_rates_and_keeps_the_horizon(tiny_encoder, tmp_path):
    out = tmp_path / "run"
    assert run_train(tiny_args(tiny_encoder, out, max_steps=3, eval_every=3)).returncode == 0
    r = run_train(tiny_args(tiny_encoder, out, max_steps=5, eval_every=3, lr=2e-4, head_lr=3e-4, weight_decay=0.1)
                  + ["--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    last = load_checkpoint(str(out / "last.pt"))
    groups = last["optimizer"]["param_groups"]  # the optimizer's moments come back; its lrs are the config's
    assert {g["peak_lr"] for g in groups} == {2e-4, 3e-4} and {g["weight_decay"] for g in groups} == {0.1, 0.0}
    assert last["state"]["horizon"] == 5  # where the schedule ends: a budget's resume goes on from it


def test_a_budget_run_resumes_with_its_last_horizon_until_it_has_timed_steps(tiny_encoder, tmp_path):
    """Before, a resumed budget run took total_steps as its horizon for 5 steps: its lr jumped."""
    from checkpoint import save_checkpoint
    out = tmp_path / "run"
    assert run_train(tiny_args(tiny_encoder, out, max_steps=3, eval_every=3)).returncode == 0
    ckpt = load_checkpoint(str(out / "last.pt"))
    ckpt["state"]["horizon"] = 10  # as if a budget had sized the schedule to end at step 10
    save_checkpoint(ckpt, str(out / "last.pt"))
    r = run_train(tiny_args(tiny_encoder, out, max_steps=12, max_minutes=600, log_every=1, eval_every=100)
                  + ["--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 4/10 " in r.stdout and "step 8/10 " in r.stdout  # the saved horizon, for 5 timed steps
    assert "step 9/12 " in r.stdout  # then the budget's own estimate (600 min: all 12 steps fit)


def test_resume_with_other_samples_per_step_is_refused(tiny_encoder, tmp_path):
    out = tmp_path / "run"
    assert run_train(tiny_args(tiny_encoder, out, max_steps=3, eval_every=3)).returncode == 0
    r = run_train(tiny_args(tiny_encoder, out, max_steps=5, batch_size=8) + ["--resume"])
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "trained with 16 samples per step, this config gives 8" in r.stderr


def test_unloadable_encoder_or_device_is_one_line_exit_2(tiny_encoder, tmp_path):
    r = run_train(tiny_args(tmp_path / "no_such_encoder", tmp_path / "run"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"encoder '{tmp_path / 'no_such_encoder'}': cannot load it" in r.stderr
    import torch
    if not torch.cuda.is_available():
        r = run_train(tiny_args(tiny_encoder, tmp_path / "run", device="cuda"))
        assert r.returncode == 2 and "device 'cuda': no CUDA device here" in r.stderr and "Traceback" not in r.stderr


def test_accumulation_equals_one_big_batch(tiny_encoder, tmp_path):
    from train import train
    results = {}
    for bs, accum in ((8, 1), (2, 4)):
        cfg, _ = load_config(tiny_args(tiny_encoder, tmp_path / f"b{bs}", batch_size=bs, accum_steps=accum,
                                       dropout=0.0, max_steps=3, eval_every=3))
        train(cfg)
        results[bs] = weights_of(tmp_path / f"b{bs}" / "last.pt")
    assert max_diff(results[8], results[2]) <= 1e-5


def test_validation_reads_eval_max_length_tokens_training_max_length(tiny_encoder, tmp_path, monkeypatch):
    import data
    import train
    import validation
    seen = {"val_batches": []}
    real_eval, real_pad = train.validate, data.pad_batch

    def spy_val_pad(seqs, *a, **k):
        seen["val_batches"].append((len(seqs), max(len(s) for s in seqs)))
        return real_pad(seqs, *a, **k)

    def spy_eval(model, seqs, val_idx, *a, **k):  # validation.validate, as train.validate_and_save calls it
        seen["val"] = max(len(seqs[i]) for i in val_idx)
        return real_eval(model, seqs, val_idx, *a, **k)

    def spy_pad(seqs, *a, **k):
        seen["train"] = max(seen.get("train", 0), max(len(s) for s in seqs))
        return real_pad(seqs, *a, **k)
    monkeypatch.setattr(train, "validate", spy_eval)
    monkeypatch.setattr(data, "pad_batch", spy_pad)  # what data.micro_batches pads training batches with
    monkeypatch.setattr(validation, "pad_batch", spy_val_pad)
    cfg, _ = load_config(tiny_args(tiny_encoder, tmp_path / "r", max_length=16, eval_max_length=64,
                                   truncation="head_tail", max_steps=2, eval_every=2, eval_batch_size=8))
    train.train(cfg)
    assert seen["train"] == 16 and 16 < seen["val"] <= 64  # the sample data has comments past 16 tokens
    # no validation batch wider in tokens than eval_batch_size rows at the training length (8 x 16)
    assert seen["val_batches"] and all(n * width <= 8 * 16 or n == 1 for n, width in seen["val_batches"])
    assert max(n for n, _ in seen["val_batches"]) == 8 and min(n for n, _ in seen["val_batches"]) < 8


def test_kernel_caches_are_capped_unless_the_user_set_them(monkeypatch):
    import device
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "x")  # so that monkeypatch restores its absence
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "512")
    device.cap_kernel_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "16" and os.environ["LRU_CACHE_CAPACITY"] == "512"


def test_lengths_beyond_the_encoders_positions_fail_before_tokenizing(tiny_encoder, tmp_path):
    r = run_train(tiny_args(tiny_encoder, tmp_path / "r", eval_max_length=600))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "eval_max_length 600" in r.stderr and "512 tokens" in r.stderr
    assert not os.path.exists(str(tmp_path / "r") + "_cache")  # nothing tokenized


@pytest.mark.skipif(not os.path.exists(SHARED_TRAIN), reason="../shared/data/jigsaw/train.csv is not here")
def test_quality_mini_on_2000_real_rows(tmp_path):
    """MiniLM learns the real task: validation mean AUC >= 0.90 after ~2 minutes on 2 cores."""
    subset = tmp_path / "train2000.csv"
    with open(SHARED_TRAIN, newline="", encoding="utf-8") as src, open(subset, "w", newline="", encoding="utf-8") as dst:
        rows = csv.reader(src)
        writer = csv.writer(dst)
        for i, row in enumerate(rows):
            if i > 2000:
                break
            writer.writerow(row)
    r = run_train(["configs/mini.json", "--data_path", str(subset), "--out_dir", str(tmp_path / "q"), "--aim", "false",
                   "--cache_dir", str(tmp_path / "cache"), "--precision", "fp32", "--max_length", "64",
                   "--max_steps", "70", "--warmup_steps", "5", "--eval_every", "70"])
    assert r.returncode == 0, r.stderr[-2000:]
    auc = load_checkpoint(str(tmp_path / "q" / "best.pt"))["metrics"]["aucroc_macro"]
    print(f"mini.json, 2000 real rows, 70 steps: val mean AUC {auc:.4f}")
    assert auc >= 0.90
