"""A loaded model bundle: build sources for new subjects and predict with the ensemble.

The final model of a run is the ensemble of its repeat-0 outer-fold models. Each member
predicts raw scores (logit, log relative risk, or the target's unit) and the bundle's
prediction is their mean. The cross-validated metrics describe exactly these models,
each on the subjects it did not see, so no extra model is trained for the bundle.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._errors import DataError, DataWarning
from .._logging import logger
from .._task import Task
from ..config import ClinicalConfig, FusionConfig, ImagingConfig, OmicsConfig
from ..data._cohort import _make_source
from ..data._omics import OmicsSource
from ..strategies._late import FusionInputs, predict_head, stack_outputs
from ..strategies._unimodal import ModalityOutputs, UnimodalLearner
from ..training import single_thread
from ._store import BundleMember, load_bundle_files

__all__ = ["DEFAULT_MAX_MISSING_FRACTION", "Bundle", "load_bundle"]

DEFAULT_MAX_MISSING_FRACTION = 0.2
"""Largest fraction of an omics modality's training features new data may lack."""

InputPaths = Mapping[str, "str | Path | Sequence[str | Path]"]


def load_bundle(path: str | Path, *, ignore_versions: bool = False) -> Bundle:
    """Load a model bundle folder (or a run directory containing ``bundle/``).

    Raises
    ------
    DataError
        The folder is not a bundle, a file is missing or malformed, or it was made with a
        different major or minor version of torch, MONAI, pytorch-tabular or fusion (unless
        ``ignore_versions``).
    """
    manifest, config, members = load_bundle_files(Path(path), ignore_versions=ignore_versions)
    directory = Path(path)
    if not (directory / "bundle.json").is_file():
        directory = directory / "bundle"
    return Bundle(directory, manifest, config, members)


