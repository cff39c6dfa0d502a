"""Fault injection: kills at any moment, SIGTERM and Ctrl-C, non-finite losses, corrupt checkpoints,
Aim problems, a full disk. Each is survived, or ends in one line naming the file and a non-zero exit;
a resumed run ends as conftest's uninterrupted tiny_run (6 steps, checkpoints at 3 and 6, a log line
every 2) within 1e-6. Subprocesses only where a real signal is needed; the rest runs in this process."""
import errno
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import train
from config import load_config
from conftest import ROOT, SAMPLE, tiny_args
from model import load_checkpoint
from test_train import _max_diff, _weights
from tracking import TrackingError, make_tracker


def _train(args, resume=False):
    cfg, _ = load_config(args)
    return train.train(cfg, resume)


def _main(capsys, args):
    """train.main in this process -> (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        train.main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return e.value.code, out, err


def _same_as_reference(out, ref):
    assert _max_diff(_weights(ref / "last.pt"), _weights(out / "last.pt")) <= 1e-6
    assert load_checkpoint(str(ref / "best.pt"))["metrics"] == load_checkpoint(str(out / "best.pt"))["metrics"]
    assert load_checkpoint(str(ref / "last.pt"))["metrics"] == load_checkpoint(str(out / "last.pt"))["metrics"]


def _all_checkpoints_whole(out):
    for p in out.glob("*.pt"):  # a temporary file may be left by a kill, never half a file under a final name
        load_checkpoint(str(p))


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


def _aim_hash(out):
    return json.load(open(out / "run.json"))["aim_hash"]


def _aim_closed(repo, run_hash):
    """Closed: no soft lock left and an end time set (read from the run's container: no reindex needed).
    A killed run has its lock and no end time: 'active' in the UI for ever unless someone closes it."""
    import aim
    meta = aim.Repo.from_path(str(repo)).request_tree("meta", run_hash, read_only=True).subtree("meta")
    end = meta.subtree("chunks").subtree(run_hash).get("end_time")
    lock = os.path.exists(os.path.join(repo, ".aim", "locks", f"{run_hash}.softlock"))
    assert lock == (end is None), (lock, end)
    return not lock


# ----------------------------------------------------------------------------
# killed at any moment

SAVER = """
import sys, torch
sys.path.insert(0, {root!r})
from model import save_checkpoint
for i in range(10**6):
    save_checkpoint({{"model": {{"w": torch.full((1_000_000,), float(i))}}, "model_config": {{}}, "i": i}}, sys.argv[1])
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
    killed = _aim_hash(out)
    assert not _aim_closed(repo, killed)

    code, _, err = _main(capsys, args + ["--resume"])
    assert code == 2 and err.strip().splitlines() == [
        f"error: {out}/last.pt: no checkpoint to resume from (the first is written at step eval_every); "
        f"start again without --resume"]

    _train(tiny_args(tiny_encoder, out, aim="true", aim_repo=repo, max_steps=1, eval_every=1))
    assert f"aim: closed run {killed}, left open by a training that was killed" in capsys.readouterr().out
    assert _aim_closed(repo, killed) and _aim_hash(out) != killed and _aim_closed(repo, _aim_hash(out))


def test_sigkill_between_checkpoints_then_resume_is_exact(tiny_encoder, tiny_run, tmp_path):
    out, repo = tmp_path / "run", tmp_path / "aim"
    args = tiny_args(tiny_encoder, out, aim="true", aim_repo=repo)
    _signal_on("step 4/6", signal.SIGKILL, args, tmp_path)  # after the checkpoint of step 3
    assert load_checkpoint(str(out / "last.pt"))["step"] == 3
    _all_checkpoints_whole(out)
    run_hash = _aim_hash(out)
    assert not _aim_closed(repo, run_hash)

    _train(args, resume=True)
    _same_as_reference(out, tiny_run)
    assert _aim_hash(out) == run_hash and _aim_closed(repo, run_hash)  # the same run goes on, then ends


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
    assert _aim_closed(repo, _aim_hash(out))

    _train(args, resume=True)
    _same_as_reference(out, tiny_run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_starting_is_one_line(tiny_encoder, tmp_path, monkeypatch, capsys, sig):
    real_read_csv, handler = train.read_csv, signal.getsignal(signal.SIGTERM)

    def read_csv(*a, **k):  # the signal arrives while the data is read, before the loop's handler
        os.kill(os.getpid(), sig)
        return real_read_csv(*a, **k)
    monkeypatch.setattr(train, "read_csv", read_csv)
    code, _, err = _main(capsys, tiny_args(tiny_encoder, tmp_path / "run"))
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
    code, stdout, err = _main(capsys, tiny_args(tiny_encoder, out, precision=precision, max_bad_steps=3))
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
    _train(tiny_args(tiny_encoder, out, precision=precision))
    assert "warning: step 1: non-finite loss or gradient, step skipped (1/5)" in capsys.readouterr().out
    ckpt = load_checkpoint(str(out / "last.pt"))
    assert ckpt["step"] == 6 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    if precision == "fp16":
        assert ckpt["scaler"]["scale"] < 2.0 ** 16  # it backed off from its initial scale


# ----------------------------------------------------------------------------
# corrupt checkpoints: --resume, export.py, evaluate.py (compare.py's: test_compare.py)

class Boom:
    """A pickle that would run a shell command when loaded without weights_only."""
    marker = None

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _corrupt(kind, good, path, tmp_path):
    """Write a broken checkpoint of the given kind to path -> the text its error must contain."""
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "code":
        Boom.marker = tmp_path / "pwned"
        torch.save({"model": Boom(), "model_config": {}}, path)
    if kind in ("truncated", "empty", "random", "code"):
        return "unreadable checkpoint"
    ckpt = torch.load(good, weights_only=True)
    if kind == "best_pt":
        ckpt = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scaler", "state")}
        torch.save(ckpt, path)
        return "cannot resume from it: no optimizer, scaler, state (best.pt holds the weights only"
    ckpt["model"]["head.3.weight"] = torch.zeros(7, 32)  # kind == "other_model": another head
    torch.save(ckpt, path)
    return ("does not fit this model and config (Error(s) in loading state_dict for ToxicClassifier: size mismatch "
            "for head.3.weight: copying a param with shape torch.Size([7, 32]) from checkpoint")


@pytest.mark.parametrize("kind", ["truncated", "empty", "random", "code", "best_pt", "other_model"])
def test_corrupt_last_pt_on_resume_is_one_line(tiny_encoder, tiny_run, tmp_path, capsys, kind):
    out = tmp_path / "run"
    out.mkdir()
    needle = _corrupt(kind, tiny_run / "last.pt", out / "last.pt", tmp_path)
    code, stdout, err = _main(capsys, tiny_args(tiny_encoder, out) + ["--resume"])
    last_line = err.strip().splitlines()[-1]  # after transformers' progress bar where the model was built
    assert code == 2 and last_line.startswith(f"error: {out}/last.pt: ") and needle in last_line, err
    if kind != "other_model":  # refused before the data is read
        assert len(err.strip().splitlines()) == 1 and "data " not in stdout
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", ["truncated", "code"])
def test_corrupt_checkpoint_given_to_export_is_one_line(tiny_run, tmp_path, capsys, kind):
    import export
    ckpt = tmp_path / "best.pt"
    needle = _corrupt(kind, tiny_run / "best.pt", ckpt, tmp_path)
    with pytest.raises(SystemExit) as e:
        export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "export")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and f"error: {ckpt}: {needle}" in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "export").exists()


