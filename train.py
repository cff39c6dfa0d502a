"""Fine-tune a BERT encoder as a 6-label toxic-comment classifier. Plain PyTorch, one loop.

    python train.py configs/mini.json                          # embedded MiniLM, sample data, CPU
    python train.py configs/base.json --lr 3e-5 --max_steps 10 # any key can be overridden
    python train.py configs/mini.json --resume                 # continue from out_dir/last.pt
    torchrun --nproc_per_node=8 train.py configs/base.json     # DistributedDataParallel
Writes out_dir/best.pt (best validation AUC), out_dir/last.pt (everything needed to resume),
out_dir/val_predictions.npz, and an Aim run in aim_repo.

Faults. A checkpoint is replaced atomically, so a kill at any moment (SIGKILL included) leaves the
previous one whole, and --resume from it ends with the same weights as an uninterrupted run.
--resume without out_dir/last.pt is an error (a typo in out_dir never silently starts over).
Exit codes: 2 bad config, data, checkpoint or Aim repo (found before the data is read where it can
be); 3 `max_bad_steps` non-finite steps in a row (fp16 leaves overflows to its GradScaler; a
non-finite loss counts); 4 a write failed, e.g. disk full: training stops, the previous checkpoint
intact; 130/143 Ctrl-C/SIGTERM: last.pt written, the Aim run closed (130 too while starting up).
Aim failing mid-run only warns. A run a killed process left open is closed by the next start.
"""
import copy
import json
import math
import os
import resource
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from distributed import any_rank, from_rank0, init_distributed
from data import LABELS, DataError, epoch_order, oversample_rare, pad_batch, read_csv, split_indices, tokenize
from metrics import format_metrics
from config import ConfigError, load_config
from optim import get_lr, make_optimizer, pos_weights, update_ema
from model import (CheckpointError, build_model, load_checkpoint, load_resumable, model_config, resolve_encoder,
                   restore_training, save_checkpoint)
from tracking import TrackingError, make_tracker, prepare_repo
from validation import run_eval, save_predictions

CHECKPOINT_VERSION = 1

# ----------------------------------------------------------------------------
# pure helpers: precision, memory


