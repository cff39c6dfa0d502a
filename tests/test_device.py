"""DDP on CPU with gloo: 2 ranks x batch 4 train exactly like 1 process x batch 8."""
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT, run_train, tiny_args
from checkpoint import load_checkpoint


def _torchrun(args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                           "--standalone", "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_two_ranks_match_one_process(tiny_encoder, tmp_path):
    common = dict(dropout=0.0, max_steps=4, eval_every=2)
    one = run_train(tiny_args(tiny_encoder, tmp_path / "one", batch_size=8, **common))
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun(tiny_args(tiny_encoder, tmp_path / "two", batch_size=4, **common))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "global batch 8 = 4 per rank x 1 accum x 2 ranks" in two.stdout
    a, b = load_checkpoint(str(tmp_path / "one" / "last.pt")), load_checkpoint(str(tmp_path / "two" / "last.pt"))
    diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    assert diff <= 1e-5, diff
    # evaluation: each rank scored half the rows, gathered once on rank 0, same metrics as one process
    assert abs(a["metrics"]["aucroc_macro"] - b["metrics"]["aucroc_macro"]) <= 1e-6
    pa, pb = np.load(tmp_path / "one" / "val_predictions.npz"), np.load(tmp_path / "two" / "val_predictions.npz")
    assert np.array_equal(pa["ids"], pb["ids"]) and np.abs(pa["probs"] - pb["probs"]).max() <= 1e-5
    assert not any(k.startswith("module.") for k in b["model"])  # the unwrapped model's state_dict


def test_resume_on_a_different_world_size(tiny_encoder, tmp_path):
    """A 2-rank run's last.pt resumes in one process (same global batch of 8)."""
    out = tmp_path / "run"
    first = _torchrun(tiny_args(tiny_encoder, out, batch_size=4, dropout=0.0, max_steps=2, eval_every=2))
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_train(tiny_args(tiny_encoder, out, batch_size=8, dropout=0.0, max_steps=4, eval_every=2) + ["--resume"])
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-2000:]
    assert load_checkpoint(str(out / "last.pt"))["step"] == 4


def test_agree_on_one_rank_gives_the_values_loss_and_flags_back_as_floats():
    """The loop's one host-device sync: no collective on one rank, everything back in one transfer."""
    import torch

    from device import agree
    control, loss, flags = agree([0.0, 1.0, 12.0], torch.tensor(0.75), [torch.tensor(False), torch.tensor(True)], 0, 1)
    assert control == [0.0, 1.0, 12.0] and loss == 0.75 and flags == [0.0, 1.0]
    assert agree([1.0, 0.0, 3.0], torch.tensor(2.0), [], 0, 1) == ([1.0, 0.0, 3.0], 2.0, [])


def test_on_device_makes_tensors_and_counts_real_tokens_on_the_host():
    import torch

    from device import on_device
    ids, mask, y = np.arange(6).reshape(2, 3), np.array([[1, 1, 0], [1, 0, 0]]), np.zeros((2, 6), np.float32)
    ((t_ids, t_mask, t_y, real),) = list(on_device(iter([(ids, mask, y)]), torch.device("cpu")))
    assert real == 3 and isinstance(real, int)
    assert torch.equal(t_ids, torch.from_numpy(ids)) and torch.equal(t_mask, torch.from_numpy(mask))
    assert t_y.dtype == torch.float32 and t_y.shape == (2, 6)
