"""Prediction tasks and the layout of their targets and scores.

Targets are ``pandas.DataFrame`` objects indexed by subject id. Binary, multiclass and
regression targets have one column ``y``; survival targets have ``time`` (float, any
unit) and ``event`` (bool, True when the event was observed).

Model scores are raw, pre-link outputs:

========== =============== ==============================================
task       score shape     meaning
========== =============== ==============================================
binary     ``(n,)``        logit of the positive class
multiclass ``(n, K)``      logits of the ``K`` classes (labels ``0..K-1``)
regression ``(n,)``        predicted value, in the target's unit
survival   ``(n,)``        log relative risk: higher score = higher risk
========== =============== ==============================================
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["TARGET_COLUMNS", "Task", "TaskKind"]

TaskKind = Literal["binary", "multiclass", "regression", "survival"]

TARGET_COLUMNS: dict[str, tuple[str, ...]] = {
    "binary": ("y",),
    "multiclass": ("y",),
    "regression": ("y",),
    "survival": ("time", "event"),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """A prediction task: its kind and, for multiclass, the number of classes."""

    kind: TaskKind
    n_classes: int = 2

    @property
    def output_dim(self) -> int:
        """Number of raw scores a model emits per subject."""
        return self.n_classes if self.kind == "multiclass" else 1

    @property
    def is_classification(self) -> bool:
        return self.kind in ("binary", "multiclass")
