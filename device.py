"""Where training runs: the device and its ranks (one process per device under torchrun, a plain single process
otherwise), the precision it trains in, the CPU's memory settings, and batches moved onto the device.

    rank, world, device = init_distributed(cfg)
    precision = resolve_precision(cfg.precision, device); autocast = autocast_for(precision, device)
    torchrun --nproc_per_node=8 train.py configs/base.json                 # one node
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train.py ...
"""
import math
import os
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist

from config import ConfigError

# ----------------------------------------------------------------------------
# precision and memory


def resolve_precision(requested, device):
    """bf16 where the hardware has it, else fp32 with a warning (configs stay portable)."""
    if requested == "bf16":
        supported = (torch.cuda.is_bf16_supported(including_emulation=False) if device.type == "cuda"
                     else torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if not supported:
            print(f"warning: bf16 is not supported on this {device.type}; training in fp32 instead")
            return "fp32"
    return requested


def autocast_for(precision, device):
    """The one precision path: autocast for bf16 and fp16 (which adds GradScaler), nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def cap_kernel_caches(entries=16):
    """oneDNN, which runs the bf16 matmuls on a CPU, keeps compiled kernels for every matmul shape it has seen, in
    two caches of 1,024 entries each by default. With a new batch length every step they held ~10 MB more per
    length, and peak RSS crept by 4 MB a step (2.5 GB after 150 MiniLM steps); 16 entries each keep it flat
    (1.7 GB) for 8% of the step speed (bench/train_speed.py's (c4); docs/experiments.md, 2026-12-02).
    Both are read at the first matmul, so this is in time before it; a user's own setting wins."""
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):  # oneDNN's, and ideep's above it
        os.environ.setdefault(name, str(entries))


def limit_heap_growth():
    """glibc malloc tuned for training's allocations, and oneDNN's caches capped, before the first step
    (docs/experiments.md, 2026-12-02).

    Each step frees and allocates again activations and gradients of 1-50 MB whose sizes change with the
    batch's length. The 128 KiB mmap threshold this replaces handed every buffer over 128 KiB back to the
    kernel, which faulted it in again, zeroed, the next step (29 million faults and 15-27% of the CPU
    time in sys in 60 MiniLM steps). Now buffers up to 32 MiB (every activation at max_length 128) stay in
    one arena (2 cores: no lock contention to avoid), where the next step reuses them, and the top of
    the heap is handed back only past 1 GiB free. Larger ones are still mapped and unmapped.
    mallopt, not GLIBC_TUNABLES: those are read before Python starts, and users run train.py as it is."""
    cap_kernel_caches()
    try:
        import ctypes
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    mallopt(-8, 1)  # M_ARENA_MAX
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (fixed, which also stops glibc moving the trim threshold)
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD



def on_device(batches, device):
    """data.micro_batches' numpy arrays as tensors on the device, and the real tokens counted on the host (counting
    the device's mask would make the host wait for the GPU). On CUDA they go from pinned memory, so non_blocking
    really is: a copy from pageable memory blocks the host."""
    pin = device.type == "cuda"
    for arrays in batches:
        tensors = (torch.from_numpy(a) for a in arrays)
        yield (*(t.pin_memory().to(device, non_blocking=True) if pin else t for t in tensors), int(arrays[1].sum()))


# ----------------------------------------------------------------------------
# ranks




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
