"""The strategy interface and the per-fold context every strategy fits and predicts from.

A strategy is a small class with two methods::

    class MyStrategy(Strategy):
        name = "my_strategy"
        family = "early"

        def fit(self, fold, availability):
            ...  # train on fold.train_ids, using only the modalities availability marks True

        def predict(self, fold, availability):
            ...  # return raw scores for fold.test_ids; NaN where it cannot predict

The benchmark makes a fresh copy of the strategy for every fold and every robustness
scenario, calls ``fit`` once and ``predict`` once or more (with a different test
availability for each modality removed at test time).
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._task import Task
from ..config import FusionConfig, ImagingConfig
from ..data._cohort import Cohort
from ..strategies._joint import ModalityBranch
from ..strategies._late import FusionInputs, stack_outputs
from ..strategies._unimodal import ModalityOutputs, make_learner
from ._features import FeatureMatrix

__all__ = ["FoldContext", "Strategy"]


class Strategy(abc.ABC):
    """Base class of every benchmarked strategy.

    Class attributes
    ----------------
    name
        Unique name in the leaderboard.
    family
        ``unimodal``, ``early``, ``intermediate``, ``late``, ``linear`` or any label of yours.
    uses_cached_encoders
        True when the strategy reads the cached modality encoders' outputs
        (:meth:`FoldContext.fusion_inputs`). Their training time is then added to the
        strategy's total time in the leaderboard.
    encoder_modalities
        The modalities whose cached encoders it reads; None means all of them.
    """

    name: str = ""
    family: str = "custom"
    uses_cached_encoders: bool = False
    encoder_modalities: list[str] | None = None

    @abc.abstractmethod
    def fit(self, fold: FoldContext, availability: pd.DataFrame) -> None:
        """Train on ``fold.train_ids``.

        ``availability`` is a boolean frame (training subjects x modalities). A False cell
        means that modality of that subject must not be used, whether it was never
        acquired or the robustness protocol removed it.
        """

    @abc.abstractmethod
    def predict(self, fold: FoldContext, availability: pd.DataFrame) -> np.ndarray:
        """Return raw scores of ``fold.test_ids`` in that order: ``(n,)``, or ``(n, K)`` for multiclass.

        ``availability`` (test subjects x modalities) marks what may be used. Rows the
        strategy cannot predict, for example a unimodal model's subjects without its
        modality, must be NaN; the benchmark reports them as not handled.
        """

    def n_parameters(self) -> int | None:
        """Return the number of fitted parameters, or None when not meaningful."""
        return None


@dataclasses.dataclass
class FoldContext:
    """Everything a strategy may use in one outer fold; each method fits on training subjects only.

    Attributes
    ----------
    cohort, config, task
        The cohort, the run configuration and its task.
    repeat, fold, seed
        Position of this outer fold and its seed (the same seed the main job uses).
    train_ids, test_ids
        Subjects of the training and test part.
    run_dir
        The benchmark directory (for artifacts such as an Optuna study).
    """

    cohort: Cohort
    config: FusionConfig
    repeat: int
    fold: int
    seed: int
    train_ids: pd.Index
    test_ids: pd.Index
    run_dir: Path
    outputs: dict[str, dict[str, ModalityOutputs]]
    encoder_info: dict[str, dict[str, Any]]
    volumes: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    imaging_tables: dict[str, pd.DataFrame]
    _features: dict[bytes, FeatureMatrix] = dataclasses.field(default_factory=dict)

    @property
    def task(self) -> Task:
        return self.cohort.task

    @property
    def modalities(self) -> list[str]:
        return self.cohort.modalities

    @property
    def train_target(self) -> pd.DataFrame:
        """Target of the training subjects (``y``, or ``time`` and ``event``)."""
        return self.cohort.target.loc[self.train_ids]

    def fusion_inputs(self, part: str, availability: pd.DataFrame) -> FusionInputs:
        """Return the cached encoder outputs of ``part`` (``"train"`` or ``"test"``) with ``availability`` applied.

        Training outputs are cross-fitted (out of fold); test outputs come from each
        modality's encoder fitted on all training subjects.
        """
        ids = self.train_ids if part == "train" else self.test_ids
        dims = {}
        for name in self.modalities:
            found = self.outputs.get(name)
            dims[name] = ((found["train"].embedding.shape[1], found["train"].scores.shape[1]) if found
                          else (1, self.task.output_dim))
        cached = {n: o[part] for n, o in self.outputs.items() if o}
        inputs = stack_outputs(ids, cached, self.modalities, dims)
        allowed = availability.loc[ids, self.modalities].to_numpy(np.float32)
        return dataclasses.replace(inputs, mask=inputs.mask * allowed)

    def unimodal_scores(self, modality: str, availability: pd.DataFrame) -> np.ndarray:
        """Return the cached test scores of one modality's encoder, NaN where it is unavailable."""
        k = self.task.output_dim
        scores = np.full((len(self.test_ids), k), np.nan)
        found = self.outputs.get(modality)
        if found:
            test = found["test"]
            scores[self.test_ids.get_indexer(test.subject_ids)] = test.scores.reshape(len(test.subject_ids), k)
        allowed = availability.loc[self.test_ids, modality].to_numpy(bool)
        scores[~allowed] = np.nan
        return scores if k > 1 else scores[:, 0]

    def features(self, part: str, train_availability: pd.DataFrame, availability: pd.DataFrame,
                 modalities: list[str] | None = None) -> pd.DataFrame:
        """Return the early-fusion feature matrix of ``part`` (see :mod:`fusion.benchmark._features`).

        The blocks are fitted on the training subjects allowed by ``train_availability``;
        fitted matrices are shared by every strategy of the fold with the same availability.
        """
        key = np.ascontiguousarray(train_availability.loc[self.train_ids, self.modalities].to_numpy(bool)).tobytes()
        if key not in self._features:
            self._features[key] = FeatureMatrix(self.cohort, self.config, self.imaging_tables).fit(
                self.train_ids, train_availability)
        ids = self.train_ids if part == "train" else self.test_ids
        return self._features[key].transform(ids, availability, modalities)

    def branches(self, availability: pd.DataFrame, *, imaging: str = "network",
                 hidden: int = 16) -> dict[str, ModalityBranch]:
        """Return fresh, untrained modality branches for a joint model.

        Each branch's preprocessing is fitted on the training subjects that ``availability``
        allows and its encoder is built from the modality's config section. With
        ``imaging="statistics"`` an imaging modality is encoded by an MLP over the
        standardised intensity statistics instead of its 3D network.
        """
        from ..encoders import OmicsEncoder

        branches = {}
        for name in self.modalities:
            present = self.train_ids[availability.loc[self.train_ids, name].to_numpy(bool)]
            if len(present) < 2:
                continue
            modality = self.config.modalities[name]
            if isinstance(modality, ImagingConfig) and imaging == "statistics":
                matrix = FeatureMatrix(self.cohort, self.config, self.imaging_tables)
                matrix.fitted_ = {name: matrix._fit_block(name, present)}
                width = self.imaging_tables[name].shape[1]
                encoder = OmicsEncoder(width, hidden_dims=[hidden], embedding_dim=hidden, dropout=0.2)
                branches[name] = ModalityBranch(encoder, _statistics_inputs(matrix, name), str(present[0]))
                continue
            learner = make_learner(name, modality, self.cohort.sources[name], self.task, self.seed,
                                   self.volumes.get(name, {}))
            learner._fit_preprocessing(present)
            branches[name] = ModalityBranch(learner._build_encoder(), learner._inputs, str(present[0]),
                                            small_network=learner.small_network)
        return branches


def _statistics_inputs(matrix: FeatureMatrix, name: str):
    import torch

    def inputs(ids: pd.Index) -> tuple[torch.Tensor, ...]:
        return (torch.as_tensor(matrix._transform_block(name, ids).to_numpy(np.float32)),)

    return inputs