def test_corrupt_model_given_to_evaluate_is_one_line(tiny_encoder, tmp_path, capsys):
    import evaluate
    import predict
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(os.path.join(tiny_encoder, "tokenizer.json"), folder / "tokenizer.json")
    json.dump({"format_version": predict.FORMAT_VERSION, "labels": list(train.LABELS), "max_length": 128,
               "thresholds": {n: 0.5 for n in train.LABELS}, "models": {"fp32": "model.onnx"},
               "tokenizer": "tokenizer.json", "prefix_ids": [101], "suffix_ids": [102], "pad_id": 0},
              open(folder / "export.json", "w"))
    (folder / "model.onnx").write_bytes(b"\x08\x07" + os.urandom(3000))  # truncated protobuf
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--model", str(folder), "--data", SAMPLE])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {folder}: cannot load tokenizer.json or model.onnx")


# ----------------------------------------------------------------------------
# Aim: unwritable, locked, failing mid-run

@pytest.mark.parametrize("kind, why", [("under_a_file", "Not a directory"), ("proc", "No such file or directory"),
                                       ("dot_aim_is_a_file", "Not a directory"), ("read_only", "Permission denied")])
def test_unwritable_aim_repo_is_refused_before_training(tiny_encoder, tmp_path, capsys, kind, why):
    repo = tmp_path / "aim"  # chmod means nothing to root: the first three fail for root too
    if kind == "under_a_file":
        (tmp_path / "file").write_text("")
        repo = tmp_path / "file" / "aim"
    elif kind == "proc":
        repo = "/proc/aim"
    elif kind == "dot_aim_is_a_file":
        repo.mkdir()
        (repo / ".aim").write_text("")
    elif os.geteuid() == 0:
        pytest.skip("root writes through chmod 0o500; the other cases cover root")
    else:
        repo.mkdir()
        repo.chmod(0o500)
    code, out, err = _main(capsys, tiny_args(tiny_encoder, tmp_path / "run", aim="true", aim_repo=repo))
    assert code == 2 and err == (f"error: aim repo {repo}: cannot write there ({why}); set \"aim_repo\" "
                                 f"elsewhere or \"aim\": false\n")
    assert "data " not in out  # refused before the data was read


