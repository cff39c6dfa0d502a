"""optim.py: the schedule, the budget horizon, AdamW's groups and the loss weights, as pure functions."""
import numpy as np
import pytest
import torch

from config import Config
from optim import MIN_TIMED_STEPS, budget_horizon, get_lr, make_optimizer, pos_weights


def test_get_lr_warms_up_linearly_then_decays_to_zero_at_the_end():
    assert [get_lr(s, 10, 4) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # never 0 at step 0
    assert get_lr(4, 10, 4) == 1.0  # the peak, right after warmup
    assert get_lr(7, 10, 4) == pytest.approx(0.5)
    assert get_lr(10, 10, 4) == 0.0 and get_lr(12, 10, 4) == 0.0  # past the end: 0, never negative
    assert get_lr(0, 10, 0) == 1.0  # no warmup: the peak from the first step
    assert get_lr(3, 3, 3) == 0.0  # warmup as long as the run: the decay does not divide by zero


def test_budget_horizon_without_a_budget_is_the_last_step():
    assert budget_horizon(0, 500, 0, 0.0, None, None) == 500
    assert budget_horizon(40, 500, 0, 99.0, 1.0, 123) == 500  # a saved horizon means nothing without a budget


def test_budget_horizon_fits_the_steps_left_in_the_time_left():
    # 100 s left at 2 s a step: 50 more steps from step 30
    assert budget_horizon(30, 500, 600, 500.0, 2.0, None) == 80
    assert budget_horizon(30, 60, 600, 500.0, 2.0, None) == 60  # the epochs end first: never beyond them
    assert budget_horizon(30, 500, 600, 700.0, 2.0, None) <= 30  # out of time: the schedule ends now


def test_budget_horizon_before_timing_keeps_the_saved_one():
    """Until an attempt has timed MIN_TIMED_STEPS steps its own step time is noise, and a resumed run must
    not jump to total_steps (its lr would leap up): it keeps the last attempt's horizon."""
    assert MIN_TIMED_STEPS >= 1
    assert budget_horizon(200, 500, 600, 300.0, None, 320) == 320
    assert budget_horizon(200, 500, 600, 300.0, None, 900) == 500  # capped at the config's steps
    assert budget_horizon(0, 500, 600, 0.0, None, None) == 500  # a fresh run: the whole schedule, until timed


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        self.head = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 6))


def test_make_optimizer_groups_encoder_and_head_with_decay_on_matrices_only():
    model = Tiny()
    model.encoder[1].weight.requires_grad_(False)  # frozen parameters are left out
    opt = make_optimizer(model, Config(lr=1e-4, head_lr=1e-3, weight_decay=0.05), fused=False)
    groups = [[id(p) for p in g["params"]] for g in opt.param_groups]
    enc, head = list(model.encoder.parameters()), list(model.head.parameters())
    # the order older last.pt files hold: encoder decayed, encoder not, head decayed, head not
    expected = [[id(enc[0])], [id(enc[1]), id(enc[3])], [id(head[0]), id(head[2])], [id(head[1]), id(head[3])]]
    assert groups == expected
    assert [(g["peak_lr"], g["weight_decay"]) for g in opt.param_groups] == [
        (1e-4, 0.05), (1e-4, 0.0), (1e-3, 0.05), (1e-3, 0.0)]


def test_fused_adamw_on_a_cpu_trains_as_the_default_one():
    """train.py asks for the fused AdamW on a CPU too (issue 28: ~5x less CPU per step): the same weights as
    torch's default for-loop AdamW, to float rounding, over steps with the project's groups, decay and clip."""
    weights = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model, x = Tiny(), torch.randn(16, 4)
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        opt = make_optimizer(model, Config(lr=1e-2, head_lr=1e-1, weight_decay=0.05), fused=fused)
        for g in opt.param_groups:
            g["lr"] = g["peak_lr"]
        for _ in range(20):
            model.head(model.encoder(x)).square().mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        weights[fused] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (weights[True] - start).abs().max() > 0.1  # it trained
    torch.testing.assert_close(weights[True], weights[False], rtol=1e-5, atol=1e-6)


def test_pos_weights_are_sqrt_of_negatives_over_positives_capped():
    labels = np.zeros((100, 6), dtype=np.uint8)
    labels[:50, 0] = 1   # 50 / 50 -> 1
    labels[:4, 1] = 1    # 96 / 4 -> sqrt(24)
    labels[:1, 2] = 1    # 99 / 1 -> sqrt(99) = 9.95, under the cap
    # labels 3..5 have no positives: counted as one, sqrt(99), then capped at 5
    w = pos_weights(labels, "sqrt", cap=5.0)
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx([1.0, 24 ** 0.5, 5.0, 5.0, 5.0, 5.0])
    assert pos_weights(labels, "sqrt", cap=10.0)[2].item() == pytest.approx(99 ** 0.5)
    assert pos_weights(labels, "none", cap=5.0).tolist() == [1.0] * 6
