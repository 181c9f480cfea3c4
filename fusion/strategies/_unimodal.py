"""Unimodal models: one modality's fold-fitted preprocessing, encoder and task head.

Every learner has the same interface whatever the modality:

- ``fit(subject_ids, target)`` fits preprocessing and network on those subjects only;
- ``predict(subject_ids)`` returns :class:`ModalityOutputs` (embedding and raw scores);
- ``attribution_inputs(subject_ids)`` returns the float tensors feature attributions are
  computed on, and ``forward_attribution(*tensors)`` maps them to (embedding, scores).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._errors import DataError
from .._task import Task
from ..config import ClinicalConfig, ImagingConfig, OmicsConfig
from ..data._cohort import ClinicalSource
from ..data._imaging import ImagingSource
from ..data._omics import OmicsSource
from ..encoders._clinical import ClinicalEncoder
from ..encoders._imaging import ImagingEncoder
from ..encoders._omics import OmicsEncoder
from ..preprocessing._clinical import ClinicalPreprocessor
from ..preprocessing._omics import OmicsPreprocessor
from ..training import seed_everything, single_thread, target_tensor, train_network

__all__ = ["AttributionInputs", "ModalityOutputs", "UnimodalLearner", "align_embeddings", "make_learner"]


@dataclasses.dataclass
class ModalityOutputs:
    """Outputs of one modality's model for some subjects.

    Attributes
    ----------
    subject_ids
        Row order of the arrays.
    embedding
        ``(n, d)`` float32.
    scores
        ``(n, output_dim)`` float32 raw scores (see ``fusion._task``).
    """

    subject_ids: pd.Index
    embedding: np.ndarray
    scores: np.ndarray


@dataclasses.dataclass
class AttributionInputs:
    """Float tensors to attribute, with the feature names of their attributed axis.

    ``names[i]`` lists one name per column of ``tensors[i]`` (axis 1). When
    ``summed_axes[i]`` is True the tensor is ``(n, columns, e)`` (categorical embeddings)
    and attributions are summed over the last axis back to one score per column.
    ``baselines[i]`` has the shape of ``tensors[i]``.
    """

    tensors: tuple[torch.Tensor, ...]
    baselines: tuple[torch.Tensor, ...]
    names: tuple[list[str], ...]
    summed_axes: tuple[bool, ...]


class _TaskHeadModel(nn.Module):
    """Encoder followed by a linear task head; returns ``(embedding, scores)``.

    For regression, the head predicts the standardised target and ``scores`` are mapped
    back to the target's unit with the training mean and standard deviation.
    """

    def __init__(self, encoder: nn.Module, output_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embedding_dim, output_dim)
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_scale", torch.ones(()))

    def forward_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.head(embedding) * self.target_scale + self.target_mean

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.encoder(*inputs)
        return embedding, self.forward_embedding(embedding)


class UnimodalLearner(abc.ABC):
    """Base class of the per-modality learners; see the module docstring for the contract."""

    # Small networks train faster on one thread; 3D convolutions use all of them.
    small_network = True

    def __init__(self, name: str, task: Task, training: Any, seed: int) -> None:
        self.name = name
        self.task = task
        self.training = training
        self.seed = seed

    @abc.abstractmethod
    def _fit_preprocessing(self, subject_ids: pd.Index) -> None: ...

    @abc.abstractmethod
    def _inputs(self, subject_ids: pd.Index) -> tuple[torch.Tensor, ...]: ...

    @abc.abstractmethod
    def _build_encoder(self) -> nn.Module: ...

    def _threads(self) -> contextlib.AbstractContextManager:
        return single_thread() if self.small_network else contextlib.nullcontext()

    def fit(self, subject_ids: pd.Index, target: pd.DataFrame) -> UnimodalLearner:
        """Fit preprocessing and network on ``subject_ids`` (rows of ``target``)."""
        with self._threads():
            return self._fit(subject_ids, target)

    def _fit(self, subject_ids: pd.Index, target: pd.DataFrame) -> UnimodalLearner:
        generator = seed_everything(self.seed)
        self._fit_preprocessing(subject_ids)
        self.model_ = _TaskHeadModel(self._build_encoder(), self.task.output_dim)

        values = target.loc[subject_ids].to_numpy()
        if self.task.kind != "survival":
            values = values[:, 0]
        y = target_tensor(self.task, values)
        if self.task.kind == "regression":
            mean, scale = y.mean(), y.std().clamp_min(1e-6)
            self.model_.target_mean.fill_(mean)
            self.model_.target_scale.fill_(scale)
            y = (y - mean) / scale

        model = self.model_

        def forward(*batch: torch.Tensor) -> torch.Tensor:
            scores = model.head(model.encoder(*batch))
            return scores if self.task.kind == "multiclass" else scores[:, 0]

        self.history_ = train_network(
            forward, list(model.parameters()), self._inputs(subject_ids), y, self.task,
            epochs=self.training.epochs, batch_size=self.training.batch_size,
            learning_rate=self.training.learning_rate, weight_decay=self.training.weight_decay,
            generator=generator, modules=[model],
        )
        return self

    @torch.no_grad()
    def predict(self, subject_ids: pd.Index, *, batch_size: int = 64) -> ModalityOutputs:
        """Return embeddings and raw scores of ``subject_ids`` in that order."""
        with self._threads():
            return self._predict(subject_ids, batch_size)

    def _predict(self, subject_ids: pd.Index, batch_size: int) -> ModalityOutputs:
        self.model_.eval()
        inputs = self._inputs(subject_ids)
        embeddings, scores = [], []
        for start in range(0, len(subject_ids), batch_size):
            embedding, score = self.model_(*(x[start:start + batch_size] for x in inputs))
            embeddings.append(embedding)
            scores.append(score)
        return ModalityOutputs(
            subject_ids=pd.Index(subject_ids),
            embedding=torch.cat(embeddings).numpy().astype(np.float32),
            scores=torch.cat(scores).numpy().astype(np.float32),
        )

    def attribution_inputs(self, subject_ids: pd.Index) -> AttributionInputs | None:
        """Return the float inputs feature attributions run on; None when not supported."""
        return None

    def forward_attribution(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map the tensors of :meth:`attribution_inputs` to ``(embedding, scores)``."""
        raise NotImplementedError(f"modality '{self.name}' has no feature attribution")

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model_.parameters())

    def get_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Return the fitted network's state dict and the fitted preprocessing as JSON values.

        :meth:`load_state` on a learner built with the same config restores the fit, so
        ``predict`` gives the same outputs without training again.
        """
        tensors = {key: value.detach().clone() for key, value in self.model_.state_dict().items()}
        metadata = {"modality": self.name, "seed": self.seed, "preprocessing": self._preprocessing_state()}
        return tensors, metadata

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> UnimodalLearner:
        """Restore a fit saved by :meth:`get_state`; the network is left in eval mode.

        Raises
        ------
        DataError
            The saved weights do not fit the network this learner's config builds.
        """
        self._load_preprocessing_state(metadata["preprocessing"])
        self.model_ = _TaskHeadModel(self._build_encoder(), self.task.output_dim)
        try:
            self.model_.load_state_dict(tensors, strict=True)
        except RuntimeError as error:
            first_line = str(error).splitlines()[0]
            raise DataError(
                f"modality '{self.name}': the saved weights do not match the network its config "
                f"builds ({first_line}); the bundle and its config.yaml come from different runs"
            ) from None
        self.model_.eval()
        return self

    def _preprocessing_state(self) -> dict[str, Any]:
        return {}

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        return None


# Imaging settings that fix the grid and intensities a trained network expects.
_GRID_SETTINGS = ("sequences", "mask", "reference", "crop_margin", "spatial_size", "resize_mode", "normalize")


class ImagingLearner(UnimodalLearner):
    """MONAI 3D network on cached volumes; volumes of all subjects are read once."""

    small_network = False

    def __init__(self, name: str, task: Task, config: ImagingConfig, source: ImagingSource, seed: int,
                 volumes: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        super().__init__(name, task, config.training, seed)
        self.config = config
        self.source = source
        self.volumes = volumes

    def _fit_preprocessing(self, subject_ids: pd.Index) -> None:
        # Intensity normalisation is per volume (done when caching), so nothing is fitted here.
        return None

    def _inputs(self, subject_ids: pd.Index) -> tuple[torch.Tensor, ...]:
        volumes = np.stack([self.volumes[s][0] for s in subject_ids])
        flags = np.stack([self.volumes[s][1] for s in subject_ids])
        return torch.from_numpy(volumes), torch.from_numpy(flags)

    def _preprocessing_state(self) -> dict[str, Any]:
        # Intensities are normalised per volume, so only the target grid is recorded.
        return {key: getattr(self.config, key) for key in _GRID_SETTINGS}

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        for key in _GRID_SETTINGS:
            if key not in state:
                continue  # a model saved before the grid was recorded
            saved = state[key]
            current = getattr(self.config, key)
            if (list(saved) if isinstance(saved, (list, tuple)) else saved) != (
                    list(current) if isinstance(current, (list, tuple)) else current):
                raise DataError(
                    f"imaging '{self.name}': the model was trained with {key}={saved!r}, but the "
                    f"config sets {key}={current!r}; use the config saved with the model"
                )

    def volume_inputs(self, subject_ids: pd.Index) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the volumes ``(n, C, X, Y, Z)`` and acquisition flags ``(n, C)`` the network reads."""
        return self._inputs(subject_ids)

    def _build_encoder(self) -> nn.Module:
        encoder = self.config.encoder
        return ImagingEncoder(
            len(self.config.sequences), network=encoder.network, layers=encoder.layers,
            widths=encoder.widths, embedding_dim=encoder.embedding_dim, dropout=encoder.dropout,
            stem_stride=encoder.stem_stride,
        )


