"""Losses: Cox partial likelihood against hand-computed values, shape safety."""

import math

import pytest
import torch

from fusion import Task
from fusion.training import cox_partial_likelihood_loss, task_loss


def test_cox_loss_hand_computed():
    # Times 1, 2, 3 with events at 1 and 3, risks 0, 1, 2.
    # Event at t=1: risk set {all}: 0 - log(e^0 + e^1 + e^2).
    # Event at t=3: risk set {3}: 2 - log(e^2) = 0.
    risk = torch.tensor([0.0, 1.0, 2.0])
    time = torch.tensor([1.0, 2.0, 3.0])
    event = torch.tensor([1.0, 0.0, 1.0])
    expected = -(0 - math.log(1 + math.e + math.e**2) + 0.0) / 2
    assert cox_partial_likelihood_loss(risk, time, event).item() == pytest.approx(expected, rel=1e-6)


def test_cox_loss_breslow_ties_share_risk_set():
    # Two events tied at t=1: both use the risk set of all three subjects.
    risk = torch.tensor([0.5, -0.5, 1.0])
    time = torch.tensor([1.0, 1.0, 2.0])
    event = torch.tensor([1.0, 1.0, 0.0])
    log_all = math.log(math.exp(0.5) + math.exp(-0.5) + math.exp(1.0))
    expected = -((0.5 - log_all) + (-0.5 - log_all)) / 2
    assert cox_partial_likelihood_loss(risk, time, event).item() == pytest.approx(expected, rel=1e-6)


def test_cox_loss_invariant_to_row_order():
    generator = torch.Generator().manual_seed(0)
    risk = torch.randn(20, generator=generator)
    time = torch.randint(1, 8, (20,), generator=generator).float()
    event = (torch.rand(20, generator=generator) > 0.4).float()
    order = torch.randperm(20, generator=generator)
    first = cox_partial_likelihood_loss(risk, time, event)
    second = cox_partial_likelihood_loss(risk[order], time[order], event[order])
    assert first.item() == pytest.approx(second.item(), rel=1e-6)


def test_cox_loss_without_events_is_zero_with_gradient():
    risk = torch.zeros(3, requires_grad=True)
    loss = cox_partial_likelihood_loss(risk, torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3))
    loss.backward()
    assert loss.item() == 0.0
    assert risk.grad is not None


def test_task_loss_column_scores_do_not_broadcast():
    # (n, 1) scores against (n,) targets must not become an (n, n) loss.
    scores = torch.tensor([[0.0], [2.0], [-1.0]])
    target = torch.tensor([0.0, 1.0, 0.0])
    expected = torch.nn.functional.mse_loss(scores[:, 0], target)
    assert task_loss(Task("regression"), scores, target).item() == pytest.approx(expected.item())
