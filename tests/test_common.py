"""common.py: the one exit-code table, the one-line handler every main runs in, the signal handling, the one
atomic write (files and folders), and the small shared helpers."""
import errno
import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest

from common import (LABELS, POOLINGS, Stopped, UsageError, atomic_write, exit_on_error, first_line, markdown_table,
                    publish_dir, sigmoid, stop_on_signals)
from conftest import ROOT


@pytest.mark.parametrize("exc, code, line", [
    (UsageError("data.csv: row 3 (line 4), column toxic: label must be 0 or 1, got '2'"), 2,
     "error: data.csv: row 3 (line 4), column toxic: label must be 0 or 1, got '2'"),
    (Stopped("step 5: 3 consecutive non-finite steps; stopping.", 3), 3,
     "stopped: step 5: 3 consecutive non-finite steps; stopping."),
    (OSError(28, "No space left on device", "runs/mini/last.pt"), 4, "error: runs/mini/last.pt: No space left on device"),
    (KeyboardInterrupt(), 130, "stopped: interrupted")])
def test_each_error_is_one_line_and_its_code(capsys, exc, code, line):
    with pytest.raises(SystemExit) as e, exit_on_error():
        raise exc
    assert e.value.code == code and capsys.readouterr().err == line + "\n"


def test_a_bug_is_not_hidden():
    with pytest.raises(ZeroDivisionError), exit_on_error():
        1 / 0


def test_a_reader_that_leaves_gives_sigpipes_code_without_a_traceback():
    """`script | head`: what was not written was not done, so the exit is 141 (128 + SIGPIPE), never 0."""
    script = ("import sys; sys.path.insert(0, %r)\nfrom common import exit_on_error\nwith exit_on_error():\n"
              "    for i in range(10**6):\n        print('line', i)\n" % ROOT)
    r = subprocess.run(f"{sys.executable} -c \"{script}\" | head -1; exit ${{PIPESTATUS[0]}}", shell=True,
                       executable="/bin/bash", capture_output=True, text=True)
    assert r.returncode == 128 + signal.SIGPIPE and r.stdout == "line 0\n" and "Traceback" not in r.stderr


def test_stop_on_signals_marks_the_stop_and_gives_the_handlers_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop_on_signals() as caught:
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once, in this thread: the process goes on
        assert caught == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second one would stop at once
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# ----------------------------------------------------------------------------
# atomic writes


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


def test_publish_dir_without_an_old_folder_and_after_a_killed_swap(tmp_path):
    out, tmp = tmp_path / "export", tmp_path / ".export.tmp"
    tmp.mkdir()
    (tmp / "model.onnx").write_text("first")
    publish_dir(str(tmp), str(out))  # nothing to move aside
    assert (out / "model.onnx").read_text() == "first" and sorted(os.listdir(tmp_path)) == ["export"]
    tmp.mkdir()
    (tmp / "model.onnx").write_text("second")
    (tmp_path / ".export.tmp.old").mkdir()  # left by an export killed between its two renames
    publish_dir(str(tmp), str(out))
    assert (out / "model.onnx").read_text() == "second" and sorted(os.listdir(tmp_path)) == ["export"]


# ----------------------------------------------------------------------------
# the small shared helpers


def test_the_default_labels_and_poolings():
    assert LABELS == ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")  # Kaggle's order
    assert POOLINGS == ("cls", "mean")


def test_sigmoid_is_float64_and_finite_without_overflow_warnings():
    import warnings
    z = np.array([-1000.0, -30.0, 0.0, 2.0, 30.0, 1000.0], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "overflow encountered in exp"
        p = sigmoid(z)
    assert p.dtype == np.float64 and np.isfinite(p).all()
    np.testing.assert_allclose(p[1:5], 1 / (1 + np.exp(-z[1:5].astype(np.float64))), rtol=1e-13)
    assert p[0] == 0.0 and p[-1] == 1.0 and p[2] == 0.5
    assert sigmoid(0) == 0.5 and np.ndim(sigmoid(0)) == 0


def test_first_line_of_an_error():
    assert first_line(ValueError("bad value\nsecond line")) == "bad value"
    assert first_line(KeyError()) == "KeyError" and first_line(OSError("  ")) == "OSError"  # no text: its type


def test_markdown_table():
    assert markdown_table(["label", "AUC"], [("toxic", 0.98), ("threat", "n/a")]) == [
        "| label | AUC |", "|---|---|", "| toxic | 0.98 |", "| threat | n/a |"]