class OmicsLearner(UnimodalLearner):
    """scanpy preprocessing fitted per fold, then an MLP."""

    def __init__(self, name: str, task: Task, config: OmicsConfig, source: OmicsSource, seed: int) -> None:
        super().__init__(name, task, config.training, seed)
        self.config = config
        self.source = source

    def _fit_preprocessing(self, subject_ids: pd.Index) -> None:
        options = self.config.preprocessing
        self.preprocessor_ = OmicsPreprocessor(
            scale=options.scale, n_top_features=options.n_top_features,
            pca_components=options.pca_components, modality=self.name,
        ).fit(self.source.data.loc[subject_ids])

    def _inputs(self, subject_ids: pd.Index) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(self.preprocessor_.transform_features(self.source.data.loc[subject_ids])),)

    def _preprocessing_state(self) -> dict[str, Any]:
        return self.preprocessor_.get_state()

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        self.preprocessor_ = OmicsPreprocessor.from_state(state, modality=self.name)

    def _build_encoder(self) -> nn.Module:
        encoder = self.config.encoder
        pre = self.preprocessor_
        return OmicsEncoder(
            len(pre.features_), hidden_dims=encoder.hidden_dims, embedding_dim=encoder.embedding_dim,
            dropout=encoder.dropout, components=pre.components_,
            pca_mean=getattr(pre, "pca_mean_", None),
        )

    def attribution_inputs(self, subject_ids: pd.Index) -> AttributionInputs:
        (features,) = self._inputs(subject_ids)
        # Scaled features are 0 at the training mean: the baseline is the average subject.
        return AttributionInputs(
            tensors=(features,), baselines=(torch.zeros_like(features),),
            names=(list(self.preprocessor_.features_),), summed_axes=(False,),
        )

    def forward_attribution(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model_(features)


class ClinicalLearner(UnimodalLearner):
    """Fold-fitted vocabularies, imputation and scaling, then a pytorch-tabular backbone."""

    def __init__(self, name: str, task: Task, config: ClinicalConfig, source: ClinicalSource, seed: int) -> None:
        super().__init__(name, task, config.training, seed)
        self.config = config
        self.source = source

    def _fit_preprocessing(self, subject_ids: pd.Index) -> None:
        self.preprocessor_ = ClinicalPreprocessor(
            categorical=self.source.categorical, continuous=self.source.continuous,
            impute=self.config.impute, modality=self.name,
        ).fit(self.source.table.loc[subject_ids])

    def _inputs(self, subject_ids: pd.Index) -> tuple[torch.Tensor, ...]:
        continuous, categorical = self.preprocessor_.transform(self.source.table.loc[subject_ids])
        return torch.from_numpy(continuous), torch.from_numpy(categorical)

    def _preprocessing_state(self) -> dict[str, Any]:
        return self.preprocessor_.get_state()

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        self.preprocessor_ = ClinicalPreprocessor.from_state(state)

    def _build_encoder(self) -> nn.Module:
        return ClinicalEncoder(
            n_continuous=len(self.preprocessor_.continuous_columns_),
            categorical_cardinalities=self.preprocessor_.categorical_cardinalities_,
            backbone=self.config.encoder.backbone,
            embedding_dim=self.config.encoder.embedding_dim,
        )

    def attribution_inputs(self, subject_ids: pd.Index) -> AttributionInputs:
        continuous, categorical = self._inputs(subject_ids)
        encoder = self.model_.encoder
        with torch.no_grad():
            continuous_in, embedded = encoder.embed_inputs(continuous, categorical)
            # Baseline: every column at the training mean (0 after scaling) and every
            # categorical column at its "unknown" level (index 0), i.e. no information.
            _, unknown = encoder.embed_inputs(torch.zeros_like(continuous), torch.zeros_like(categorical))
        return AttributionInputs(
            tensors=(continuous_in, embedded),
            baselines=(torch.zeros_like(continuous_in), unknown),
            names=(list(self.preprocessor_.continuous_columns_), list(self.preprocessor_.categorical_columns_)),
            summed_axes=(False, True),
        )

    def forward_attribution(self, continuous: torch.Tensor, embedded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.model_.encoder.forward_embedded(continuous, embedded)
        return embedding, self.model_.forward_embedding(embedding)


def align_embeddings(source: np.ndarray, target: np.ndarray, *, ridge: float = 1e-3) -> Callable[[np.ndarray], np.ndarray]:
    """Fit an affine map from one network's embedding space onto another's.

    Two networks trained on the same task learn embeddings in unrelated bases, so a head
    fitted on one network's embeddings cannot read another's. Given both networks'
    embeddings of the same subjects, ``(n, d)`` each, this fits ``target ≈ source @ W + b``
    by ridge-regularised least squares and returns the map.

    Parameters
    ----------
    ridge
        Penalty relative to the mean variance of ``source``, for stability when ``n`` is
        small or embedding dimensions are collinear.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    centred = source - source_mean
    penalty = ridge * max(float(centred.var(axis=0).mean()), 1e-12) * len(source)
    gram = centred.T @ centred + penalty * np.eye(source.shape[1])
    weights = np.linalg.solve(gram, centred.T @ (target - target_mean))  # (d_source, d_target)

    def apply(embedding: np.ndarray) -> np.ndarray:
        return ((np.asarray(embedding, np.float64) - source_mean) @ weights + target_mean).astype(np.float32)

    return apply


def make_learner(name: str, config: Any, source: Any, task: Task, seed: int,
                 volumes: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> UnimodalLearner:
    """Create the learner for one modality from its config section."""
    if isinstance(config, ImagingConfig):
        return ImagingLearner(name, task, config, source, seed, volumes or {})
    if isinstance(config, OmicsConfig):
        return OmicsLearner(name, task, config, source, seed)
    return ClinicalLearner(name, task, config, source, seed)
