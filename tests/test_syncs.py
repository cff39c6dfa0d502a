"""Host-device syncs per optimizer step, counted on the CPU: every call that would make the host wait for a
GPU (.item(), .tolist(), .cpu(), .numpy(), bool(), int(), float() and index use of a tensor) is counted while
train.py's loop runs, validation and checkpoint writes left out (they sync by nature, every eval_every steps).
The count is the same on a GPU: the code paths do not depend on the device."""
import collections

import pytest
import torch

import train
from config import load_config
from conftest import tiny_args

SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


def count_syncs(monkeypatch, cfg):
    """Train cfg in this process -> {method: calls} made by the loop's steps (validation and writes left out)."""
    counts, on = collections.Counter(), [False]

    def counting(name, real):
        def wrapper(self, *a, **k):
            if on[0]:
                counts[name] += 1
            return real(self, *a, **k)
        return wrapper
    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))

    def paused(real):
        def wrapper(*a, **k):
            was, on[0] = on[0], False
            try:
                return real(*a, **k)
            finally:
                on[0] = was
        return wrapper
    real_step = train.train_step

    def step(*a, **k):  # counting starts with the first step, so start-up is left out
        on[0] = True
        return real_step(*a, **k)
    monkeypatch.setattr(train, "train_step", step)
    monkeypatch.setattr(train, "validate_and_save", paused(train.validate_and_save))  # validation, best.pt
    monkeypatch.setattr(train, "write_checkpoint", paused(train.write_checkpoint))
    monkeypatch.setattr(torch.amp.GradScaler, "state_dict", paused(torch.amp.GradScaler.state_dict))  # for last.pt
    train.train(cfg)
    return counts


@pytest.mark.parametrize("precision, pooling", [("fp32", "cls"), ("fp16", "mean")])
def test_one_sync_per_log_step_and_none_between(tiny_encoder, tmp_path, monkeypatch, precision, pooling):
    steps, log_every = 8, 4
    cfg, _ = load_config(tiny_args(tiny_encoder, tmp_path / "run", precision=precision, pooling=pooling,
                                   max_steps=steps, log_every=log_every, eval_every=100, accum_steps=2, batch_size=4))
    counts = count_syncs(monkeypatch, cfg)
    print(f"{precision} {pooling}: {sum(counts.values())} syncs in {steps} steps: {dict(counts)}")
    assert sum(counts.values()) == steps // log_every, dict(counts)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_reports_no_synchronizing_call_between_log_steps(tiny_encoder, tmp_path, monkeypatch, precision):
    """CUDA's own account: torch.cuda.set_sync_debug_mode warns at every synchronizing call (copies to the host,
    .item(), nonzero, ...), in torch's C++ as well as in Python, during the same steps as above."""
    import warnings
    steps, log_every = 8, 4
    cfg, _ = load_config(tiny_args(tiny_encoder, tmp_path / "run", device="cuda", precision=precision,
                                   max_steps=steps, log_every=log_every, eval_every=100, accum_steps=2, batch_size=4))
    real_step, real_eval = train.train_step, train.validate_and_save

    def step(*a, **k):
        torch.cuda.set_sync_debug_mode("warn")
        return real_step(*a, **k)

    def validate_and_save(*a, **k):  # the final evaluation syncs by nature
        torch.cuda.set_sync_debug_mode("default")
        return real_eval(*a, **k)
    monkeypatch.setattr(train, "train_step", step)
    monkeypatch.setattr(train, "validate_and_save", validate_and_save)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            train.train(cfg)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    print(f"{precision}: {len(syncs)} synchronizing CUDA calls in {steps} steps: {syncs}")
    assert len(syncs) <= steps // log_every, syncs
