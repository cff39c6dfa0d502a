"""Fine-tune a BERT encoder as a multilabel toxic-comment classifier (common.LABELS). Plain PyTorch, one loop.

    python train.py configs/mini.json                          # embedded MiniLM, sample data, CPU
    python train.py configs/base.json --lr 3e-5 --max_steps 10 # any key can be overridden
    python train.py configs/mini.json --resume                 # continue from out_dir/last.pt
    python train.py --help                                     # every config key, its default and meaning
    torchrun --nproc_per_node=8 train.py configs/base.json     # DistributedDataParallel
Writes out_dir/best.pt (best validation AUC), out_dir/last.pt (everything needed to resume),
out_dir/val_predictions.npz, out_dir/run.json, and an Aim run in aim_repo.

Faults. Every file is replaced atomically, so a kill at any moment (SIGKILL included) leaves the
previous checkpoint whole, and --resume from it ends with the same weights as an uninterrupted run.
--resume without out_dir/last.pt is an error (a typo in out_dir never silently starts over).
Exit codes (common.py): 2 bad config, data, checkpoint or Aim repo, found before the data is read where
it can be; 3 `max_bad_steps` non-finite steps in a row (fp16 leaves overflows to its GradScaler; a
non-finite loss counts); 4 a write failed, e.g. disk full: training stops, the previous checkpoint
intact; 130/143 Ctrl-C/SIGTERM: last.pt written, the Aim run closed (130 too while starting up).
Aim failing mid-run only warns. A run a killed process left open is closed by the next start.
"""
import json
import math
import os
import resource
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (CheckpointError, build_model, load_checkpoint, load_resumable, load_tokenizer, make_checkpoint,
                        model_config, restore_training, save_checkpoint)
from common import (EXIT_FILESYSTEM, EXIT_NUMERICAL, LABELS, Stopped, exit_on_error, signal_code, sigterm_as_interrupt,
                    stop_on_signals)
from config import ConfigError, config_changes, load_config, save_run_json
from data import micro_batches, prepare
from device import (agree, any_rank, autocast_for, init_distributed, limit_heap_growth, node_leader_first, on_device,
                    resolve_precision)
from metrics import format_metrics
from optim import MIN_TIMED_STEPS, budget_horizon, get_lr, make_optimizer, pos_weights
from tracking import make_tracker, prepare_repo
from validation import save_predictions, validate

# ----------------------------------------------------------------------------
# setting up


def build_training(cfg, data, precision, device):
    """What train_step needs -> (model, optimizer, GradScaler, autocast, BCE pos_weight). bench/train_speed.py
    times train_step on these too. A new run trains the default label set, common.LABELS."""
    torch.manual_seed(cfg.seed)
    try:
        model = build_model(cfg.encoder, cfg.pooling, cfg.dropout, LABELS).to(device)
    except OSError as e:  # a config and tokenizer without weights
        raise ConfigError(f"encoder {cfg.encoder!r}: cannot load its weights ({str(e).splitlines()[0]})") from None
    # fused on CUDA and CPU: it skips a bad step on the device (no sync), and on a CPU it takes ~5x less CPU
    # than torch's default for-loop AdamW (issue 28), the same weights to ~3e-8 after two steps
    optimizer = make_optimizer(model, cfg, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    pos_weight = pos_weights(data.ds.labels[data.train_idx], cfg.pos_weight, cfg.pos_weight_cap).to(device)
    return model, optimizer, scaler, autocast_for(precision, device), pos_weight


# ----------------------------------------------------------------------------
# one optimizer step, and what the loop does around it


def train_step(model, raw_model, batches, optimizer, scaler, autocast, pos_weight, accum_steps, grad_clip,
               skip_nonfinite):
    """One optimizer step: accum_steps micro-steps over loss / accum_steps, unscale, clip, step. No host-device sync.

    Under DDP, gradients are all-reduced on the last micro-step only (no_sync before it).
    With skip_nonfinite, a NaN/inf gradient norm skips the update on the device (fp16 leaves that to the
    GradScaler). -> (summed loss tensor, bad: a bool tensor, true where the norm (with skip_nonfinite) or,
    for fp16, the loss was not finite, real tokens, padded tokens)
    """
    loss_sum, real, padded = 0.0, 0, 0
    for micro in range(accum_steps):
        ids, mask, y, n_real = next(batches)
        real, padded = real + n_real, padded + mask.numel()
        last = micro == accum_steps - 1
        with (model.no_sync() if hasattr(model, "no_sync") and not last else nullcontext()):
            with autocast:
                logits = model(ids, mask)  # (B,T) -> (B,6)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=pos_weight) / accum_steps
            scaler.scale(loss).backward()
        loss_sum = loss_sum + loss.detach()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip or math.inf)
    skip = ~torch.isfinite(norm) if skip_nonfinite else torch.zeros((), dtype=torch.bool, device=norm.device)
    if scaler.is_enabled():
        scaler.step(optimizer)  # fused AdamW takes the GradScaler's inf flag on the device
        scaler.update()
    elif optimizer.defaults.get("fused"):
        optimizer.found_inf = skip.float()  # the GradScaler's way to tell fused AdamW: 1 skips it, on the device
        optimizer.step()
        del optimizer.found_inf
    elif not skip:  # any other optimizer: the host must look (a sync)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, skip if skip_nonfinite else ~torch.isfinite(loss_sum), real, padded


