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

from config import load_config
from conftest import ROOT, SHARED_TRAIN, run_train, tiny_args
from model import load_checkpoint, model_from_checkpoint


def _weights(path):
    return load_checkpoint(str(path))["model"]


def _max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_short_run_writes_checkpoints_predictions_and_aim_run(tiny_encoder, tmp_path):
    out, repo = tmp_path / "run", tmp_path / "aim"
    r = run_train(tiny_args(tiny_encoder, out, aim="true", aim_repo=repo, max_steps=4, eval_every=2))
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"max_steps": 4' in r.stdout and "samples/s" in r.stdout and "eta" in r.stdout
    best, last = load_checkpoint(str(out / "best.pt")), load_checkpoint(str(out / "last.pt"))
    assert best["config"]["max_steps"] == 4 and last["step"] == 4 and "optimizer" in last
    assert set(best) >= {"model", "model_config", "config", "step", "metrics", "thresholds"}
    assert "optimizer" not in best and len(best["thresholds"]) == 6
    assert 0 <= best["metrics"]["aucroc_macro"] <= 1 and "auc_threat" in best["metrics"]
    preds = np.load(out / "val_predictions.npz")
    assert preds["probs"].shape == preds["labels"].shape == (80, 6) and len(preds["ids"]) == 80
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


def test_oversample_lengthens_the_epoch_by_the_repeated_rows(tiny_encoder, tmp_path):
    """The sample's 720 training rows hold 142 with a rare positive: 3 copies make 1,004 rows an epoch."""
    r = run_train(tiny_args(tiny_encoder, tmp_path / "run", max_steps=0, epochs=0.1, oversample=3, eval_every=100))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "720 train / 80 val rows, 62 steps per epoch, 7 steps" in r.stdout  # 1004 // 16 = 62
    assert ("oversample 3: 142 rows with a rare positive (severe_toxic, threat, identity_hate) -> "
            "1004 samples per epoch") in r.stdout


