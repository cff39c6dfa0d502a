"""Fault injection during training: kills at any moment, SIGTERM and Ctrl-C, non-finite losses. Each is
survived, or ends in one line and a non-zero exit; a resumed run ends as conftest's uninterrupted tiny_run
(6 steps, checkpoints at 3 and 6, a log line every 2) within 1e-6. Subprocesses only where a real signal
is needed; the rest runs in this process. Corrupt checkpoints, Aim and disk faults: test_faults_io.py."""
import itertools
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import train
from checkpoint import load_checkpoint
from conftest import (ROOT, aim_closed, aim_hash_of, all_checkpoints_whole, same_as_reference, tiny_args,
                      train_in_process, train_main)


def _signal_on(needle, sig, args, tmp_path, timeout=180):
    """train.py in a subprocess, sent sig as soon as a stdout line holds needle -> (exit code, stderr)."""
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if needle in line:
                proc.send_signal(sig)
                break
        proc.communicate()
        watchdog.cancel()
        assert lines and needle in lines[-1], "".join(lines)[-2000:]
        err.seek(0)
        return proc.returncode, err.read()


# ----------------------------------------------------------------------------
# killed at any moment

SAVER = """
import sys, torch
sys.path.insert(0, {root!r})
from checkpoint import CHECKPOINT_VERSION, save_checkpoint
for i in range(10**6):
    save_checkpoint({{"version": CHECKPOINT_VERSION, "model": {{"w": torch.full((1_000_000,), float(i))}},
                     "model_config": {{}}, "i": i}}, sys.argv[1])
    print(i, flush=True)
"""


def test_sigkill_at_an_arbitrary_moment_never_leaves_half_a_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", SAVER.format(root=ROOT), str(path)], stdout=subprocess.PIPE,
                            text=True)
    proc.stdout.readline()  # one checkpoint is whole; the kill lands in a later write, fsync or rename
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    ckpt = load_checkpoint(str(path))
    assert ckpt["i"] >= 0 and (ckpt["model"]["w"] == ckpt["i"]).all()


def test_sigkill_before_the_first_checkpoint(tiny_encoder, tmp_path, capsys):
    """--resume refuses clearly (there is nothing to resume); a fresh start closes the killed Aim run."""
    out, repo = tmp_path / "run", tmp_path / "aim"
    args = tiny_args(tiny_encoder, out, aim="true", aim_repo=repo, eval_every=6)
    _signal_on("step 2/6", signal.SIGKILL, args, tmp_path)
    assert not (out / "last.pt").exists()
    killed = aim_hash_of(out)
    assert not aim_closed(repo, killed)

    code, _, err = train_main(capsys, args + ["--resume"])
    assert code == 2 and err.strip().splitlines() == [
        f"error: {out}/last.pt: no checkpoint to resume from (the first is written at step eval_every, or at "
        f"the end if sooner); start again without --resume"]

    train_in_process(tiny_args(tiny_encoder, out, aim="true", aim_repo=repo, max_steps=1, eval_every=1))
    assert f"aim: closed run {killed}, left open by a training that was killed" in capsys.readouterr().out
    assert aim_closed(repo, killed) and aim_hash_of(out) != killed and aim_closed(repo, aim_hash_of(out))


def test_sigkill_between_checkpoints_then_resume_is_exact(tiny_encoder, tiny_run, tmp_path):
    out, repo = tmp_path / "run", tmp_path / "aim"
    args = tiny_args(tiny_encoder, out, aim="true", aim_repo=repo)
    _signal_on("step 4/6", signal.SIGKILL, args, tmp_path)  # after the checkpoint of step 3
    assert load_checkpoint(str(out / "last.pt"))["step"] == 3
    all_checkpoints_whole(out)
    run_hash = aim_hash_of(out)
    assert not aim_closed(repo, run_hash)

    train_in_process(args, resume=True)
    same_as_reference(out, tiny_run)
    assert aim_hash_of(out) == run_hash and aim_closed(repo, run_hash)  # the same run goes on, then ends


