"""Built-in strategies: unimodal, early, intermediate (joint), late and penalized linear."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._errors import ConfigError
from ..config import FusionConfig
from ..evaluation import inner_folds
from ..strategies._joint import fit_joint, predict_joint
from ..strategies._late import fit_head, predict_head
from ..strategies._linear import PenalizedLinearModel
from ..tuning import best_params, tune_head
from ._interface import FoldContext, Strategy

__all__ = ["builtin_strategies", "resolve_strategies"]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class UnimodalStrategy(Strategy):
    """One modality's cached encoder and task head (the main job's unimodal model)."""

    family = "unimodal"
    uses_cached_encoders = True

    def __init__(self, modality: str) -> None:
        self.modality = modality
        self.name = f"unimodal:{modality}"
        self.encoder_modalities = [modality]

    def fit(self, fold: FoldContext, availability: pd.DataFrame) -> None:
        self.parameters_ = fold.encoder_info.get(self.modality, {}).get("n_parameters")

    def predict(self, fold: FoldContext, availability: pd.DataFrame) -> np.ndarray:
        return fold.unimodal_scores(self.modality, availability)

    def n_parameters(self) -> int | None:
        return self.parameters_


class EarlyFusionStrategy(Strategy):
    """One MLP on the concatenated, fold-fitted features of every modality."""

    name = "early:mlp"
    family = "early"

    def fit(self, fold: FoldContext, availability: pd.DataFrame) -> None:
        from ..encoders import OmicsEncoder
        from ..strategies._unimodal import _TaskHeadModel
        from ..training import seed_everything, single_thread, target_tensor, train_network

        self.train_availability_ = availability
        features = fold.features("train", availability, availability)
        settings = fold.config.benchmark.joint
        with single_thread():
            generator = seed_everything(fold.seed)
            encoder = OmicsEncoder(features.shape[1], hidden_dims=[settings.hidden * 2],
                                   embedding_dim=settings.hidden, dropout=0.3)
            self.model_ = _TaskHeadModel(encoder, fold.task.output_dim)
            values = fold.train_target.to_numpy()
            y = target_tensor(fold.task, values if fold.task.kind == "survival" else values[:, 0])
            if fold.task.kind == "regression":
                self.model_.target_mean.fill_(y.mean())
                self.model_.target_scale.fill_(y.std().clamp_min(1e-6))
                y = (y - self.model_.target_mean) / self.model_.target_scale
            model = self.model_

            def forward(x: torch.Tensor) -> torch.Tensor:
                scores = model.head(model.encoder(x))
                return scores if fold.task.kind == "multiclass" else scores[:, 0]

            train_network(forward, list(model.parameters()), [torch.as_tensor(features.to_numpy(np.float32))], y,
                          fold.task, epochs=settings.epochs, batch_size=settings.batch_size,
                          learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
                          generator=generator, modules=[model])

    def predict(self, fold: FoldContext, availability: pd.DataFrame) -> np.ndarray:
        features = fold.features("test", self.train_availability_, availability)
        with torch.no_grad():
            self.model_.eval()
            _, scores = self.model_(torch.as_tensor(features.to_numpy(np.float32)))
        scores = scores.numpy()
        return scores if fold.task.output_dim > 1 else scores[:, 0]

    def n_parameters(self) -> int | None:
        return _count(self.model_)


class LinearStrategy(Strategy):
    """A penalized linear model (logistic, ridge or Cox) on one modality's features or on all."""

    family = "linear"

    def __init__(self, modality: str | None = None) -> None:
        self.modality = modality
        self.name = f"linear:{modality or 'all'}"

    def fit(self, fold: FoldContext, availability: pd.DataFrame) -> None:
        self.train_availability_ = availability
        modalities = [self.modality] if self.modality else None
        ids = fold.train_ids
        if self.modality:
            ids = ids[availability.loc[ids, self.modality].to_numpy(bool)]
        features = fold.features("train", availability, availability, modalities).loc[ids]
        self.columns_ = [c for c in features.columns if not (self.modality and c.endswith(":missing"))]
        self.model_ = PenalizedLinearModel(fold.task, inner_folds=fold.config.evaluation.inner_folds,
                                           seed=fold.seed).fit(features[self.columns_].to_numpy(),
                                                               fold.cohort.target.loc[ids])

    def predict(self, fold: FoldContext, availability: pd.DataFrame) -> np.ndarray:
        modalities = [self.modality] if self.modality else None
        features = fold.features("test", self.train_availability_, availability, modalities)
        scores = np.asarray(self.model_.predict(features[self.columns_].to_numpy()), dtype=float)
        if self.modality:
            missing = ~availability.loc[fold.test_ids, self.modality].to_numpy(bool)
            scores[missing] = np.nan
        return scores

    def n_parameters(self) -> int | None:
        return self.model_.n_parameters