def seed_step(cfg, rank, step):
    """Dropout masks as a function of (seed, rank, step), so a resumed run draws the ones it would have."""
    torch.manual_seed(hash((cfg.seed, rank, step)) % 2**63)


def count_bad_steps(flags, bad_steps, first, cfg, log):
    """Non-finite steps in a row after the steps first, first + 1, ... whose flags (1: bad) came with the last sync;
    max_bad_steps of them stop training (exit 3). Skipped on the device, bad steps leave the weights as they were,
    so learning of them a few steps late writes no bad checkpoint (eval steps sync too).
    fp32 and bf16: a non-finite gradient norm (all-reduced, so the same on every rank). fp16: its GradScaler
    skips overflows itself (routine while the scale settles); a non-finite loss is no overflow a smaller scale
    can fix, so that counts as bad."""
    for step, bad in enumerate(flags, first):
        if not bad:
            bad_steps = 0
            continue
        bad_steps += 1
        log(f"warning: step {step}: non-finite loss or gradient, step skipped ({bad_steps}/{cfg.max_bad_steps})")
        if bad_steps >= cfg.max_bad_steps:
            raise Stopped(f"step {step}: {bad_steps} consecutive non-finite steps; stopping. "
                          f"The last good checkpoints are kept in {cfg.out_dir}", EXIT_NUMERICAL)
    return bad_steps


def resumable_everywhere(path, samples_per_step, rank, world, device):
    """checkpoint.load_resumable on every rank, and the same outcome on all: a rank that cannot read last.pt
    (an out_dir local to rank 0's node) stops them all at once, where rank 0 alone would go on and hang in its
    first collective until dist_timeout_s."""
    try:
        ckpt, failed = load_resumable(path, samples_per_step), None
    except CheckpointError as e:
        ckpt, failed = None, e
    if any_rank(failed is not None, world, device):
        raise failed or CheckpointError(f"{path}: another rank cannot resume from it (rank 0 can): out_dir must be "
                                        f"on a file system all nodes share (README: many GPUs)")
    return ckpt


def write_checkpoint(path, raw_model, cfg, step, metrics, training=None, validation=None):
    """best.pt holds the validated weights and their validation logits and labels (validation, from which
    export.py fits calibration and policies); last.pt adds training (optimizer, scaler, loop state)."""
    ckpt = make_checkpoint(raw_model, model_config(raw_model, cfg.encoder, cfg.dropout, LABELS), cfg, step, metrics,
                           training, validation)
    try:
        save_checkpoint(ckpt, path)
    except OSError as e:  # disk full: stop now rather than train on with nothing to resume from
        raise Stopped(f"{path}: cannot write checkpoint ({e.strerror or e}); nothing was replaced: "
                      f"free some space, then continue with --resume", EXIT_FILESYSTEM) from None


