"""Losses for every task, on raw scores as laid out in ``fusion._task``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._task import Task

__all__ = ["cox_partial_likelihood_loss", "task_loss"]


def cox_partial_likelihood_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow handling of ties), averaged over events.

    Parameters
    ----------
    risk
        Log relative risk, shape ``(n,)``; higher means an earlier expected event.
    time, event
        Shape ``(n,)``; ``event`` is 1 where the event was observed, 0 where censored.

    Returns 0 (with a gradient path) when the batch contains no event, because the partial
    likelihood has no factor then.
    """
    risk = risk.reshape(-1)
    event = event.reshape(-1).to(risk.dtype)
    order = torch.argsort(time.reshape(-1), descending=True, stable=True)
    risk, event, time_sorted = risk[order], event[order], time.reshape(-1)[order]

    # Running log-sum-exp over subjects still at risk (times >= t). Under Breslow's rule,
    # tied subjects share the risk set of the first one, so take the value at the last
    # index of each tied block.
    log_cumsum = torch.logcumsumexp(risk, dim=0)
    _, counts = torch.unique_consecutive(time_sorted, return_counts=True)
    block_end = torch.cumsum(counts, dim=0) - 1
    log_risk_set = torch.repeat_interleave(log_cumsum[block_end], counts)

    n_events = event.sum()
    if n_events == 0:
        return risk.sum() * 0.0
    return -((risk - log_risk_set) * event).sum() / n_events


def task_loss(task: Task, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss of raw ``scores`` against ``target``.

    ``target`` is ``(n,)`` for binary (0/1), multiclass (class index) and regression, and
    ``(n, 2)`` holding time and event for survival. ``scores`` is ``(n,)``, or ``(n, K)`` for
    multiclass; a trailing dimension of size 1 is squeezed so ``(n,)`` never broadcasts
    against ``(n, 1)`` into an ``(n, n)`` loss.
    """
    if task.kind == "multiclass":
        return F.cross_entropy(scores, target.long())
    scores = scores.reshape(-1)
    if task.kind == "binary":
        return F.binary_cross_entropy_with_logits(scores, target.reshape(-1).to(scores.dtype))
    if task.kind == "regression":
        return F.mse_loss(scores, target.reshape(-1).to(scores.dtype))
    return cox_partial_likelihood_loss(scores, target[:, 0], target[:, 1])
