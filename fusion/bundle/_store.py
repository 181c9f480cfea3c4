"""Saving and loading fold models and model bundles: state dicts and JSON, no pickled objects.

Every outer fold writes its trained models into ``<fold dir>/model/``:

- ``learner-<modality>.pt``: the state dict of the modality's encoder and task head, a
  ``dict[str, torch.Tensor]`` written with ``torch.save``;
- ``learner-<modality>.json``: the fitted preprocessing state (feature order, scaling,
  PCA loadings, category vocabularies, continuous statistics) and the learner's seed;
- ``head.pt`` and ``head.json``: the fusion head's state dict, its tuned settings, the
  modality order and each modality's embedding and score widths.

The bundle (``<run dir>/bundle/``) gathers the repeat-0 fold models as the members of an
ensemble, with ``config.yaml``, ``metrics.json`` and ``bundle.json`` (format version,
library versions, task, training features and the members' held-out subjects). Every
``.pt`` file loads with ``torch.load(weights_only=True)``, which rejects pickled objects.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from .._errors import DataError
from .._io import write_atomic, write_json
from .._logging import logger
from .._task import Task
from ..config import FusionConfig, ImagingConfig, OmicsConfig, validate_config
from ..strategies._late import FusionHead, make_head
from ..strategies._unimodal import UnimodalLearner, make_learner

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "BundleMember",
    "check_versions",
    "has_fold_learner",
    "library_versions",
    "load_bundle_files",
    "load_fold_learner",
    "save_fold_head",
    "save_fold_learner",
    "write_bundle",
]

BUNDLE_FORMAT_VERSION = 1
MODEL_DIR = "model"

# Libraries whose versions are recorded. A difference in the (major, minor) version of
# those in _STRICT_LIBRARIES is an error, because their modules define the layers the state
# dicts are loaded into (and fusion defines the bundle layout). Other differences are logged.
_RECORDED_LIBRARIES = ("fusion", "torch", "monai", "pytorch_tabular", "captum", "numpy", "pandas",
                       "anndata", "scanpy", "scikit-learn", "optuna")
_STRICT_LIBRARIES = ("fusion", "torch", "monai", "pytorch_tabular")


def library_versions() -> dict[str, str]:
    """Return the installed version of every recorded library (``"not installed"`` if absent)."""
    versions = {}
    for name in _RECORDED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def check_versions(saved: dict[str, str], *, where: Path, strict: bool = True) -> None:
    """Compare the versions a bundle was made with against the installed ones.

    Raises
    ------
    DataError
        ``strict`` is True and a library of ``_STRICT_LIBRARIES`` differs in its major or
        minor version; the message names the library and both versions.
    """
    installed = library_versions()
    for name, made_with in saved.items():
        current = installed.get(name)
        if current is None or current == made_with:
            continue
        if strict and name in _STRICT_LIBRARIES and _major_minor(current) != _major_minor(made_with):
            raise DataError(
                f"bundle {where} was made with {name} {made_with}, but {name} {current} is "
                f"installed; a different {name} version can change the layers the weights are "
                f"loaded into. Install {name}=={made_with}, or pass --ignore-versions "
                "(ignore_versions=True) to load it anyway"
            )
        logger.warning("bundle %s was made with %s %s; %s %s is installed", where, name, made_with, name, current)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    write_atomic(path, lambda p: torch.save({k: v.contiguous() for k, v in tensors.items()}, p))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"model file not found: {path}; the bundle or fold directory is incomplete")
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises pickle, zip and runtime errors alike
        raise DataError(
            f"{path} is not a state dict that loads with torch.load(weights_only=True) "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise DataError(f"{path} does not contain a state dict (a mapping of names to tensors)")
    return tensors


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"file not found: {path}; the bundle or fold directory is incomplete")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error})") from None


# Fold models


def save_fold_learner(fold_dir: Path, learner: UnimodalLearner) -> None:
    """Write a fitted learner into ``<fold_dir>/model/`` (weights first, metadata last)."""
    tensors, metadata = learner.get_state()
    directory = fold_dir / MODEL_DIR
    _save_tensors(directory / f"learner-{learner.name}.pt", tensors)
    write_json(directory / f"learner-{learner.name}.json", metadata)


def has_fold_learner(fold_dir: Path, name: str) -> bool:
    """Return True when ``save_fold_learner`` finished for modality ``name`` in this fold."""
    return (fold_dir / MODEL_DIR / f"learner-{name}.json").is_file()


def load_fold_learner(fold_dir: Path, name: str, config: FusionConfig, source: Any, task: Task,
                      volumes: dict | None = None) -> UnimodalLearner:
    """Rebuild the learner that ``save_fold_learner`` wrote, reading inputs from ``source``."""
    directory = fold_dir / MODEL_DIR
    metadata = _read_json(directory / f"learner-{name}.json")
    tensors = _load_tensors(directory / f"learner-{name}.pt")
    learner = make_learner(name, config.modalities[name], source, task, int(metadata["seed"]), volumes)
    return learner.load_state(tensors, metadata)


def save_fold_head(fold_dir: Path, head: FusionHead, params: dict[str, Any], modalities: list[str],
                   dims: dict[str, tuple[int, int]]) -> None:
    """Write the fold's fitted fusion head and the layout of its inputs."""
    directory = fold_dir / MODEL_DIR
    _save_tensors(directory / "head.pt", head.state_dict())
    write_json(directory / "head.json", {
        "params": params,
        "modalities": list(modalities),
        "dims": {name: list(dims[name]) for name in modalities},
        "output_dim": head.output_dim,
    })


