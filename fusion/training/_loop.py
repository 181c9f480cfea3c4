"""Seeding and the training loop shared by every encoder."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .._task import Task
from ._losses import task_loss

__all__ = ["seed_everything", "single_thread", "target_tensor", "train_network"]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the previous count.

    Small networks (fusion heads, MLPs, tabular backbones) spend their time in per-operation
    overhead, which extra threads only add to. Measured on a 2-core machine with another
    process busy: one inner-CV evaluation of an MLP head took 2.9 s with 1 thread and 156 s
    with 2.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a torch generator for data order.

    Deterministic algorithms are not forced: on the CPU the results repeat for a seed, on a
    GPU some kernels (3D convolutions' backward among them) may not.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def target_tensor(task: Task, target: np.ndarray) -> torch.Tensor:
    """Convert a target array (``(n,)`` or survival ``(n, 2)``) to the tensor the loss expects."""
    if task.kind == "multiclass":
        return torch.as_tensor(target, dtype=torch.long)
    return torch.as_tensor(np.asarray(target, dtype=np.float32))


def train_network(
    forward: Callable[..., torch.Tensor],
    parameters: Sequence[torch.nn.Parameter],
    inputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    task: Task,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    generator: torch.Generator,
    modules: Sequence[torch.nn.Module] = (),
) -> list[float]:
    """Train with AdamW on shuffled mini-batches; return the mean loss of each epoch.

    ``forward(*batch_inputs)`` returns raw scores. For survival, each batch must hold
    events for the Cox loss to carry information, so batches are at least 16 subjects
    or the whole set, whichever is smaller. A final batch of one subject is merged into
    the previous one because batch normalisation cannot train on a single sample.
    """
    n = len(target)
    if task.kind == "survival":
        batch_size = max(batch_size, min(n, 16))
    batch_size = min(batch_size, n)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    for module in modules:
        module.train()

    history = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] < 2:
            starts.pop()
        total = 0.0
        for index, start in enumerate(starts):
            stop = starts[index + 1] if index + 1 < len(starts) else n
            batch = order[start:stop]
            optimizer.zero_grad(set_to_none=True)
            loss = task_loss(task, forward(*(x[batch] for x in inputs)), target[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        history.append(total / n)

    for module in modules:
        module.eval()
    return history
