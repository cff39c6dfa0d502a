"""config.py: JSON + CLI overrides, and every rejected input exits 2 with one line naming the key."""
import json
import os

import pytest

from config import RETIRED_KEYS, Config, ConfigError, load_config
from conftest import SAMPLE, run_train



def _write(tmp_path, obj, name="c.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


def test_json_then_cli_overrides(tmp_path):
    path = _write(tmp_path, {"data_path": SAMPLE, "lr": 1e-4, "pooling": "mean", "epochs": 2})
    cfg, resume = load_config([path, "--lr", "3e-5", "--max_steps", "10", "--aim", "false", "--resume"])
    assert (cfg.lr, cfg.max_steps, cfg.aim, cfg.pooling, cfg.epochs, resume) == (3e-5, 10, False, "mean", 2.0, True)
    assert isinstance(cfg.epochs, float) and cfg.batch_size == Config.batch_size
    with pytest.raises(Exception):
        cfg.lr = 1.0  # frozen: never mutated after resolving


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ({"lrr": 1e-4}, "unknown key 'lrr'"),
    ({"batch_size": "32"}, "batch_size expects int"),
    ({"batch_size": 3.5}, "batch_size expects int"),
    ({"aim": 1}, "aim expects bool"),
    ({"batch_size": 0}, "batch_size must be > 0"),
    ({"batch_size": -4}, "batch_size must be > 0"),
    ({"lr": -1e-5}, "lr must be > 0"),
    ({"lr": 0}, "lr must be > 0"),
    ({"val_fraction": 1.0}, "val_fraction must be in (0, 1)"),
    ({"val_fraction": 0}, "val_fraction must be in (0, 1)"),
    ({"pooling": "max"}, "pooling must be one of cls, mean"),
    ({"precision": "int4"}, "precision must be one of"),
    ({"truncation": "tail"}, "truncation must be one of head, head_tail"),
    ({"eval_max_length": -1}, "eval_max_length must be >= 0"),
    ({"lr": float("nan")}, "lr must be a finite number, got nan"),  # json writes NaN, as a user might
    ({"epochs": float("inf")}, "epochs must be a finite number, got inf"),
    ({"pos_weight_cap": -5.0}, "pos_weight_cap must be > 0"),
    ({"max_length": 2}, "max_length must be >= 3"),
    ({"eval_max_length": 1}, "eval_max_length must be >= 3"),
    ({"epochs": 0, "max_minutes": 5.0}, "epochs and max_steps are both 0: set one (max_minutes can only shorten"),
    ({"device": "cuda:"}, "device must be auto, cpu, cuda or cuda:N, got 'cuda:'"),
    ({"data_path": "nowhere/train.csv"}, "data_path 'nowhere/train.csv' does not exist"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, content, needle):
    if isinstance(content, dict) and "data_path" not in content:
        content = {"data_path": SAMPLE, **content}
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError, match=None) as e:
        load_config([path])
    assert needle in str(e.value) and path in str(e.value)


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"), ({"lrr": 1e-4}, "unknown key 'lrr'"), ({"lr": "fast"}, "lr expects float")])
def test_bad_config_through_the_cli(tmp_path, content, needle):
    r = run_train([_write(tmp_path, content)])  # one line on stderr, exit 2, no traceback
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_cli_value_and_unknown_flag(tmp_path):
    path = _write(tmp_path, {"data_path": SAMPLE})
    with pytest.raises(ConfigError, match="--max_steps expects int"):
        load_config([path, "--max_steps", "ten"])
    r = run_train([path, "--no_such_key", "1"])
    assert r.returncode == 2 and "unrecognized arguments: --no_such_key" in r.stderr


def test_a_flag_is_named_as_the_flag_and_floats_parse_as_python_does(tmp_path):
    path = _write(tmp_path, {"data_path": SAMPLE, "batch_size": 8})
    with pytest.raises(ConfigError) as e:
        load_config([path, "--grad_clip", "NaN"])
    assert str(e.value) == "--grad_clip must be a finite number, got nan"
    with pytest.raises(ConfigError) as e:  # the bad value came from the flag, not from the file
        load_config([path, "--batch_size", "0"])
    assert str(e.value) == "--batch_size must be > 0, got 0"
    assert load_config([path, "--lr", ".5", "--head_lr", "1e-3"])[0].lr == 0.5  # JSON would refuse ".5"


