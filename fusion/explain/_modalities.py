"""Modality contributions: Shapley values over coalitions of modalities.

The value of a coalition ``S`` for a subject is the fused raw score with every modality
outside ``S`` absent, which is the same path a modality that was never acquired takes.
By the efficiency property the contributions sum to the full prediction minus the
all-absent baseline. Up to ``MAX_EXACT_MODALITIES`` modalities every one of the ``2^M``
coalitions is evaluated; above that, permutations are sampled.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from ..strategies._late import FusionHead, FusionInputs

__all__ = ["MAX_EXACT_MODALITIES", "eval_mode", "modality_shapley"]

MAX_EXACT_MODALITIES = 8


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode and restore each one's previous mode afterwards."""
    previous = [m.training for m in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in zip(modules, previous):
            module.train(training)


def _scalar_scores(head: FusionHead, inputs: FusionInputs, mask: torch.Tensor, classes: torch.Tensor | None) -> np.ndarray:
    scores = head(inputs.embeddings, inputs.scores, mask)  # (n, k)
    if classes is None:
        return scores[:, 0].numpy()
    return scores.gather(1, classes[:, None])[:, 0].numpy()


@torch.no_grad()
def modality_shapley(head: FusionHead, inputs: FusionInputs, *, n_permutations: int = 200,
                     seed: int = 0) -> pd.DataFrame:
    """Return one row per subject: ``baseline``, ``prediction`` and one column per modality.

    Values are raw scores (logit, log-risk, or the target's unit); for multiclass they are
    the logit of the class the full model predicts. ``prediction - baseline`` equals the
    sum of the modality columns exactly for ``M <= MAX_EXACT_MODALITIES`` and up to
    sampling error above.
    """
    with eval_mode(head):
        n, m = inputs.mask.shape
        classes = None
        if head.output_dim > 1:
            classes = head(inputs.embeddings, inputs.scores, inputs.mask).argmax(dim=1)

        def value(members: tuple[int, ...]) -> np.ndarray:
            keep = torch.zeros(m)
            keep[list(members)] = 1.0
            return _scalar_scores(head, inputs, inputs.mask * keep, classes)

        shapley = np.zeros((n, m))
        if m <= MAX_EXACT_MODALITIES:
            values = {s: value(s) for r in range(m + 1) for s in itertools.combinations(range(m), r)}
            for j in range(m):
                others = [i for i in range(m) if i != j]
                for r in range(m):
                    weight = math.factorial(r) * math.factorial(m - r - 1) / math.factorial(m)
                    for subset in itertools.combinations(others, r):
                        with_j = tuple(sorted(subset + (j,)))
                        shapley[:, j] += weight * (values[with_j] - values[subset])
            baseline, prediction = values[()], values[tuple(range(m))]
        else:
            rng = np.random.default_rng(seed)
            for _ in range(n_permutations):
                order = rng.permutation(m)
                previous = value(())
                for position in range(m):
                    current = value(tuple(sorted(order[: position + 1])))
                    shapley[:, order[position]] += (current - previous) / n_permutations
                    previous = current
            baseline, prediction = value(()), value(tuple(range(m)))

    frame = pd.DataFrame(shapley, index=inputs.subject_ids, columns=inputs.modalities)
    frame.insert(0, "prediction", prediction)
    frame.insert(0, "baseline", baseline)
    frame.index.name = "subject_id"
    return frame
