"""Distributed helpers for train.py: one process per device under torchrun, plain single process otherwise.

    torchrun --nproc_per_node=8 train.py configs/base.json                 # one node
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train.py ...
"""
import math
import os
from contextlib import contextmanager
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


def agree(mine, loss, flags, rank, world):
    """The training loop's one host-device sync, and under DDP its one collective (an all_reduce of MAX) ->
    (rank 0's `mine` floats (stop flag, out of time, lr horizon), rank 0's loss, each flag set where any
    rank's is), as Python floats. loss: a 0-d tensor on the device; flags: a list of 0-d bool tensors there."""
    head = torch.tensor([*mine, 0.0], dtype=torch.float64, pin_memory=loss.is_cuda).to(loss.device, non_blocking=True)
    head[-1] = loss
    if rank > 0:  # so that MAX gives every rank rank 0's values, which all ranks then act on together
        head.fill_(-math.inf)
    t = torch.cat([head, torch.stack(flags).double() if flags else head[:0]])
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    values = t.tolist()
    return values[:len(mine)], values[len(mine)], values[len(mine) + 1:]


@contextmanager
def node_leader_first(world, device):
    """Local rank 0 of each node runs the block first (tokenizing into the cache); the node's other ranks wait,
    then run it too, reading the cache it wrote. One barrier for every rank, leaders' after, others' before."""
    leader = int(os.environ.get("LOCAL_RANK", 0)) == 0
    wait = (lambda: dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)) if world > 1 else None
    if wait and not leader:
        wait()
    yield
    if wait and leader:
        wait()


def any_rank(flag, world, device):
    """True on every rank when it is true on any (a decision to stop must be the same everywhere)."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