class JointStrategy(Strategy):
    """Modality encoders and one fusion layer trained end to end (intermediate fusion)."""

    family = "intermediate"

    def __init__(self, fusion: str) -> None:
        self.fusion = fusion
        self.name = f"intermediate:{fusion}"

    def fit(self, fold: FoldContext, availability: pd.DataFrame) -> None:
        settings = fold.config.benchmark.joint
        self.branches_ = fold.branches(availability, imaging=settings.imaging, hidden=settings.hidden)
        self.model_ = fit_joint(
            self.branches_, self.fusion, fold.train_ids, availability, fold.cohort.target, fold.task,
            epochs=settings.epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay, modality_dropout=settings.modality_dropout,
            hidden=settings.hidden, rank=settings.rank, seed=fold.seed,
        )

    def predict(self, fold: FoldContext, availability: pd.DataFrame) -> np.ndarray:
        return predict_joint(self.model_, self.branches_, fold.test_ids, availability)

    def n_parameters(self) -> int | None:
        return _count(self.model_)


class _LateStrategy(Strategy):
    family = "late"
    uses_cached_encoders = True

    def _encoder_parameters(self, fold: FoldContext) -> int | None:
        counts = [info.get("n_parameters") for info in fold.encoder_info.values()]
        return None if any(c is None for c in counts) else int(sum(counts))

    def n_parameters(self) -> int | None:
        head = _count(self.head_) if getattr(self, "head_", None) is not None else 0
        return None if self.encoders_ is None else self.encoders_ + head


class MeanStrategy(_LateStrategy):
    """Mean of the present modalities' raw scores; 0 when none is present. Nothing is fitted."""

    name = "late:mean"

    def fit(self, fold: FoldContext, availability: pd.DataFrame) -> None:
        self.encoders_ = self._encoder_parameters(fold)
        self.head_ = None

    def predict(self, fold: FoldContext, availability: pd.DataFrame) -> np.ndarray:
        inputs = fold.fusion_inputs("test", availability)
        stacked = torch.stack(inputs.scores, dim=1).numpy()              # (n, M, k)
        mask = inputs.mask.numpy()[:, :, None]                           # (n, M, 1)
        scores = (stacked * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1, None)
        return scores if fold.task.output_dim > 1 else scores[:, 0]


class HeadStrategy(_LateStrategy):
    """A late-fusion head with fixed settings, trained on the cross-fitted encoder outputs."""

    def __init__(self, name: str, head: str, **params: Any) -> None:
        self.name = name
        self.head = head
        self.params = {"head": head, "learning_rate": 0.05, "weight_decay": 1e-3, "modality_dropout": 0.2, **params}

    def fit(self, fold: FoldContext, availability: pd.DataFrame) -> None:
        self.encoders_ = self._encoder_parameters(fold)
        inputs = fold.fusion_inputs("train", availability)
        self.head_ = fit_head(inputs, fold.cohort.target, fold.task, self.params,
                              epochs=fold.config.benchmark.late_epochs, seed=fold.seed)

    def predict(self, fold: FoldContext, availability: pd.DataFrame) -> np.ndarray:
        return predict_head(self.head_, fold.fusion_inputs("test", availability))