def next_control(caught, budget, elapsed, step, total_steps, mean_step, horizon):
    """This rank's view of what the loop does next -> [a signal came, out of time, the step the lr ends at]."""
    return [float(bool(caught)), float(bool(budget) and elapsed >= budget),
            float(budget_horizon(step, total_steps, budget, elapsed, mean_step, horizon))]


def log_progress(tracker, cfg, step, horizon, loss_sum, lr, per_step, seconds, tokens_real, tokens_padded):
    """The last log_every steps: mean loss, lr, speed, padding and time left, printed and tracked."""
    loss, samples_per_s = loss_sum / cfg.log_every, cfg.log_every * per_step / seconds
    eta_min = (horizon - step) * seconds / cfg.log_every / 60
    tracker.track("train_loss", loss, step, "train")
    tracker.track("lr", lr, step, "train")
    tracker.track("samples_per_s", samples_per_s, step, "train")
    print(f"step {step}/{horizon} | loss {loss:.4f} | lr {lr:.2e} | {samples_per_s:.1f} samples/s"
          f" | pad {1 - tokens_real / max(1, tokens_padded):.0%} | eta {eta_min:.1f} min", flush=True)


# ----------------------------------------------------------------------------
# the loop


def train(cfg, resume=False):
    """Train to the end of the schedule (or budget) -> the best checkpoint's metrics and the run's totals."""
    limit_heap_growth()
    rank, world, device = init_distributed(cfg)
    try:
        return run_training(cfg, resume, rank, world, device)
    finally:  # every way out, errors and signals too: NCCL warns of a leak, and may hang the exit, without it
        if world > 1:
            dist.destroy_process_group()


def set_up(cfg, resume, rank, world, device):
    """Everything before the first step, what fails fastest first -> a namespace: the model (raw and wrapped),
    optimizer, scaler, autocast, pos_weight, data and its batches, the loop state, paths and figures."""
    master = rank == 0
    log = print if master else (lambda *a, **k: None)
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cuda":  # TF32 matmuls and convolutions: free speed on Ampere and later
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    per_step = cfg.batch_size * cfg.accum_steps * world  # samples per optimizer step, all ranks together
    log(f"config: {json.dumps(asdict(cfg))}")
    log(f"device {device} x{world} | precision {precision} | global batch {per_step} "
        f"= {cfg.batch_size} per rank x {cfg.accum_steps} accum x {world} ranks")
    paths = {f: os.path.join(cfg.out_dir, f) for f in ("best.pt", "last.pt", "run.json", "val_predictions.npz")}
    ckpt = resumable_everywhere(paths["last.pt"], per_step, rank, world, device) if resume else None
    tokenizer = load_tokenizer(cfg)
    if cfg.aim and master:
        prepare_repo(cfg.aim_repo, paths["run.json"], ckpt["state"].get("aim_hash") if resume else None)
    with node_leader_first(world, device):  # one tokenization per node; its other ranks read the cache
        data = prepare(cfg, tokenizer, per_step)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * data.steps_per_epoch)
    log(f"data {cfg.data_path}: {len(data.train_idx)} train / {len(data.val_idx)} val rows, "
        f"{data.steps_per_epoch} steps per epoch, {total_steps} steps")
    raw_model, optimizer, scaler, autocast, pos_weight = build_training(cfg, data, precision, device)
    os.makedirs(cfg.out_dir, exist_ok=True)
    # horizon: the step the schedule ends at, saved so a resumed budget run goes on with it
    state = {"step": 0, "samples_seen": 0, "best_auc": -math.inf, "train_seconds": 0.0, "aim_hash": None,
             "horizon": None}
    last_metrics = {}  # the last evaluation's: a resume stopped again before its first eval writes them back
    if resume:
        restore_training(ckpt, paths["last.pt"], raw_model, optimizer, scaler)
        state.update(ckpt["state"])
        last_metrics = ckpt.get("metrics") or {}
        log(f"resumed from {paths['last.pt']} at step {state['step']}{config_changes(ckpt['config'], cfg)}")
    model = raw_model
    if world > 1:  # BERT's buffers are constants (no broadcast); gradients live in the all-reduce buckets
        model = DDP(raw_model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
                    gradient_as_bucket_view=True)
    if cfg.compile:  # bucketed widths: one static graph per bucket; else dynamo's own choice (dynamic on a change)
        model = torch.compile(model, dynamic=False if cfg.pad_multiple else None)
    hparams = {**asdict(cfg), "precision_effective": precision, "world_size": world, "global_batch": per_step,
               "torch": str(torch.__version__)}
    return SimpleNamespace(master=master, log=log, precision=precision, per_step=per_step, paths=paths, data=data,
                           total_steps=total_steps, raw_model=raw_model, model=model, optimizer=optimizer,
                           scaler=scaler, autocast=autocast, pos_weight=pos_weight, state=state,
                           last_metrics=last_metrics, hparams=hparams,
                           batches=on_device(micro_batches(data, cfg, rank, world, state["samples_seen"]), device))