class Bundle:
    """The models of one run, ready to predict and explain new subjects.

    Attributes
    ----------
    path
        The bundle folder.
    config
        The run's config (its data paths point to the training data).
    task
        The prediction task.
    members
        One :class:`BundleMember` per repeat-0 outer fold.
    metrics
        The run's cross-validated metrics (``metrics.json``), read on demand.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], config: FusionConfig,
                 members: list[BundleMember]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.config = config
        self.task = Task(manifest["task"]["kind"], n_classes=int(manifest["task"]["n_classes"]))
        self.members = members

    @property
    def modalities(self) -> list[str]:
        return list(self.config.modalities)

    @property
    def versions(self) -> dict[str, str]:
        return dict(self.manifest["versions"])

    @property
    def metrics(self) -> dict[str, Any]:
        import json

        return json.loads((self.path / "metrics.json").read_text())

    # Sources

    def build_sources(self, inputs: InputPaths | None = None, *,
                      paths_relative_to: Mapping[str, str | Path] | None = None,
                      cache_dir: str | Path | None = None,
                      max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION) -> dict[str, Any]:
        """Read the sources of new subjects, one per modality given in ``inputs``.

        Parameters
        ----------
        inputs
            Modality name to its file: an imaging manifest, one or more ``.h5ad`` files, or
            a clinical table, read with the training config's settings (id column, sequences,
            layer). None reads the training sources named in the bundle's config.
            A modality left out is absent for every subject.
        paths_relative_to
            Per imaging modality, the folder its manifest's paths start from. Default: the
            manifest's folder.
        cache_dir
            Folder of the volume cache. Default: the training config's ``cache_dir``.
        max_missing_fraction
            Largest fraction of an omics modality's training features the new data may lack
            (see :meth:`align_omics`).
        """
        unknown = sorted(set(inputs or {}) - set(self.modalities))
        if unknown:
            raise DataError(f"the bundle has no modality {unknown}; its modalities are {self.modalities}")
        fusion_config = self.config
        if cache_dir is not None:
            fusion_config = fusion_config.model_copy(update={"cache_dir": Path(cache_dir).absolute()})

        sources: dict[str, Any] = {}
        names = self.modalities if inputs is None else list(inputs)
        exclude = set(self.config.target.forbidden_inputs)
        for name in names:
            modality = self._modality_config(name, None if inputs is None else inputs[name], paths_relative_to)
            if isinstance(modality, OmicsConfig):
                source = OmicsSource(name, modality.files, layer=modality.layer)
                self.align_omics(source, max_missing_fraction=max_missing_fraction)
            else:
                source = _make_source(name, modality, fusion_config, {}, exclude)
            sources[name] = source
            logger.info("modality '%s': %d subjects in the input", name, len(source.subject_ids))
        return sources

    def _modality_config(self, name: str, paths: Any, roots: Mapping[str, str | Path] | None) -> Any:
        """Return the training config of modality ``name`` pointed at ``paths``."""
        modality = self.config.modalities[name]
        columns = self.manifest["training_columns"].get(name, {})
        if isinstance(modality, ClinicalConfig):
            # Read exactly the training columns, whatever else the new table contains.
            modality = modality.model_copy(update={"categorical": columns["categorical"],
                                                   "continuous": columns["continuous"]})
        if paths is None:
            return modality
        if isinstance(modality, OmicsConfig):
            files = [paths] if isinstance(paths, (str, Path)) else list(paths)
            return modality.model_copy(update={"files": [Path(f).absolute() for f in files]})
        if not isinstance(paths, (str, Path)):
            raise DataError(f"modality '{name}' takes one file, got {list(paths)}")
        if isinstance(modality, ImagingConfig):
            root = (roots or {}).get(name)
            return modality.model_copy(update={"manifest": Path(paths).absolute(),
                                               "paths_relative_to": None if root is None else Path(root).absolute()})
        return modality.model_copy(update={"table": Path(paths).absolute()})

    def align_omics(self, source: OmicsSource, *, max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION) -> None:
        """Reindex an omics source's features by name to the training features, in place.

        Features of the training data that the new data lacks are filled with NaN. Every
        fold model replaces NaN with the feature's training mean (0 after scaling, the
        attribution baseline), and a :class:`DataWarning` gives their count. Features the
        training data did not have are dropped and logged. The order of the new file's
        features does not matter.

        Raises
        ------
        DataError
            Feature names repeat in the new data, or more than ``max_missing_fraction`` of
            the training features are missing.
        """
        name = source.name
        training = self.manifest["training_columns"][name]["features"]
        data = source.data
        repeated = data.columns[data.columns.duplicated()].unique()
        if len(repeated):
            raise DataError(f"omics '{name}': feature names repeat in {[str(f) for f in source.files]}: "
                            f"{list(repeated[:5])}; make var_names unique (AnnData.var_names_make_unique)")
        present = pd.Index(training).isin(data.columns)
        missing = [feature for feature, found in zip(training, present) if not found]
        extra = data.columns.difference(pd.Index(training))
        fraction = len(missing) / len(training)
        if fraction > max_missing_fraction:
            raise DataError(
                f"omics '{name}': {len(missing)} of the {len(training)} training features "
                f"({fraction:.1%}) are missing from {[str(f) for f in source.files]}, more than "
                f"max_missing_fraction={max_missing_fraction:g} (e.g. {missing[:5]}). Check that "
                "var_names use the training identifiers (gene symbols versus Ensembl ids), or "
                "raise max_missing_fraction"
            )
        if missing:
            warnings.warn(
                f"omics '{name}': {len(missing)} of the {len(training)} training features are "
                f"missing from the new data (e.g. {missing[:5]}); they are filled with each "
                "feature's training mean", DataWarning, stacklevel=3,
            )
        if len(extra):
            logger.info("omics '%s': %d features not in the training data are dropped (e.g. %s)",
                        name, len(extra), list(extra[:5]))
        source.data = data.reindex(columns=training)

    # Prediction

    def _subject_order(self, sources: Mapping[str, Any], subjects: Sequence[str] | None) -> pd.Index:
        """Return the requested subjects, or every subject of the inputs in first-seen order."""
        seen: dict[str, None] = {}
        for source in sources.values():
            seen.update(dict.fromkeys(str(s) for s in source.subject_ids))
        if subjects is None:
            if not seen:
                raise DataError("the inputs contain no subject")
            return pd.Index(list(seen), name="subject_id")
        requested = [str(s) for s in subjects]
        unknown = [s for s in requested if s not in seen]
        if unknown:
            raise DataError(f"subjects {unknown[:5]} are in none of the inputs ({', '.join(sources)}); "
                            "check the ids or pass the files that contain them")
        return pd.Index(list(dict.fromkeys(requested)), name="subject_id")

    def load_volumes(self, sources: Mapping[str, Any], subject_ids: pd.Index) -> dict[str, dict]:
        """Read (or take from the cache) the volumes of the imaging sources for ``subject_ids``."""
        volumes: dict[str, dict] = {}
        for name, source in sources.items():
            if not isinstance(self.config.modalities[name], ImagingConfig):
                continue
            ids = [s for s in subject_ids if s in source.subject_ids]
            arrays, flags = source.load_many(ids)
            volumes[name] = {s: (arrays[i], flags[i]) for i, s in enumerate(ids)}
        return volumes

    def member_inputs(self, member: BundleMember, sources: Mapping[str, Any], volumes: Mapping[str, dict],
                      subject_ids: pd.Index) -> tuple[FusionInputs, dict[str, ModalityOutputs], dict[str, UnimodalLearner]]:
        """Run one member's learners on the subjects; return the head's inputs, outputs and learners."""
        outputs: dict[str, ModalityOutputs] = {}
        learners: dict[str, UnimodalLearner] = {}
        for name in member.modalities:
            if name not in member.learner_states or name not in sources:
                continue
            present = subject_ids[subject_ids.isin(pd.Index(sources[name].subject_ids).astype(str))]
            if len(present) == 0:
                continue
            learner = member.learner(name, self.config, sources[name], self.task, volumes.get(name))
            outputs[name] = learner.predict(present)
            learners[name] = learner
        inputs = stack_outputs(subject_ids, outputs, member.modalities, member.dims)
        return inputs, outputs, learners

    def predict(self, inputs: InputPaths | None = None, *, subjects: Sequence[str] | None = None,
                per_member: bool = False, sources: Mapping[str, Any] | None = None,
                **source_options: Any) -> pd.DataFrame:
        """Predict the subjects of ``inputs`` with every member and average the raw scores.

        Parameters
        ----------
        inputs
            As in :meth:`build_sources`; ignored when ``sources`` is given.
        subjects
            Predict only these subjects, in this order. Default: every subject of the
            inputs, in the order they first appear (modalities in the order given).
        per_member
            Also return each member's fused score, ``score_fused_fold<k>``.
        sources
            Sources built by :meth:`build_sources`, to reuse them across calls.
        **source_options
            ``paths_relative_to``, ``cache_dir`` and ``max_missing_fraction`` of
            :meth:`build_sources`.

        Returns
        -------
        pandas.DataFrame
            Indexed by ``subject_id``: ``modalities`` (the modalities present, ``;``-joined),
            ``score_fused`` (the mean raw score; ``score_fused_<k>`` per class for
            multiclass), ``probability_fused`` for binary tasks, and ``score_<modality>``
            (the mean unimodal score, NaN where the modality is absent).
        """
        if sources is None:
            sources = self.build_sources(inputs, **source_options)
        subject_ids = self._subject_order(sources, subjects)
        volumes = self.load_volumes(sources, subject_ids)
        k = self.task.output_dim

        fused_per_member = []
        unimodal = {name: np.zeros((len(subject_ids), k)) for name in self.modalities}
        counts = {name: np.zeros(len(subject_ids)) for name in self.modalities}
        for member in self.members:
            fusion_inputs, outputs, _ = self.member_inputs(member, sources, volumes, subject_ids)
            with single_thread():
                fused_per_member.append(predict_head(member.head, fusion_inputs).reshape(len(subject_ids), k))
            for name, out in outputs.items():
                rows = subject_ids.get_indexer(out.subject_ids)
                unimodal[name][rows] += out.scores.reshape(len(rows), k)
                counts[name][rows] += 1

        frame = pd.DataFrame(index=subject_ids)
        frame["modalities"] = [
            ";".join(name for name, source in sources.items() if subject in set(map(str, source.subject_ids)))
            for subject in subject_ids
        ]
        fused = np.mean(np.asarray(fused_per_member, dtype=np.float64), axis=0)  # (n, k)
        self._add_scores(frame, "fused", fused)
        if self.task.kind == "binary":
            frame["probability_fused"] = 1.0 / (1.0 + np.exp(-fused[:, 0]))
        for name in self.modalities:
            with np.errstate(invalid="ignore"):
                scores = unimodal[name] / counts[name][:, None]  # NaN where no member scored it
            self._add_scores(frame, name, scores)
        if per_member:
            for member, scores in zip(self.members, fused_per_member):
                self._add_scores(frame, f"fused_fold{member.fold}", scores)
        return frame

    def _add_scores(self, frame: pd.DataFrame, model: str, scores: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        if self.task.kind == "multiclass":
            for c in range(scores.shape[1]):
                frame[f"score_{model}_{c}"] = scores[:, c]
        else:
            frame[f"score_{model}"] = scores[:, 0]