class TunedHeadStrategy(_LateStrategy):
    """The main job's Optuna-tuned head; the study is stored in the benchmark's ``optuna.db``.

    In robustness scenarios the head is refitted with the parameters tuned on the fold's
    full data rather than tuned again.
    """

    name = "late:tuned"

    def __init__(self, tuned: dict[tuple[int, int], dict[str, Any]] | None = None) -> None:
        self.tuned = {} if tuned is None else tuned

    def fit(self, fold: FoldContext, availability: pd.DataFrame) -> None:
        self.encoders_ = self._encoder_parameters(fold)
        inputs = fold.fusion_inputs("train", availability)
        key = (fold.repeat, fold.fold)
        if key not in self.tuned:
            tuning = fold.config.tuning
            groups = fold.cohort.groups.loc[fold.train_ids] if fold.cohort.groups is not None else None
            folds = inner_folds(fold.train_target, fold.task, n_folds=tuning.inner_folds, seed=fold.seed + 7,
                                groups=groups)
            storage = tuning.storage or f"sqlite:///{(fold.run_dir / 'optuna.db').resolve()}"
            study = tune_head(inputs, fold.cohort.target, fold.task, heads=tuning.heads, folds=folds,
                              n_trials=tuning.n_trials, epochs=tuning.epochs, patience=tuning.patience,
                              seed=fold.seed, storage=storage,
                              study_name=f"{fold.config.name}-repeat{fold.repeat}-fold{fold.fold}")
            self.tuned[key] = best_params(study)
        self.params_ = self.tuned[key]
        self.head_ = fit_head(inputs, fold.cohort.target, fold.task, self.params_,
                              epochs=fold.config.tuning.epochs, patience=fold.config.tuning.patience,
                              seed=fold.seed)

    def predict(self, fold: FoldContext, availability: pd.DataFrame) -> np.ndarray:
        return predict_head(self.head_, fold.fusion_inputs("test", availability))


JOINT_FUSION_NAMES = ("concat", "gated", "attention", "low_rank")
LATE_NAMES = ("late:mean", "late:weighted_mean", "late:stacking", "late:tuned", "late:gating")


def builtin_strategies(config: FusionConfig) -> list[Strategy]:
    """Return every built-in strategy for the modalities of ``config``, in leaderboard order."""
    modalities = list(config.modalities)
    strategies: list[Strategy] = [UnimodalStrategy(m) for m in modalities]
    strategies.append(EarlyFusionStrategy())
    strategies += [JointStrategy(f) for f in JOINT_FUSION_NAMES]
    strategies += [
        MeanStrategy(),
        HeadStrategy("late:weighted_mean", "weighted_average"),
        HeadStrategy("late:stacking", "stacking"),
        TunedHeadStrategy(),
        HeadStrategy("late:gating", "gating", hidden=16, dropout=0.1),
    ]
    strategies += [LinearStrategy(m) for m in modalities] + [LinearStrategy(None)]
    return strategies


def resolve_strategies(config: FusionConfig, extra: list[Strategy] | None = None) -> list[Strategy]:
    """Return the strategies ``config.benchmark.strategies`` selects, plus ``extra``.

    Entries are built-in names (``unimodal:<modality>``, ``early:mlp``,
    ``intermediate:<fusion>``, ``late:<head>``, ``linear:<modality>`` or ``linear:all``), a
    family name (``late`` selects all late strategies) or ``"module:ClassName"`` of a
    :class:`Strategy` subclass, instantiated without arguments.
    """
    builtin = builtin_strategies(config)
    selected: list[Strategy]
    if config.benchmark.strategies is None:
        selected = list(builtin)
    else:
        by_name = {s.name: s for s in builtin}
        families = {s.family for s in builtin}
        selected = []
        for entry in config.benchmark.strategies:
            if entry in by_name:
                selected.append(by_name[entry])
            elif entry in families:
                selected += [s for s in builtin if s.family == entry]
            elif ":" in entry and entry.split(":", 1)[0] not in families:
                selected.append(_import_strategy(entry))
            else:
                raise ConfigError(
                    f"benchmark.strategies: unknown strategy '{entry}'; built-in names are "
                    f"{', '.join(by_name)}, families are {', '.join(sorted(families))}, and a "
                    "strategy of your own is given as 'module:ClassName'"
                )
    selected += list(extra or [])
    names = [s.name for s in selected]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"benchmark: strategy names must be unique; repeated: {duplicated}")
    return selected


def _import_strategy(entry: str) -> Strategy:
    module_name, class_name = entry.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"benchmark.strategies: cannot import module '{module_name}' for '{entry}': {exc}") from None
    found = getattr(module, class_name, None)
    if not (isinstance(found, type) and issubclass(found, Strategy)):
        raise ConfigError(
            f"benchmark.strategies: '{entry}' is not a subclass of fusion.benchmark.Strategy "
            f"(found {type(found).__name__}); define class {class_name}(Strategy) in {module_name}"
        )
    strategy = found()
    if not strategy.name:
        raise ConfigError(f"benchmark.strategies: '{entry}' has an empty 'name'; set the class attribute name")
    return strategy