@dataclasses.dataclass
class BundleMember:
    """One fold's models: the fusion head, and per modality the learner's saved state.

    Learners are rebuilt on demand by :meth:`learner`, because a learner reads its inputs
    from a source and the sources differ between predictions.
    """

    fold: int
    directory: Path
    head: FusionHead
    params: dict[str, Any]
    modalities: list[str]
    dims: dict[str, tuple[int, int]]
    learner_states: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]
    test_subjects: list[str]

    def learner(self, name: str, config: FusionConfig, source: Any, task: Task,
                volumes: dict | None = None) -> UnimodalLearner:
        tensors, metadata = self.learner_states[name]
        learner = make_learner(name, config.modalities[name], source, task, int(metadata["seed"]), volumes)
        return learner.load_state(tensors, metadata)


def _load_member(directory: Path, fold: int, test_subjects: list[str], task: Task) -> BundleMember:
    layout = _read_json(directory / "head.json")
    dims = {name: (int(d), int(k)) for name, (d, k) in layout["dims"].items()}
    modalities = list(layout["modalities"])
    head = make_head(layout["params"]["head"], [dims[m][0] for m in modalities], task.output_dim, layout["params"])
    try:
        head.load_state_dict(_load_tensors(directory / "head.pt"), strict=True)
    except RuntimeError as error:
        raise DataError(f"{directory / 'head.pt'} does not fit a '{layout['params']['head']}' head: "
                        f"{str(error).splitlines()[0]}") from None
    head.eval()
    states = {}
    for name in modalities:
        if (directory / f"learner-{name}.json").is_file():
            states[name] = (_load_tensors(directory / f"learner-{name}.pt"),
                            _read_json(directory / f"learner-{name}.json"))
    return BundleMember(fold=fold, directory=directory, head=head, params=layout["params"],
                        modalities=modalities, dims=dims, learner_states=states, test_subjects=test_subjects)


# The bundle


def _training_columns(config: FusionConfig, cohort: Any) -> dict[str, list[str]]:
    """Return the training feature names of each omics modality and the clinical column types."""
    columns = {}
    for name, modality in config.modalities.items():
        source = cohort.sources[name]
        if isinstance(modality, OmicsConfig):
            columns[name] = {"features": [str(c) for c in source.feature_names]}
        elif not isinstance(modality, ImagingConfig):
            columns[name] = {"categorical": list(source.categorical), "continuous": list(source.continuous)}
    return columns


def write_bundle(run_dir: Path, config: FusionConfig, cohort: Any, splits: pd.DataFrame,
                 metrics: dict[str, Any]) -> Path | None:
    """Assemble ``<run_dir>/bundle/`` from the repeat-0 fold models; return its path.

    Returns None, with a warning naming the folds, when a fold has no saved models (a
    fold finished by an older fusion version that did not save them).
    """
    repeat0 = splits[splits["repeat"] == 0] if "repeat" in splits.columns else splits
    folds = sorted(int(f) for f in repeat0["fold"].unique())
    fold_dirs = {f: run_dir / "folds" / f"repeat0-fold{f}" for f in folds}
    incomplete = [f for f, d in fold_dirs.items() if not (d / MODEL_DIR / "head.json").is_file()]
    if incomplete:
        logger.warning("no model bundle written: folds %s have no saved models; run again with "
                       "--overwrite to train and save them", incomplete)
        return None

    bundle_dir = run_dir / "bundle"
    staging = run_dir / ".bundle.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    members = []
    for fold, fold_dir in fold_dirs.items():
        shutil.copytree(fold_dir / MODEL_DIR, staging / "members" / f"fold{fold}")
        test = repeat0.loc[repeat0["fold"] == fold, "subject_id"].astype(str).tolist()
        members.append({"fold": fold, "directory": f"members/fold{fold}", "test_subjects": test})

    (staging / "config.yaml").write_text(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
    write_json(staging / "metrics.json", metrics)
    write_json(staging / "bundle.json", {
        "format": "fusion.bundle",
        "format_version": BUNDLE_FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "task": {"kind": cohort.task.kind, "n_classes": cohort.task.n_classes},
        "final_model": "ensemble: the mean raw score of the repeat-0 outer-fold models",
        "modalities": {name: m.kind for name, m in config.modalities.items()},
        "training_columns": _training_columns(config, cohort),
        "members": members,
    })
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    staging.rename(bundle_dir)
    logger.info("model bundle written to %s (%d fold models)", bundle_dir, len(members))
    return bundle_dir


def load_bundle_files(path: Path, *, ignore_versions: bool = False) -> tuple[dict, FusionConfig, list[BundleMember]]:
    """Read ``bundle.json``, ``config.yaml`` and every member's models from a bundle folder."""
    path = Path(path)
    if path.is_dir() and not (path / "bundle.json").is_file() and (path / "bundle" / "bundle.json").is_file():
        path = path / "bundle"  # a run directory was given
    if not (path / "bundle.json").is_file():
        raise DataError(f"no model bundle at {path}: bundle.json not found; pass the bundle folder "
                        "that fusion run wrote (<run directory>/bundle)")
    manifest = _read_json(path / "bundle.json")
    if manifest.get("format") != "fusion.bundle" or manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise DataError(f"{path / 'bundle.json'}: format {manifest.get('format')!r} version "
                        f"{manifest.get('format_version')!r} is not a fusion bundle of version "
                        f"{BUNDLE_FORMAT_VERSION}; make it again with this fusion version")
    check_versions(manifest["versions"], where=path, strict=not ignore_versions)
    config = validate_config(yaml.safe_load((path / "config.yaml").read_text()), source=str(path / "config.yaml"))
    task = Task(manifest["task"]["kind"], n_classes=int(manifest["task"]["n_classes"]))
    members = [
        _load_member(path / entry["directory"], int(entry["fold"]), list(entry["test_subjects"]), task)
        for entry in manifest["members"]
    ]
    return manifest, config, members