HOLDER = "import sys, time, aim; r = aim.Run(repo=sys.argv[1]); print(r.hash, flush=True); time.sleep(300)"


def test_aim_run_held_by_a_live_process_is_refused(tiny_encoder, tmp_path, capsys):
    repo, out = tmp_path / "aim", tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(repo)], stdout=subprocess.PIPE, text=True)
    try:
        run_hash = holder.stdout.readline().strip()
        needle = f"aim repo {repo}: run {run_hash} is open in another live process"
        with pytest.raises(TrackingError, match=needle):  # as in --resume of a last.pt tracked to it
            make_tracker(True, str(repo), "x", {}, run_hash=run_hash)
        out.mkdir()  # a fresh start where the previous attempt, still running, tracked to it
        json.dump({"aim_hash": run_hash, "aim_repo": str(repo)}, open(out / "run.json", "w"))
        code, stdout, err = _main(capsys, tiny_args(tiny_encoder, out, aim="true", aim_repo=repo))
        assert code == 2 and err == f"error: {needle}; is another training writing to the same out_dir?\n"
        assert "data " not in stdout  # refused before the data is read
        assert os.path.exists(os.path.join(repo, ".aim", "locks", f"{run_hash}.softlock"))  # left alone
    finally:
        holder.kill()
        holder.wait()


def test_tracking_failure_mid_run_warns_once_and_training_goes_on(tiny_encoder, tiny_run, tmp_path, monkeypatch,
                                                                  capsys):
    import aim
    real_track, calls = aim.Run.track, itertools.count()

    def failing(self, *a, **k):
        if next(calls) >= 3:
            raise OSError(errno.EIO, "Input/output error")
        return real_track(self, *a, **k)
    monkeypatch.setattr(aim.Run, "track", failing)
    out, repo = tmp_path / "run", tmp_path / "aim"
    _train(tiny_args(tiny_encoder, out, aim="true", aim_repo=repo))
    err = capsys.readouterr().err
    assert err.count("warning: aim tracking failed") == 1 and "Input/output error" in err
    _same_as_reference(out, tiny_run)  # tracking never touches the training
    assert _aim_closed(repo, _aim_hash(out))  # and the run is still closed at the end


# ----------------------------------------------------------------------------
# disk full

def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tiny_encoder, tiny_run, tmp_path,
                                                                     monkeypatch, capsys):
    """Choice: stop (exit 4) rather than train on unable to save; free space, then --resume."""
    real_save, writes = torch.save, []

    def full_disk(obj, f, *a, **k):
        if str(getattr(f, "name", f)).endswith("last.pt.tmp"):
            writes.append(f)
            if len(writes) == 2:  # last.pt of step 6: half of it fits, then the disk is full
                buf = io.BytesIO()
                real_save(obj, buf, *a, **k)
                f.write(buf.getvalue()[: buf.tell() // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    args = tiny_args(tiny_encoder, out)
    code, _, err = _main(capsys, args)
    assert code == 4 and err.strip().splitlines()[-1] == (
        f"stopped: {out}/last.pt: cannot write checkpoint (No space left on device); nothing was replaced: "
        f"free some space, then continue with --resume")
    assert load_checkpoint(str(out / "last.pt"))["step"] == 3 and not list(out.glob("*.tmp"))
    _all_checkpoints_whole(out)

    monkeypatch.setattr(torch, "save", real_save)  # space was freed
    _train(args, resume=True)
    _same_as_reference(out, tiny_run)
