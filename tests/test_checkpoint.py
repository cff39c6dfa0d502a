"""checkpoint.py: checkpoints as plain dicts (version 2: the labels in model_config), loading and resume checks,
building the classifier and rebuilding it from a checkpoint alone, the tokenizer's checks."""
import numpy as np
import pytest
import torch

from checkpoint import (CHECKPOINT_VERSION, CheckpointError, load_checkpoint, load_resumable, make_checkpoint,
                        save_checkpoint)
from config import Config

NAMES = ("spam", "toxic", "threat")  # a label set of the run's own: everything after training reads it here


def _linear_checkpoint(**training):
    model = torch.nn.Linear(2, 1)
    return make_checkpoint(model, {"encoder": "x", "labels": list(NAMES)}, Config(), step=4,
                           metrics={"aucroc_macro": 0.9}, training=training or None)


def test_checkpoints_are_plain_dicts_loaded_with_weights_only(tmp_path):
    path = str(tmp_path / "best.pt")
    save_checkpoint(_linear_checkpoint(), path)
    ckpt = load_checkpoint(path)
    assert CHECKPOINT_VERSION == 2 and ckpt["version"] == 2
    assert ckpt["step"] == 4 and ckpt["config"]["pooling"] == "cls" and ckpt["metrics"] == {"aucroc_macro": 0.9}
    assert ckpt["model_config"]["labels"] == list(NAMES)
    assert "thresholds" not in ckpt and "validation" not in ckpt  # decisions are fitted at export, from validation
    assert set(ckpt["model"]) == {"weight", "bias"} and "optimizer" not in ckpt
    with pytest.raises(CheckpointError, match="cannot resume from it: no optimizer, scaler, state"):
        load_resumable(path, samples_per_step=32)  # best.pt holds the weights only


def test_validation_logits_and_labels_are_kept_as_tensors(tmp_path):
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(5, 3)), (rng.random((5, 3)) < 0.5).astype(np.int64)
    path = str(tmp_path / "best.pt")
    save_checkpoint(make_checkpoint(torch.nn.Linear(2, 1), {"labels": list(NAMES)}, Config(), 4, {},
                                    validation=(logits, labels)), path)
    v = load_checkpoint(path)["validation"]
    assert v["logits"].dtype == torch.float32 and v["labels"].dtype == torch.uint8
    np.testing.assert_array_equal(v["logits"].numpy(), logits.astype(np.float32))
    np.testing.assert_array_equal(v["labels"].numpy(), labels)


def test_build_save_and_rebuild_with_the_checkpoints_labels(tiny_encoder, tmp_path):
    """A model of three labels, saved and rebuilt from the file alone: the same logits, and the labels of its
    outputs in model_config (no num_labels)."""
    from checkpoint import build_model, model_config, model_from_checkpoint
    torch.manual_seed(0)
    model = build_model(tiny_encoder, "mean", 0.0, NAMES).eval()
    mc = model_config(model, tiny_encoder, 0.0, NAMES)
    assert mc["labels"] == list(NAMES) and "num_labels" not in mc
    assert (mc["encoder"], mc["pooling"], mc["dropout"]) == (tiny_encoder, "mean", 0.0)
    path = str(tmp_path / "best.pt")
    save_checkpoint(make_checkpoint(model, mc, Config(), 1, {}), path)
    again = model_from_checkpoint(load_checkpoint(path))
    ids, mask = torch.tensor([[101, 2000, 3000, 102]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        assert again(ids, mask).shape == (1, 3) and torch.equal(model(ids, mask), again(ids, mask))


def test_load_tokenizer_fails_in_one_line_before_the_data(tiny_encoder, tmp_path):
    from checkpoint import load_tokenizer
    from config import ConfigError
    assert load_tokenizer(Config(encoder=tiny_encoder)).token_to_id("[PAD]") == 0
    with pytest.raises(ConfigError, match=r"max_length 128, eval_max_length 600: .* position embeddings for 512"):
        load_tokenizer(Config(encoder=tiny_encoder, eval_max_length=600))
    with pytest.raises(ConfigError, match=r"^encoder '.*nowhere': cannot load it"):
        load_tokenizer(Config(encoder=str(tmp_path / "nowhere")))


def test_resume_refuses_another_number_of_samples_per_step(tmp_path):
    path = str(tmp_path / "last.pt")
    save_checkpoint(_linear_checkpoint(optimizer={}, scaler={}, state={"step": 3, "samples_seen": 48}), path)
    assert load_resumable(path, samples_per_step=16)["state"]["step"] == 3
    with pytest.raises(CheckpointError, match="trained with 16 samples per step, this config gives 8"):
        load_resumable(path, samples_per_step=8)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        load_resumable(str(tmp_path / "nope.pt"), samples_per_step=16)


def test_unreadable_checkpoints_are_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(str(bad))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint written by train.py"):
        load_checkpoint(str(tmp_path / "other.pt"))


def test_a_version_1_checkpoint_is_refused_in_one_line(tmp_path):
    """Version 1 (before 2026-12-07) had num_labels, top-level thresholds, and perhaps a config with removed keys
    (ema_decay, oversample): it is refused as a whole, by load_checkpoint and so by --resume, with one line."""
    path = str(tmp_path / "last.pt")
    old = _linear_checkpoint(optimizer={}, scaler={}, state={"step": 3, "samples_seen": 48})
    old.update(version=1, thresholds=[0.5] * 6, model_config={"encoder": "x", "pooling": "cls", "num_labels": 6})
    old["config"].update(oversample=3, ema_decay=0.0)  # written before 2026-12-01
    save_checkpoint(old, path)
    said = (f"{path}: checkpoint version 1, this train.py writes and reads version 2; train it again (or export it "
            f"with commit d20e400)")
    for load in (load_checkpoint, lambda p: load_resumable(p, samples_per_step=16)):
        with pytest.raises(CheckpointError) as e:
            load(path)
        assert str(e.value) == said and len(str(e.value).splitlines()) == 1
    del old["version"]  # older still: no version at all
    save_checkpoint(old, path)
    with pytest.raises(CheckpointError, match=r"checkpoint version None, this train.py writes and reads version 2"):
        load_checkpoint(path)


def test_a_version_1_checkpoint_through_a_cli_is_one_line_exit_2(tmp_path, capsys):
    import export
    from conftest import run_main
    path = str(tmp_path / "best.pt")
    old = _linear_checkpoint()
    old["version"] = 1
    save_checkpoint(old, path)
    code, out, err = run_main(capsys, ["--checkpoint", path, "--out", str(tmp_path / "exp")], main=export.main)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {path}: checkpoint version 1, this train.py writes and reads version 2; train it again (or export "
        f"it with commit d20e400)"]
    assert not (tmp_path / "exp").exists()


def test_resume_keeps_this_machines_fused_optimizer():
    """A last.pt from an unfused optimizer (a CPU run before 2026-12-02) resumed by a fused one stays fused: the
    bad-step skip on the device, and fp16's GradScaler, need the fused kernel."""
    from checkpoint import restore_training
    model = torch.nn.Linear(3, 2)
    old = torch.optim.AdamW(model.parameters(), fused=False)
    old.param_groups[0]["peak_lr"] = 1e-3
    new = torch.optim.AdamW(model.parameters(), fused=True)
    new.param_groups[0]["peak_lr"] = 2e-3
    ckpt = {"model": model.state_dict(), "optimizer": old.state_dict(), "scaler": {}}
    restore_training(ckpt, "last.pt", model, new, torch.amp.GradScaler("cpu", enabled=False))
    assert new.param_groups[0]["fused"] and new.param_groups[0]["peak_lr"] == 2e-3
