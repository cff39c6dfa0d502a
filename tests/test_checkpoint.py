"""checkpoint.py: the one atomic write, checkpoint loading and resume checks, the folder swap of exports."""
import errno
import os
import stat

import pytest
import torch

from checkpoint import (CheckpointError, atomic_write, load_checkpoint, load_resumable, make_checkpoint,
                        publish_dir, save_checkpoint)
from config import Config


def test_atomic_write_replaces_the_file_whole_with_the_usual_permissions(tmp_path):
    path = tmp_path / "out.json"
    atomic_write(str(path), lambda f: f.write("old"), mode="w")
    atomic_write(str(path), lambda f: f.write("new ünïcode\n"), mode="w")
    assert path.read_text(encoding="utf-8") == "new ünïcode\n" and os.listdir(tmp_path) == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # as open() gives: readable by a service user


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.md"
    path.write_text("measured")

    def disk_full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OSError) as e:
        atomic_write(str(path), disk_full)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)  # named as the user knows it
    assert path.read_text() == "measured" and os.listdir(tmp_path) == ["results.md"]


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.npz"
    path.write_bytes(b"old")

    def interrupted(f):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), interrupted)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.npz"]


def test_a_folder_in_the_way_fails_naming_the_file(tmp_path):
    (tmp_path / "run.json").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        atomic_write(str(tmp_path / "run.json"), lambda f: f.write("{}"), mode="w")
    assert e.value.filename == str(tmp_path / "run.json") and os.listdir(tmp_path) == ["run.json"]


def test_publish_dir_swaps_a_whole_folder_in(tmp_path):
    out, tmp = tmp_path / "export", tmp_path / ".export.tmp"
    out.mkdir()
    (out / "old.onnx").write_text("old")
    tmp.mkdir()
    (tmp / "model.onnx").write_text("new")
    publish_dir(str(tmp), str(out))
    assert os.listdir(out) == ["model.onnx"] and sorted(os.listdir(tmp_path)) == ["export"]


def _linear_checkpoint(**training):
    model = torch.nn.Linear(2, 1)
    return make_checkpoint(model, {"encoder": "x"}, Config(), step=4, metrics={"aucroc_macro": 0.9},
                           thresholds=[0.5] * 6, training=training or None)


def test_checkpoints_are_plain_dicts_loaded_with_weights_only(tmp_path):
    path = str(tmp_path / "best.pt")
    save_checkpoint(_linear_checkpoint(), path)
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 4 and ckpt["config"]["pooling"] == "cls" and ckpt["thresholds"] == [0.5] * 6
    assert set(ckpt["model"]) == {"weight", "bias"} and "optimizer" not in ckpt
    with pytest.raises(CheckpointError, match="cannot resume from it: no optimizer, scaler, state"):
        load_resumable(path, samples_per_step=32)  # best.pt holds the weights only


def test_resume_refuses_another_number_of_samples_per_step(tmp_path):
    path = str(tmp_path / "last.pt")
    save_checkpoint(_linear_checkpoint(optimizer={}, scaler={}, state={"step": 3, "samples_seen": 48}), path)
    assert load_resumable(path, samples_per_step=16)["state"]["step"] == 3
    with pytest.raises(CheckpointError, match="trained with 16 samples per step, this config gives 8"):
        load_resumable(path, samples_per_step=8)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        load_resumable(str(tmp_path / "nope.pt"), samples_per_step=16)


def test_unreadable_checkpoints_are_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(str(bad))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint written by train.py"):
        load_checkpoint(str(tmp_path / "other.pt"))


def test_resume_refuses_a_run_trained_with_a_removed_feature(tmp_path):
    path = str(tmp_path / "last.pt")
    ckpt = _linear_checkpoint(optimizer={}, scaler={}, state={"step": 3, "samples_seen": 48})
    ckpt["config"].update(oversample=3, ema_decay=0.0)  # written before 2026-12-01
    save_checkpoint(ckpt, path)
    with pytest.raises(CheckpointError, match=r"trained with \{'oversample': 3\}, removed on 2026-12-01"):
        load_resumable(path, samples_per_step=16)


def test_resume_keeps_this_machines_fused_optimizer():
    """A last.pt from an unfused optimizer (a CPU run before 2026-12-02) resumed by a fused one stays fused: the
    bad-step skip on the device, and fp16's GradScaler, need the fused kernel."""
    from checkpoint import restore_training
    model = torch.nn.Linear(3, 2)
    old = torch.optim.AdamW(model.parameters(), fused=False)
    old.param_groups[0]["peak_lr"] = 1e-3
    new = torch.optim.AdamW(model.parameters(), fused=True)
    new.param_groups[0]["peak_lr"] = 2e-3
    ckpt = {"model": model.state_dict(), "optimizer": old.state_dict(), "scaler": {}}
    restore_training(ckpt, "last.pt", model, new, torch.amp.GradScaler("cpu", enabled=False))
    assert new.param_groups[0]["fused"] and new.param_groups[0]["peak_lr"] == 2e-3