def validate_and_save(run, cfg, step, tracker, rank, world, device):
    """Validate, track and print; a new best mean AUC writes best.pt (with the validation logits) and
    val_predictions.npz (with the thresholds tuned at the rows' own rates) -> the metrics."""
    data = run.data
    metrics, logits, thresholds = validate(run.raw_model, data.val_seqs, data.val_idx, data.ds.labels, LABELS, cfg,
                                           device, run.autocast, rank, world)
    for k, v in metrics.items():
        tracker.track(f"eval_{k}", v, step, "val")
    run.log(f"eval step {step}: loss {metrics['loss']:.4f} | {format_metrics(metrics, LABELS)}")
    if metrics["aucroc_macro"] > run.state["best_auc"]:
        run.state["best_auc"] = metrics["aucroc_macro"]
        if run.master:
            write_checkpoint(run.paths["best.pt"], run.raw_model, cfg, step, metrics,
                             validation=(logits, data.ds.labels[data.val_idx]))
            save_predictions(run.paths["val_predictions.npz"], data.ds, data.val_idx, logits, thresholds, step, LABELS)
    return metrics


def run_training(cfg, resume, rank, world, device):
    run = set_up(cfg, resume, rank, world, device)
    state, optimizer, master = run.state, run.optimizer, run.master
    # every way out closes the Aim run (else it stays 'active' and locked) and gives the signals back
    with make_tracker(cfg.aim and master, cfg.aim_repo, os.path.basename(os.path.normpath(cfg.out_dir)), run.hparams,
                      state["aim_hash"]) as tracker, stop_on_signals() as caught:
        state["aim_hash"] = tracker.hash
        if master:
            save_run_json(run.paths["run.json"], cfg, tracker.hash, run.precision, world)
        step, first_step, budget = state["step"], state["step"], cfg.max_minutes * 60
        t_start = time.time() - state["train_seconds"]
        step_seconds, step_count, bad_steps, pending = 0.0, 0, 0, []  # pending: bad flags on the device, since the sync
        loss_sum, tokens_real, tokens_padded, t_log = torch.zeros((), device=device), 0, 0, time.time()
        control = next_control(caught, budget, time.time() - t_start, step, run.total_steps, None, state["horizon"])
        control = agree(control, loss_sum, [], rank, world)[0]  # every rank starts on rank 0's horizon
        run.raw_model.train()
        while True:
            # set the lr: the schedule ends at the horizon (a budget's estimate, or the last step), rank 0's
            stop, out_of_time, horizon = bool(control[0]), bool(control[1]), int(control[2])
            lr_mult = get_lr(step, horizon, cfg.warmup_steps)
            for g in optimizer.param_groups:
                g["lr"] = g["peak_lr"] * lr_mult
            done = step >= horizon or out_of_time
            state.update(step=step, train_seconds=time.time() - t_start, horizon=horizon)

            # evaluate and save
            evaluating = step > first_step and (step % cfg.eval_every == 0 or done)
            if evaluating:
                run.last_metrics = validate_and_save(run, cfg, step, tracker, rank, world, device)
            if master and (evaluating or stop):
                training = {"optimizer": optimizer.state_dict(), "scaler": run.scaler.state_dict(), "state": dict(state)}
                write_checkpoint(run.paths["last.pt"], run.raw_model, cfg, step, run.last_metrics, training)
            if done:
                break
            if stop:
                signum = caught[0] if caught else signal.SIGINT  # ranks > 0 learn of it from rank 0
                raise Stopped(f"{signal.Signals(signum).name} at step {step}; last.pt written, "
                              f"continue with --resume", signal_code(signum))

            # one optimizer step: micro-steps, unscale, clip, step, zero_grad
            t0 = time.time()
            seed_step(cfg, rank, step)
            loss, bad, real, padded = train_step(run.model, run.raw_model, run.batches, optimizer, run.scaler,
                                                 run.autocast, run.pos_weight, cfg.accum_steps, cfg.grad_clip,
                                                 skip_nonfinite=run.precision != "fp16")
            loss_sum += torch.where(bad, 0.0, loss)
            pending.append(bad)
            tokens_real, tokens_padded = tokens_real + real, tokens_padded + padded
            step += 1
            state["samples_seen"] += run.per_step
            step_seconds, step_count = step_seconds + time.time() - t0, step_count + 1

            # log, with the loop's one host-device sync (and under DDP its one collective): on log and eval
            # steps and the last, never between. One process decides on stopping at every step, on the host.
            mean_step = step_seconds / step_count if step_count >= MIN_TIMED_STEPS else None
            mine = next_control(caught, budget, time.time() - t_start, step, run.total_steps, mean_step, horizon)
            control = mine if world == 1 else control  # ranks act on what rank 0 said at the last sync
            if step % cfg.log_every == 0 or step % cfg.eval_every == 0 or step >= control[2] or any(control[:2]):
                control, loss_total, flags = agree(mine, loss_sum, pending, rank, world)
                bad_steps = count_bad_steps(flags, bad_steps, step - len(pending), cfg, run.log)
                pending = []
                if step % cfg.log_every == 0:
                    if master:
                        log_progress(tracker, cfg, step, horizon, loss_total, lr_mult * cfg.lr, run.per_step,
                                     time.time() - t_log, tokens_real, tokens_padded)
                    loss_sum.zero_()
                    tokens_real, tokens_padded, t_log = 0, 0, time.time()
    return summarise_run(run, step, t_start)


def summarise_run(run, step, t_start):
    """The closing line, and what train() returns: the best checkpoint's metrics and the run's totals."""
    best_path, state = run.paths["best.pt"], run.state
    best = load_checkpoint(best_path)["metrics"] if run.master and os.path.exists(best_path) else run.last_metrics or None
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    run.log(f"done: {step} steps, {state['samples_seen']} samples in {(time.time() - t_start) / 60:.1f} min, "
            f"peak RSS {peak_mb:.0f} MB; " + (f"best {format_metrics(best, LABELS)}" if best else "no evaluation yet"))
    return {"best": best, "last": run.last_metrics or None, "steps": step, "samples_seen": state["samples_seen"],
            "train_seconds": state["train_seconds"], "precision": run.precision, "peak_rss_mb": peak_mb}


def main(argv=None):
    with exit_on_error(), sigterm_as_interrupt():  # until the loop takes signals over, SIGTERM stops as Ctrl-C does
        try:
            cfg, resume = load_config(argv)
            train(cfg, resume)
        except KeyboardInterrupt:  # a signal before the loop's handler is in place: no step was taken
            raise Stopped("interrupted while starting; nothing new to resume from",
                          signal_code(signal.SIGINT)) from None


if __name__ == "__main__":
    main()