def test_missing_config_file():
    r = run_train(["configs/nope.json"])
    assert r.returncode == 2 and "configs/nope.json: cannot read" in r.stderr


def test_shipped_configs_load():
    for name in ("mini", "mini_average"):
        cfg, _ = load_config([f"configs/{name}.json"])
        assert cfg.encoder == "sentence-transformers/all-MiniLM-L6-v2"
    assert load_config(["configs/mini_average.json"])[0].pooling == "mean"
    for name, pooling in (("base", "cls"), ("average", "mean")):
        raw = json.load(open(f"configs/{name}.json"))
        assert raw["encoder"] == "google-bert/bert-base-uncased" and raw["pooling"] == pooling
        assert set(raw) <= set(Config.__dataclass_fields__)


def test_bf16_without_hardware_support_falls_back_to_fp32_with_a_warning(monkeypatch, capsys):
    """A choice: configs stay portable (bf16 where the hardware has it), and the fallback is said,
    not silent. AVX2-only CPUs have no bf16; the check is forced both ways so any CPU runs the test."""
    import torch

    from device import resolve_precision
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_precision("bf16", torch.device("cpu")) == "fp32"
    assert capsys.readouterr().out == "warning: bf16 is not supported on this cpu; training in fp32 instead\n"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16" and capsys.readouterr().out == ""
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"


def test_help_lists_every_key_with_its_default_and_meaning(capsys, monkeypatch):
    """Generated from the dataclass: a key added to Config shows up in `python train.py --help` by itself."""
    from dataclasses import fields
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at the terminal's width, hyphens included
    with pytest.raises(SystemExit) as e:
        load_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert e.value.code == 0
    for f in fields(Config):
        assert f.metadata["help"], f.name
        assert f"--{f.name} {f.type.__name__.upper()} {' '.join(f.metadata['help'].split())}" in text, f.name
        assert f"(default: {json.dumps(f.default)})" in text, f.name


@pytest.mark.parametrize("key, value", [("ema_decay", 0.998), ("oversample", 3), ("layer_lr_decay", 0.9)])
def test_a_removed_key_is_refused_with_where_its_result_is(tmp_path, key, value):
    assert key in RETIRED_KEYS and key not in Config.__dataclass_fields__
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"data_path": SAMPLE, key: value}))
    with pytest.raises(ConfigError) as e:
        load_config([str(path)])
    assert str(e.value) == (f"{path}: key {key!r} was removed (it lost in every measurement: docs/experiments.md); "
                            f"delete it")
    assert len(str(e.value).splitlines()) == 1


def test_a_removed_key_through_the_cli_is_one_line_exit_2(tmp_path):
    r = run_train([_write(tmp_path, {"data_path": SAMPLE, "ema_decay": 0.998})])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'c.json'}: key 'ema_decay' was removed (it lost in "
                                             f"every measurement: docs/experiments.md); delete it"]
    r = run_train([_write(tmp_path, {"data_path": SAMPLE}), "--ema_decay", "0.998"])  # no flag for it either
    assert r.returncode == 2 and "unrecognized arguments: --ema_decay" in r.stderr


def test_config_changes_names_what_a_resumed_run_changed():
    from dataclasses import asdict

    from config import config_changes
    saved = asdict(Config(lr=1e-4, batch_size=16))
    assert config_changes(saved, Config(lr=1e-4, batch_size=16)) == ""
    assert config_changes(saved, Config(lr=3e-5, batch_size=16)) == "; config changes {'lr': (0.0001, 3e-05)}"
    assert config_changes({**saved, "ema_decay": 0.9}, Config(lr=1e-4, batch_size=16)) == ""  # a key gone: not a change


def test_save_run_json_writes_the_config_and_how_it_ran(tmp_path):
    from dataclasses import asdict

    from config import save_run_json
    cfg = Config(lr=1e-4, aim_repo="elsewhere")
    save_run_json(str(tmp_path / "run.json"), cfg, "abc123", "bf16", 2)
    assert json.load(open(tmp_path / "run.json")) == {"config": asdict(cfg), "aim_hash": "abc123",
                                                      "aim_repo": "elsewhere", "precision_effective": "bf16",
                                                      "world_size": 2}
    assert os.listdir(tmp_path) == ["run.json"]
