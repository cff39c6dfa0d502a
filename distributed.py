"""Distributed helpers for train.py: one process per device under torchrun, plain single process otherwise.

    torchrun --nproc_per_node=8 train.py configs/base.json                 # one node
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train.py ...
"""
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from config import ConfigError


def init_distributed(cfg):
    """-> (rank, world_size, device). NCCL on CUDA, gloo on CPU, chosen automatically."""
    want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():  # else torch's assertion, as a traceback, at the first .to()
        raise ConfigError(f"device {cfg.device!r}: no CUDA device here (this torch: {torch.__version__}); "
                          f"use --device cpu or auto")
    index = cfg.device.partition(":")[2]  # digits: config.check_config saw to that
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device {cfg.device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if "RANK" not in os.environ:
        return 0, 1, torch.device(cfg.device if cfg.device != "auto" else ("cuda" if want_cuda else "cpu"))
    local_rank = int(os.environ["LOCAL_RANK"])
    if want_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if want_cuda else "gloo", timeout=timedelta(seconds=cfg.dist_timeout_s))
    device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def from_rank0(values, world, device):
    """Every rank takes rank 0's floats (stop flag, lr horizon), so replicas never diverge."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return t.tolist()


def any_rank(flag, world, device):
    """True on every rank when it is true on any (a decision to stop must be the same everywhere)."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
