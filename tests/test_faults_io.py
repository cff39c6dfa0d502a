"""Fault injection around files: corrupt checkpoints, Aim repo problems, a full disk. Each ends in one
line naming the file and a non-zero exit, or is survived with a warning. Helpers shared with
test_faults.py (kills, signals, non-finite losses)."""
import errno
import io
import itertools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from checkpoint import CHECKPOINT_VERSION, load_checkpoint
from common import LABELS
from conftest import (POLICIES, SAMPLE, aim_closed, aim_hash_of, all_checkpoints_whole, same_as_reference, tiny_args,
                      train_in_process, train_main)
from tracking import TrackingError, make_tracker

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
    if kind == "old_version":  # written before model_config named its labels
        ckpt["version"] = 1
        torch.save(ckpt, path)
        return f"checkpoint version 1, this train.py writes and reads version {CHECKPOINT_VERSION}; train it again"
    if kind == "best_pt":
        ckpt = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scaler", "state")}
        torch.save(ckpt, path)
        return "cannot resume from it: no optimizer, scaler, state (best.pt holds the weights only"
    ckpt["model"]["head.3.weight"] = torch.zeros(7, 32)  # kind == "other_model": another head
    torch.save(ckpt, path)
    return ("does not fit this model and config (Error(s) in loading state_dict for ToxicClassifier: size mismatch "
            "for head.3.weight: copying a param with shape torch.Size([7, 32]) from checkpoint")


@pytest.mark.parametrize("kind", ["truncated", "empty", "random", "code", "old_version", "best_pt", "other_model"])
def test_corrupt_last_pt_on_resume_is_one_line(tiny_encoder, tiny_run, tmp_path, capsys, kind):
    out = tmp_path / "run"
    out.mkdir()
    needle = _corrupt(kind, tiny_run / "last.pt", out / "last.pt", tmp_path)
    code, stdout, err = train_main(capsys, tiny_args(tiny_encoder, out) + ["--resume"])
    last_line = err.strip().splitlines()[-1]  # after transformers' progress bar where the model was built
    assert code == 2 and last_line.startswith(f"error: {out}/last.pt: ") and needle in last_line, err
    if kind != "other_model":  # refused before the data is read
        assert len(err.strip().splitlines()) == 1 and "data " not in stdout
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", ["truncated", "code", "old_version"])
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
    import scoring
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(os.path.join(tiny_encoder, "tokenizer.json"), folder / "tokenizer.json")
    meta = {"format_version": scoring.FORMAT_VERSION, "labels": list(LABELS), "max_length": 128,
            "models": {"fp32": "model.onnx"}, "tokenizer": "tokenizer.json", "prefix_ids": [101], "suffix_ids": [102],
            "pad_id": 0, "policies": POLICIES, "default_policy": "f1",
            "calibration": {"method": "platt", "a": dict.fromkeys(LABELS, 1.0), "b": dict.fromkeys(LABELS, 0.0)},
            "base_rates": {"reweighted": False, "rates": dict.fromkeys(LABELS, 0.1)},
            "validation_at_base_rates": {}, "checkpoint": {"path": "best.pt", "step": 1, "validation_metrics": {}},
            "versions": {}, "opset": 17}
    assert set(scoring.META_KEYS) <= set(meta)  # a whole export.json: only its model file is broken
    json.dump(meta, open(folder / "export.json", "w"))
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
    code, out, err = train_main(capsys, tiny_args(tiny_encoder, tmp_path / "run", aim="true", aim_repo=repo))
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
        code, stdout, err = train_main(capsys, tiny_args(tiny_encoder, out, aim="true", aim_repo=repo))
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
    train_in_process(tiny_args(tiny_encoder, out, aim="true", aim_repo=repo))
    err = capsys.readouterr().err
    assert err.count("warning: aim tracking failed") == 1 and "Input/output error" in err
    same_as_reference(out, tiny_run)  # tracking never touches the training
    assert aim_closed(repo, aim_hash_of(out))  # and the run is still closed at the end


def test_run_json_unwritable_is_one_line_and_the_aim_run_is_closed(tiny_encoder, tmp_path, capsys):
    out, repo = tmp_path / "run", tmp_path / "aim"
    (out / "run.json").mkdir(parents=True)  # the first file written after the Aim run is opened
    code, _, err = train_main(capsys, tiny_args(tiny_encoder, out, aim="true", aim_repo=repo))
    assert code == 4 and err.splitlines()[-1] == f"error: {out}/run.json: Is a directory"
    assert not list(out.glob("*.tmp"))  # the temporary file is gone
    (run_hash,) = [p.name for p in (repo / ".aim" / "meta" / "chunks").iterdir()]
    assert aim_closed(repo, run_hash)  # not left 'active' and locked for ever


def test_resume_with_a_changed_config_updates_the_aim_hparams(tiny_encoder, tmp_path):
    import aim
    out, repo = tmp_path / "run", tmp_path / "aim"
    train_in_process(tiny_args(tiny_encoder, out, aim="true", aim_repo=repo, max_steps=3))
    train_in_process(tiny_args(tiny_encoder, out, aim="true", aim_repo=repo, max_steps=5, lr=2e-4), resume=True)
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "aim"), "storage", "--repo", str(repo),
                    "reindex", "-y"], check=True, capture_output=True)  # read-only runs see the index only
    hparams = aim.Run(run_hash=aim_hash_of(out), repo=str(repo), read_only=True)["hparams"]
    assert hparams["lr"] == 2e-4 and hparams["max_steps"] == 5  # as run.json: the config it finished with


# ----------------------------------------------------------------------------
# disk full

def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tiny_encoder, tiny_run, tmp_path,
                                                                     monkeypatch, capsys):
    """Choice: stop (exit 4) rather than train on unable to save; free space, then --resume."""
    real_save, writes = torch.save, []

    def full_disk(obj, f, *a, **k):
        if os.path.basename(str(getattr(f, "name", f))).startswith("last.pt."):  # its temporary file
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
    code, _, err = train_main(capsys, args)
    assert code == 4 and err.strip().splitlines()[-1] == (
        f"stopped: {out}/last.pt: cannot write checkpoint (No space left on device); nothing was replaced: "
        f"free some space, then continue with --resume")
    assert load_checkpoint(str(out / "last.pt"))["step"] == 3 and not list(out.glob("*.tmp"))
    all_checkpoints_whole(out)

    monkeypatch.setattr(torch, "save", real_save)  # space was freed
    train_in_process(args, resume=True)
    same_as_reference(out, tiny_run)