# ----------------------------------------------------------------------------
# SIGTERM and Ctrl-C

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_last_pt_closes_aim_and_resume_is_exact(tiny_encoder, tiny_run, tmp_path, sig):
    out, repo = tmp_path / "run", tmp_path / "aim"
    args = tiny_args(tiny_encoder, out, aim="true", aim_repo=repo)
    code, err = _signal_on("step 4/6", sig, args, tmp_path)
    assert code == 128 + sig and "Traceback" not in err
    step = load_checkpoint(str(out / "last.pt"))["step"]
    assert step in (4, 5) and err.strip().splitlines()[-1] == (
        f"stopped: {sig.name} at step {step}; last.pt written, continue with --resume")
    assert aim_closed(repo, aim_hash_of(out))

    train_in_process(args, resume=True)
    same_as_reference(out, tiny_run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_starting_is_one_line(tiny_encoder, tmp_path, monkeypatch, capsys, sig):
    import data
    real_read_csv, handler = data.read_csv, signal.getsignal(signal.SIGTERM)

    def read_csv(*a, **k):  # the signal arrives while the data is read, before the loop's handler
        os.kill(os.getpid(), sig)
        return real_read_csv(*a, **k)
    monkeypatch.setattr(data, "read_csv", read_csv)
    # A shell starts background jobs (`pytest &`) with SIGINT ignored, and Python then keeps it ignored:
    # give this process Ctrl-C as a terminal would, for this test only.
    old_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, _, err = train_main(capsys, tiny_args(tiny_encoder, tmp_path / "run"))
    finally:
        signal.signal(signal.SIGINT, old_sigint)
    assert code == 130 and err == "stopped: interrupted while starting; nothing new to resume from\n"
    assert signal.getsignal(signal.SIGTERM) is handler  # main() gives the caller's handler back


# ----------------------------------------------------------------------------
# non-finite losses

def _poison(monkeypatch, bad_steps):
    """The model's training forward passes (one per step here) return nan logits at bad_steps."""
    real_build = train.build_model

    def build(*a, **k):
        model = real_build(*a, **k)
        forward, calls = model.forward, itertools.count()

        def poisoned(ids, mask):
            logits = forward(ids, mask)
            if torch.is_grad_enabled() and next(calls) in bad_steps:  # evaluation runs without grad
                logits = logits * float("nan")
            return logits
        model.forward = poisoned
        return model
    monkeypatch.setattr(train, "build_model", build)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_persistent_nan_stops_with_exit_3_keeping_the_good_checkpoint(tiny_encoder, tmp_path, monkeypatch, capsys,
                                                                     precision):
    _poison(monkeypatch, range(3, 1000))
    out = tmp_path / "run"
    code, stdout, err = train_main(capsys, tiny_args(tiny_encoder, out, precision=precision, max_bad_steps=3))
    assert code == 3
    assert err.strip().splitlines()[-1] == (f"stopped: step 5: 3 consecutive non-finite steps; stopping. "
                                            f"The last good checkpoints are kept in {out}")
    assert [f"warning: step {s}: non-finite loss or gradient, step skipped ({s - 2}/3)" for s in (3, 4, 5)] == [
        line for line in stdout.splitlines() if line.startswith("warning: step")]
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(str(out / name))
        assert ckpt["step"] == 3 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_single_nan_step_is_skipped_and_training_goes_on(tiny_encoder, tmp_path, monkeypatch, capsys, precision):
    """fp16: the GradScaler skips it (and lowers its scale); otherwise train_step skips it."""
    _poison(monkeypatch, {1})
    out = tmp_path / "run"
    train_in_process(tiny_args(tiny_encoder, out, precision=precision))
    assert "warning: step 1: non-finite loss or gradient, step skipped (1/5)" in capsys.readouterr().out
    ckpt = load_checkpoint(str(out / "last.pt"))
    assert ckpt["step"] == 6 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    applied = int(ckpt["optimizer"]["state"][0]["step"])  # AdamW counts the updates it made
    if precision == "fp16":
        assert ckpt["scaler"]["scale"] < 2.0 ** 16 and applied <= 5  # it backed off from its initial scale
    else:
        assert applied == 5  # 6 steps, the poisoned one skipped