def resolve_precision(requested, device):
    """bf16 where the hardware has it, else fp32 with a warning (configs stay portable)."""
    if requested == "bf16":
        supported = (torch.cuda.is_bf16_supported(including_emulation=False) if device.type == "cuda"
                     else torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if not supported:
            print(f"warning: bf16 is not supported on this {device.type}; training in fp32 instead")
            return "fp32"
    return requested


def limit_heap_growth():
    """Length-grouped batches allocate activations of ever-changing sizes; glibc's adaptive mmap
    threshold then keeps the freed ones in its heap and RSS creeps to GBs. A fixed threshold hands
    large buffers back to the OS (measured: MiniLM peak RSS 1.6 -> 1.25 GB in 25 steps, same speed)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 17)  # M_MMAP_THRESHOLD = 128 KiB
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


# ----------------------------------------------------------------------------
# the loop


def train_step(model, raw_model, batches, optimizer, scaler, autocast, pos_weight, accum_steps, grad_clip,
               skip_nonfinite):
    """One optimizer step: accum_steps micro-steps over loss / accum_steps, unscale, clip, step.

    Under DDP, gradients are all-reduced on the last micro-step only (no_sync before it).
    With skip_nonfinite, a NaN/inf gradient norm skips the update (fp16 leaves that to the
    GradScaler). -> (summed loss tensor, whether the step was applied, real tokens, padded tokens)
    """
    loss_sum, real, padded = 0.0, 0, 0
    for micro in range(accum_steps):
        ids, mask, y = next(batches)
        real, padded = real + int(mask.sum()), padded + mask.numel()
        last = micro == accum_steps - 1
        with (model.no_sync() if hasattr(model, "no_sync") and not last else nullcontext()):
            with autocast:
                logits = model(ids, mask)  # (B,T) -> (B,6)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=pos_weight) / accum_steps
            scaler.scale(loss).backward()
        loss_sum = loss_sum + loss.detach()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip or math.inf)
    stepped = not (skip_nonfinite and not torch.isfinite(norm))
    if stepped:
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        stepped = scaler.get_scale() >= scale  # fp16: the GradScaler lowers its scale when it skips a step
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, stepped, real, padded


class TrainingStopped(RuntimeError):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def train(cfg, resume=False):
    """Train to the end of the schedule (or budget). Returns the best checkpoint's metrics."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    from transformers import AutoConfig, AutoTokenizer

    limit_heap_growth()
    rank, world, device = init_distributed(cfg)
    master = rank == 0
    log = print if master else (lambda *a, **k: None)
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cuda":  # TF32 matmuls and convolutions: free speed on Ampere and later
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gmb = cfg.batch_size * world  # samples per micro-step across all ranks
    log(f"config: {json.dumps(asdict(cfg))}")
    log(f"device {device} x{world} | precision {precision} | global batch {gmb * cfg.accum_steps} "
        f"= {cfg.batch_size} per rank x {cfg.accum_steps} accum x {world} ranks")
    best_path, last_path = os.path.join(cfg.out_dir, "best.pt"), os.path.join(cfg.out_dir, "last.pt")
    if resume and not os.path.isfile(last_path):  # checked before the data: a bad start fails in a blink
        raise CheckpointError(f"{last_path}: no checkpoint to resume from (the first is written at step "
                              f"eval_every, or at the end if sooner); start again without --resume")
    ckpt = load_resumable(last_path) if resume else None
    if resume:
        seen, steps = ckpt["state"].get("samples_seen"), ckpt["state"].get("step")
        if not (isinstance(seen, int) and isinstance(steps, int)):
            raise CheckpointError(f"{last_path}: its loop state has no samples_seen and step; cannot resume from it")
        if seen != steps * gmb * cfg.accum_steps:  # ranks may change, the samples per step may not
            per_step = seen // steps if steps and seen % steps == 0 else "a varying number of"
            raise ConfigError(f"{last_path}: trained with {per_step} samples per step, this config gives "
                              f"{gmb * cfg.accum_steps} (batch_size x accum_steps x ranks): its data order and "
                              f"schedule would not continue")
    try:  # before the data and the Aim repo: a bad name fails in a blink
        reach = AutoConfig.from_pretrained(resolve_encoder(cfg.encoder)).max_position_embeddings
        tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(cfg.encoder)).backend_tokenizer
    except (OSError, ValueError) as e:  # a typo, or a hub name not cached on an offline machine
        raise ConfigError(f"encoder {cfg.encoder!r}: cannot load it ({str(e).splitlines()[0] if str(e) else e!r}); "
                          f"give a local folder or a name in the Hugging Face cache") from None
    run_json = os.path.join(cfg.out_dir, "run.json")
    if cfg.aim and master:
        prepare_repo(cfg.aim_repo, run_json, ckpt["state"].get("aim_hash") if resume else None)

    # --- data
    ds = read_csv(cfg.data_path)
    try:
        train_idx, val_idx = split_indices(ds.labels, cfg.val_fraction, cfg.split_seed)
    except DataError as e:  # the split cannot know which file it splits
        raise DataError(f"{cfg.data_path}: {e}") from None
    eval_length = cfg.eval_max_length or cfg.max_length
    if max(cfg.max_length, eval_length) > reach:  # found now, not as an index error mid-run
        raise ConfigError(f"max_length {cfg.max_length}, eval_max_length {cfg.eval_max_length}: "
                          f"{cfg.encoder} has position embeddings for {reach} tokens")
    cache = os.path.join(cfg.cache_dir, "tokens")
    seqs = tokenize(tokenizer, ds.texts, cfg.max_length, cache, cfg.truncation)
    # Validation may see more of each comment than training did: a model trained on 128 tokens ranks
    # long comments better when it reads up to 512 (the README's quality section has the figures).
    val_seqs = seqs if eval_length == cfg.max_length else tokenize(tokenizer, ds.texts, eval_length, cache,
                                                                    cfg.truncation)
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    lengths = np.array([len(s) for s in seqs])
    labels_t = torch.from_numpy(ds.labels.astype(np.float32))
    # An epoch may repeat the rows with rare positives; pos_weight still counts each row once.
    epoch_idx, rare = oversample_rare(ds.labels, train_idx, cfg.oversample)
    steps_per_epoch = len(epoch_idx) // (gmb * cfg.accum_steps)
    if steps_per_epoch == 0:
        raise ConfigError(f"{cfg.data_path}: {len(train_idx)} training rows do not fill one global batch "
                          f"of {gmb * cfg.accum_steps}; lower batch_size or accum_steps")
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    log(f"data {cfg.data_path}: {len(train_idx)} train / {len(val_idx)} val rows, "
        f"{steps_per_epoch} steps per epoch, {total_steps} steps")
    if cfg.oversample > 1:
        log(f"oversample {cfg.oversample}: {(len(epoch_idx) - len(train_idx)) // (cfg.oversample - 1)} rows with "
            f"a rare positive ({', '.join(rare)}) -> {len(epoch_idx)} samples per epoch")

    def micro_batches(samples_seen):
        """Endless micro-batches for this rank, starting after samples_seen (for resume)."""
        per_epoch = steps_per_epoch * cfg.accum_steps  # micro-batches
        epoch, j = divmod(samples_seen // gmb, per_epoch)
        while True:
            order = epoch_idx[epoch_order(lengths[epoch_idx], gmb, cfg.accum_steps, cfg.seed, epoch,
                                          cfg.group_by_length)]
            for j in range(j, per_epoch):
                rows = order[j * gmb:(j + 1) * gmb][rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
                ids, mask = pad_batch([seqs[i] for i in rows], pad_id,
                                      cfg.max_length if cfg.pad_to_max_length else None)
                yield (torch.from_numpy(ids).to(device, non_blocking=True),
                       torch.from_numpy(mask).to(device, non_blocking=True),
                       labels_t[rows].to(device, non_blocking=True))
            epoch, j = epoch + 1, 0

    # --- model, optimizer, state
    torch.manual_seed(cfg.seed)
    try:
        raw_model = build_model(cfg.encoder, cfg.pooling, cfg.dropout).to(device)
    except OSError as e:  # a config and tokenizer without weights
        raise ConfigError(f"encoder {cfg.encoder!r}: cannot load its weights ({str(e).splitlines()[0]})") from None
    mcfg = model_config(raw_model, cfg.encoder, cfg.dropout)
    optimizer = make_optimizer(raw_model, cfg, fused=device.type == "cuda")
    # With ema_decay, a moving average of the weights is what is validated and saved as best.pt.
    ema_model = copy.deepcopy(raw_model).requires_grad_(False) if cfg.ema_decay else None
    eval_model = ema_model if ema_model is not None else raw_model
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = (nullcontext() if precision == "fp32" else
                torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16))
    pos_weight = pos_weights(ds.labels[train_idx], cfg.pos_weight, cfg.pos_weight_cap).to(device)
    os.makedirs(cfg.out_dir, exist_ok=True)
    # horizon: the step a budget's schedule ends at, kept so a resume goes on with it until it has timed
    # steps of its own (on another machine, the old step time would mislead)
    state = {"step": 0, "samples_seen": 0, "best_auc": -math.inf, "train_seconds": 0.0, "aim_hash": None,
             "horizon": None}
    if resume:
        restore_training(ckpt, last_path, raw_model, optimizer, scaler, ema_model)
        state.update(ckpt["state"])
        changed = {k: (v, getattr(cfg, k)) for k, v in ckpt["config"].items() if getattr(cfg, k, v) != v}
        log(f"resumed from {last_path} at step {state['step']}" + (f"; config changes {changed}" if changed else ""))
    model = DDP(raw_model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else raw_model
    if cfg.compile:
        model = torch.compile(model)

    def save(path, step, metrics, thresholds, with_state):
        if not master:
            return
        # last.pt resumes from the trained weights (and the average, which its metrics describe);
        # best.pt holds only the validated ones
        weights = (raw_model if with_state else eval_model).state_dict()
        ckpt = {"version": CHECKPOINT_VERSION, "model": weights, "model_config": mcfg,
                "config": asdict(cfg), "step": step, "metrics": metrics,
                "thresholds": [float(t) for t in thresholds]}
        if with_state:
            ckpt.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), state=dict(state))
            if ema_model is not None:
                ckpt["ema"] = ema_model.state_dict()
        try:
            save_checkpoint(ckpt, path)
        except OSError as e:  # disk full: stop now rather than train on with nothing to resume from
            raise TrainingStopped(f"{path}: cannot write checkpoint ({e.strerror or e}); nothing was replaced: "
                                  f"free some space, then continue with --resume", 4) from None

    hparams = {**asdict(cfg), "precision_effective": precision, "world_size": world,
               "global_batch": gmb * cfg.accum_steps, "torch": str(torch.__version__)}
    tracker = make_tracker(cfg.aim and master, cfg.aim_repo, os.path.basename(os.path.normpath(cfg.out_dir)),
                           hparams, state["aim_hash"])
    state["aim_hash"] = tracker.hash

    # Ctrl-C / SIGTERM: finish the current step, write last.pt, exit 128 + signal number.
    stop_signal = []
    def on_signal(signum, frame):
        stop_signal.append(signum)
        signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once
    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    # --- loop
    batches = micro_batches(state["samples_seen"])
    step, first_step = state["step"], state["step"]
    budget = cfg.max_minutes * 60
    t_start = time.time() - state["train_seconds"]
    step_seconds, step_count, bad_steps = 0.0, 0, 0
    loss_sum, tokens_real, tokens_padded, t_log = torch.zeros((), device=device), 0, 0, time.time()
    stats = {"step_seconds": [], "step_real_tokens": [], "step_padded_tokens": []}  # for benchmarks
    last_metrics, last_thresholds = None, np.full(len(LABELS), 0.5)
    if resume:  # stopped again before this attempt's first eval: last.pt keeps what it knew
        last_metrics, last_thresholds = ckpt.get("metrics") or None, np.array(ckpt.get("thresholds", last_thresholds))
    try:  # every way out from here closes the Aim run opened above (else it stays 'active' and locked)
        if master:  # what compare.py and people need without opening a checkpoint; atomic, as checkpoints
            with open(run_json + ".tmp", "w") as f:
                json.dump({"config": asdict(cfg), "aim_hash": tracker.hash, "aim_repo": cfg.aim_repo,
                           "precision_effective": precision, "world_size": world}, f, indent=1)
            os.replace(run_json + ".tmp", run_json)
        raw_model.train()
        while True:
            elapsed = time.time() - t_start
            horizon = total_steps
            if budget:  # steps that fit in the remaining time, from this attempt's mean step time once it has 5
                if step_count >= 5:
                    horizon = min(total_steps, step + int((budget - elapsed) / (step_seconds / step_count)))
                elif state["horizon"] is not None:  # resumed: the last attempt's estimate, not a jump to the end
                    horizon = min(total_steps, state["horizon"])
            stop, out_of_time, horizon = from_rank0(
                [float(bool(stop_signal)), float(bool(budget) and elapsed >= budget), float(horizon)], world, device)
            horizon = state["horizon"] = int(horizon)
            lr_mult = get_lr(step, horizon, cfg.warmup_steps)
            for g in optimizer.param_groups:
                g["lr"] = g["peak_lr"] * lr_mult
            done = step >= horizon or out_of_time
            state.update(step=step, train_seconds=elapsed)

            if step > first_step and (step % cfg.eval_every == 0 or done):
                metrics, probs, thresholds = run_eval(eval_model, val_seqs, val_idx, ds.labels, cfg, device,
                                                      autocast, rank, world)
                last_metrics = metrics
                for k, v in metrics.items():
                    tracker.track(f"eval_{k}", v, step, "val")
                log(f"eval step {step}: loss {metrics['loss']:.4f} | {format_metrics(metrics)}")
                if metrics["aucroc_macro"] > state["best_auc"]:
                    state["best_auc"] = metrics["aucroc_macro"]
                    save(best_path, step, metrics, thresholds, with_state=False)
                    if master:
                        save_predictions(os.path.join(cfg.out_dir, "val_predictions.npz"), ds, val_idx, probs,
                                         thresholds, step)
                last_thresholds = thresholds
                save(last_path, step, metrics, thresholds, with_state=True)
            if done:
                break
            if stop:
                save(last_path, step, last_metrics or {}, last_thresholds, with_state=True)
                signum = stop_signal[0] if stop_signal else signal.SIGINT  # ranks > 0 learn of it from rank 0
                raise TrainingStopped(f"{signal.Signals(signum).name} at step {step}; last.pt written, "
                                      f"continue with --resume", 128 + signum)

            # --- one optimizer step
            t0 = time.time()
            # dropout: a function of the step, so resume is exact
            torch.manual_seed(hash((cfg.seed, rank, step)) % 2**63)
            loss, stepped, real, padded = train_step(model, raw_model, batches, optimizer, scaler, autocast, pos_weight,
                                                     cfg.accum_steps, cfg.grad_clip, skip_nonfinite=precision != "fp16")
            if stepped and ema_model is not None:
                update_ema(ema_model, raw_model, cfg.ema_decay, step)
            bad = not stepped  # fp32, bf16: from the all-reduced gradient norm, the same on every rank
            if precision == "fp16":  # its GradScaler skips overflows itself (routine while the scale settles);
                # a non-finite loss is no overflow a smaller scale can fix, so that counts as bad.
                bad = any_rank(not torch.isfinite(loss).item(), world, device)
            loss_sum += 0 if bad else loss
            tokens_real, tokens_padded = tokens_real + real, tokens_padded + padded
            bad_steps = bad_steps + 1 if bad else 0
            if bad:
                log(f"warning: step {step}: non-finite loss or gradient, step skipped "
                    f"({bad_steps}/{cfg.max_bad_steps})")
                if bad_steps >= cfg.max_bad_steps:
                    raise TrainingStopped(f"step {step}: {bad_steps} consecutive non-finite steps; stopping. "
                                          f"The last good checkpoints are kept in {cfg.out_dir}", 3)
            step += 1
            state["samples_seen"] += gmb * cfg.accum_steps
            step_seconds += time.time() - t0
            step_count += 1
            stats["step_seconds"].append(time.time() - t0)
            stats["step_real_tokens"].append(real)
            stats["step_padded_tokens"].append(padded)

            if step % cfg.log_every == 0 and master:
                dt, n = time.time() - t_log, cfg.log_every
                train_loss = loss_sum.item() / n
                sps = n * gmb * cfg.accum_steps / dt
                eta = (horizon - step) * dt / n
                tracker.track("train_loss", train_loss, step, "train")
                tracker.track("lr", lr_mult * cfg.lr, step, "train")
                tracker.track("samples_per_s", sps, step, "train")
                log(f"step {step}/{horizon} | loss {train_loss:.4f} | lr {lr_mult * cfg.lr:.2e} | {sps:.1f} samples/s"
                    f" | pad {1 - tokens_real / max(1, tokens_padded):.0%} | eta {eta / 60:.1f} min", flush=True)
                loss_sum.zero_()
                tokens_real, tokens_padded, t_log = 0, 0, time.time()

    finally:  # every way out: the Aim run is closed and the caller's handlers are back
        tracker.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    if world > 1:
        dist.destroy_process_group()
    best = load_checkpoint(best_path)["metrics"] if master and os.path.exists(best_path) else last_metrics
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    log(f"done: {step} steps, {state['samples_seen']} samples in {(time.time() - t_start) / 60:.1f} min, "
        f"peak RSS {peak_mb:.0f} MB; " + (f"best {format_metrics(best)}" if best else "no evaluation yet"))
    return {"best": best, "last": last_metrics, "steps": step, "samples_seen": state["samples_seen"],
            "train_seconds": state["train_seconds"], "precision": precision, "peak_rss_mb": peak_mb, **stats}


def main(argv=None):
    # Until the loop installs its own handler, SIGTERM stops as Ctrl-C does: one line, no traceback.
    old_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cfg, resume = load_config(argv)
        train(cfg, resume)
    except (ConfigError, DataError, CheckpointError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.code)
    except OSError as e:  # disk full or permissions outside the checkpoints: the file named, no traceback
        print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        sys.exit(4)
    except KeyboardInterrupt:  # a signal before the loop's handler is in place: no step was taken
        print("stopped: interrupted while starting; nothing new to resume from", file=sys.stderr)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, old_sigterm)


if __name__ == "__main__":
    main()
