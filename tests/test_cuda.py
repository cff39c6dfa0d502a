"""The CUDA path: bf16, fp16 with its GradScaler, compile on bucketed widths, a CPU-written last.pt resumed on
CUDA with the fused optimizer, DDP over NCCL. Marked `cuda`: they skip where there is no GPU (conftest.py), and
bench/gpu_check.sh runs them on one."""
import os
import subprocess
import sys

import pytest
import torch

from checkpoint import load_checkpoint
from conftest import ROOT, run_train, tiny_args

pytestmark = pytest.mark.cuda


def _finite(path):
    return all(torch.isfinite(v.float()).all() for v in load_checkpoint(str(path))["model"].values())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trains_on_cuda(tiny_encoder, tmp_path, precision):
    r = run_train(tiny_args(tiny_encoder, tmp_path / "run", device="cuda", precision=precision))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"device cuda x1 | precision {precision}" in r.stdout
    last = load_checkpoint(str(tmp_path / "run" / "last.pt"))
    assert last["step"] == 6 and _finite(tmp_path / "run" / "last.pt")
    assert all(g["fused"] for g in last["optimizer"]["param_groups"])
    if precision == "fp16":  # its GradScaler ran: a scale, and steps it applied
        assert last["scaler"]["scale"] > 0 and int(last["optimizer"]["state"][0]["step"]) >= 1


def test_compile_on_bucketed_widths_builds_one_graph_per_width(tiny_encoder, tmp_path):
    """pad_multiple 32 at max_length 128: widths 32, 64, 96 or 128, so at most 4 graphs however many steps."""
    import torch._dynamo

    import train
    from config import load_config
    torch._dynamo.reset()
    cfg, _ = load_config(tiny_args(tiny_encoder, tmp_path / "run", device="cuda", precision="bf16", compile="true",
                                   pad_multiple=32, max_steps=12, eval_every=12))
    train.train(cfg)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 4 * 2, graphs  # forward graphs, and a graph break at most in each


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_cpu_last_pt_resumes_on_cuda_fused(tiny_encoder, tmp_path, precision):
    """Before: the CPU optimizer's 'fused': False came back with its state, and fp16 failed an assertion."""
    out = tmp_path / "run"
    assert run_train(tiny_args(tiny_encoder, out, device="cpu", precision="fp32", max_steps=3,
                               eval_every=3)).returncode == 0
    r = run_train(tiny_args(tiny_encoder, out, device="cuda", precision=precision, max_steps=6, eval_every=3)
                  + ["--resume"])
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-3000:]
    last = load_checkpoint(str(out / "last.pt"))
    assert last["step"] == 6 and all(g["fused"] for g in last["optimizer"]["param_groups"]) and _finite(out / "last.pt")


@pytest.mark.cuda(gpus=2)
def test_ddp_over_nccl_matches_one_gpu(tiny_encoder, tmp_path):
    common = dict(device="cuda", dropout=0.0, max_steps=4, eval_every=2)
    one = run_train(tiny_args(tiny_encoder, tmp_path / "one", batch_size=8, **common))
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "train.py",
                          *tiny_args(tiny_encoder, tmp_path / "two", batch_size=4, **common)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    assert "device cuda:0 x2" in two.stdout and "global batch 8 = 4 per rank x 1 accum x 2 ranks" in two.stdout
    a, b = (load_checkpoint(str(tmp_path / d / "last.pt"))["model"] for d in ("one", "two"))
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff <= 1e-3, diff  # TF32 and NCCL's summation order: close, not bit-equal as on the CPU
