"""model.py: pooling, padding invariance, rebuilding from a checkpoint dict, the attention path it trains on."""
import torch

import pytest

from checkpoint import build_model, model_config, model_from_checkpoint
from common import LABELS
from model import ToxicClassifier


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (3, 9))
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7])
    ids[:, 0] = 101  # [CLS]
    return ids * mask, mask


def test_padding_does_not_change_logits(tiny_encoder):
    for pooling in ("cls", "mean"):
        model = build_model(tiny_encoder, pooling, 0.0, LABELS).eval()
        ids, mask = _batch()
        extra = torch.zeros(3, 7, dtype=torch.long)
        with torch.no_grad():
            a = model(ids, mask)
            b = model(torch.cat([ids, extra], 1), torch.cat([mask, extra], 1))
        assert a.shape == (3, 6)
        assert torch.allclose(a, b, atol=1e-5), (pooling, (a - b).abs().max())


def test_mean_pooling_is_masked_mean_and_differs_from_cls(tiny_encoder):
    torch.manual_seed(0)
    cls = build_model(tiny_encoder, "cls", 0.0, LABELS).eval()
    mean = build_model(tiny_encoder, "mean", 0.0, LABELS).eval()
    mean.head.load_state_dict(cls.head.state_dict())
    ids, mask = _batch()
    with torch.no_grad():
        h = cls.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = torch.stack([h[i, :int(mask[i].sum())].mean(0) for i in range(3)])
        assert torch.allclose(mean.head(expected), mean(ids, mask), atol=1e-5)
        assert not torch.allclose(cls(ids, mask), mean(ids, mask), atol=1e-3)


def test_rebuild_from_checkpoint_dict(tiny_encoder):
    names = ("toxic", "spam")  # a run's own labels: the head has one output each, rebuilt from model_config
    model = build_model(tiny_encoder, "mean", 0.1, names).eval()
    ckpt = {"model": model.state_dict(), "model_config": model_config(model, tiny_encoder, 0.1, names)}
    again = model_from_checkpoint(ckpt)
    ids, mask = _batch()
    with torch.no_grad():
        assert model(ids, mask).shape == (3, 2) and torch.equal(model(ids, mask), again(ids, mask))
    assert isinstance(again, ToxicClassifier) and again.pooling == "mean" and not again.training


def test_dropout_reaches_the_head_and_the_encoder(tiny_encoder):
    model = build_model(tiny_encoder, "cls", 0.3, LABELS)
    assert model.head[2].p == 0.3
    assert model.encoder.config.hidden_dropout_prob == model.encoder.config.attention_probs_dropout_prob == 0.3
    assert model.encoder.pooler is None  # unused: DDP would see parameters without gradients


def test_every_argument_is_required_and_pooling_is_checked(tiny_encoder):
    encoder = build_model(tiny_encoder, "cls", 0.0, LABELS).encoder
    with pytest.raises(TypeError):
        ToxicClassifier(encoder, "cls", 0.0)  # num_labels has no default any more
    with pytest.raises(TypeError):
        build_model(tiny_encoder, "cls", 0.0)  # nor the labels
    with pytest.raises(ValueError, match="pooling must be cls or mean, got 'max'"):
        ToxicClassifier(encoder, "max", 0.0, 6)


def _attention_ops(model, ids, mask, grad):
    """The model's logits under bf16 autocast, and the names of the ops the forward ran."""
    with torch.profiler.profile() as prof, torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, mask)
    return logits.float(), {e.key for e in prof.key_averages()}


def test_cpu_bf16_training_attends_on_the_math_path_and_agrees_with_the_fused_kernel(tiny_encoder):
    # the fused CPU kernel's bf16 backward was 60% of a MiniLM step: training takes the math path, a forward
    # without gradients keeps the fused kernel, and both give the same logits
    model = build_model(tiny_encoder, "mean", 0.0, LABELS)
    ids, mask = _batch()
    trained, train_ops = _attention_ops(model, ids, mask, grad=True)
    scored, eval_ops = _attention_ops(model, ids, mask, grad=False)
    fused = {op for op in eval_ops if "flash_attention" in op}
    assert fused and not fused & train_ops and "aten::_softmax" in train_ops
    assert torch.allclose(trained, scored, atol=0.05), (trained - scored).abs().max()
    trained.sum().backward()  # and gradients flow through the math path
    assert model.encoder.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