def test_layer_lr_decay_gives_each_layer_a_fraction_of_the_one_above(tiny_encoder):
    from dataclasses import replace

    from model import build_model
    from optim import make_optimizer

    model = build_model(tiny_encoder, dropout=0.0)  # 2 layers
    cfg, _ = load_config(["--data_path", os.path.join(ROOT, "data", "sample", "train.csv"), "--lr", "1e-4",
                          "--head_lr", "1e-3", "--layer_lr_decay", "0.5"])
    lr_of = {id(p): g["peak_lr"] for g in make_optimizer(model, cfg, fused=False).param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(lr_of) == len(names)  # every parameter in exactly one group
    expected = {"encoder.embeddings.word_embeddings.weight": 2.5e-5, "encoder.encoder.layer.0.output.dense.weight": 5e-5,
                "encoder.encoder.layer.1.output.dense.weight": 1e-4, "head.0.weight": 1e-3}
    for name, lr in expected.items():
        assert lr_of[id(names[name])] == pytest.approx(lr), name
    flat = make_optimizer(model, replace(cfg, layer_lr_decay=1.0, head_lr=1e-4), fused=False).param_groups
    # off: encoder and head, each with and without weight decay, holding the same tensors in the same
    # order as before the key existed, so an older last.pt's optimizer state still loads
    before = [[p for p in part.parameters() if (p.ndim < 2) == small] for part in (model.encoder, model.head)
              for small in (False, True)]
    assert [[id(p) for p in g["params"]] for g in flat] == [[id(p) for p in ps] for ps in before]
    assert [(g["peak_lr"], g["weight_decay"]) for g in flat] == [(1e-4, 0.01), (1e-4, 0.0)] * 2


def test_update_ema_ramps_its_decay_then_holds_it():
    import torch

    from optim import update_ema

    ema, model = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        for p in ema.parameters():
            p.fill_(1.0)
        for p in model.parameters():
            p.fill_(0.0)
    update_ema(ema, model, 0.998, step=0)  # d = 1/10: the first steps are mostly forgotten
    assert ema.weight.tolist() == [[pytest.approx(0.1)] * 2] and ema.bias.item() == pytest.approx(0.1)
    update_ema(ema, model, 0.998, step=90)  # still on the ramp: d = 91/100
    assert ema.bias.item() == pytest.approx(0.1 * 0.91)
    update_ema(ema, model, 0.998, step=10_000)  # the ramp (10001/10010) is past 0.998: d = 0.998
    assert ema.bias.item() == pytest.approx(0.1 * 0.91 * 0.998)


def test_ema_is_what_best_pt_holds_and_last_pt_keeps_both(tiny_encoder, tmp_path):
    out = tmp_path / "run"
    r = run_train(tiny_args(tiny_encoder, out, max_steps=4, eval_every=4, ema_decay=0.9))
    assert r.returncode == 0, r.stderr[-2000:]
    best, last = load_checkpoint(str(out / "best.pt")), load_checkpoint(str(out / "last.pt"))
    assert _max_diff(best["model"], last["ema"]) == 0  # the average was validated and saved
    assert _max_diff(last["model"], last["ema"]) > 0 and "ema" not in best
    # rebuilt from last.pt (export.py --checkpoint), a model carries the weights its metrics describe
    assert _max_diff(model_from_checkpoint(last).state_dict(), last["ema"]) == 0


def test_ema_switched_on_at_resume_starts_from_the_trained_weights(tiny_encoder, tmp_path):
    out = tmp_path / "run"
    assert run_train(tiny_args(tiny_encoder, out, max_steps=3, eval_every=3)).returncode == 0
    r = run_train(tiny_args(tiny_encoder, out, max_steps=4, eval_every=3, ema_decay=0.9) + ["--resume"])
    assert r.returncode == 0 and "'ema_decay': (0.0, 0.9)" in r.stdout, r.stderr[-2000:]
    last = load_checkpoint(str(out / "last.pt"))  # one update at step 3, d = 4/13, from the step-3 weights
    assert last["step"] == 4 and _max_diff(last["model"], last["ema"]) > 0


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_killed_during_checkpoint_write_then_resumed_gives_the_same_weights(tiny_encoder, tmp_path, ema_decay):
    args = dict(max_steps=9, eval_every=3, ema_decay=ema_decay)
    ref = tmp_path / "ref"
    assert run_train(tiny_args(tiny_encoder, ref, **args)).returncode == 0
    out, flag = tmp_path / "killed", tmp_path / "paused"
    env = {**os.environ, "TOXIC_TEST_PAUSE_IN_SAVE": str(flag)}
    proc = subprocess.Popen([sys.executable, "train.py", *tiny_args(tiny_encoder, out, **args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):  # it freezes while replacing a checkpoint written at step 3
        if flag.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert flag.exists(), "the training never reached the checkpoint hook"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(str(out / "last.pt"))["step"] == 3  # the old checkpoint is intact
    r = run_train(tiny_args(tiny_encoder, out, **args) + ["--resume"])
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-2000:]
    assert _max_diff(_weights(ref / "last.pt"), _weights(out / "last.pt")) <= 1e-6
    if ema_decay:  # the moving average resumes where it was, too
        ref_ema, out_ema = (load_checkpoint(str(d / "last.pt"))["ema"] for d in (ref, out))
        assert _max_diff(ref_ema, out_ema) <= 1e-6
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
    from model import save_checkpoint
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
        results[bs] = _weights(tmp_path / f"b{bs}" / "last.pt")
    assert _max_diff(results[8], results[2]) <= 1e-5


def test_validation_reads_eval_max_length_tokens_training_max_length(tiny_encoder, tmp_path, monkeypatch):
    import train
    seen = {}
    real_eval, real_pad = train.run_eval, train.pad_batch

    def spy_eval(model, seqs, val_idx, *a, **k):
        seen["val"] = max(len(seqs[i]) for i in val_idx)
        return real_eval(model, seqs, val_idx, *a, **k)

    def spy_pad(seqs, *a, **k):
        seen["train"] = max(seen.get("train", 0), max(len(s) for s in seqs))
        return real_pad(seqs, *a, **k)
    monkeypatch.setattr(train, "run_eval", spy_eval)
    monkeypatch.setattr(train, "pad_batch", spy_pad)
    cfg, _ = load_config(tiny_args(tiny_encoder, tmp_path / "r", max_length=16, eval_max_length=64,
                                   truncation="head_tail", max_steps=2, eval_every=2))
    train.train(cfg)
    assert seen["train"] == 16 and 16 < seen["val"] <= 64  # the sample data has comments past 16 tokens


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
