"""Validated run configuration, read from YAML.

Every section is a pydantic model that rejects unknown keys, so a typo such as
``n_trail`` is an error that suggests ``n_trials`` instead of a silent default.
Relative paths are resolved against the folder of the YAML file.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from ._errors import ConfigError

__all__ = [
    "AttributionConfig",
    "BenchmarkConfig",
    "ClinicalConfig",
    "EvaluationConfig",
    "FusionConfig",
    "GroupsConfig",
    "ImagingConfig",
    "JointTrainingConfig",
    "OmicsConfig",
    "TargetConfig",
    "TrainingConfig",
    "TuningConfig",
    "load_config",
]

HEAD_TYPES = ("weighted_average", "stacking", "mlp", "attention")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainingConfig(_Section):
    """Optimisation settings of one encoder."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=2)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)


class ImagingEncoderConfig(_Section):
    """A MONAI 3D network: ``resnet`` (``monai.networks.nets.ResNet``) or ``densenet``."""

    network: Literal["resnet", "densenet"] = "resnet"
    layers: list[int] = Field(default_factory=lambda: [1, 1, 1, 1])
    widths: list[int] = Field(default_factory=lambda: [8, 16, 32, 64])
    embedding_dim: int = Field(32, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    stem_stride: int = Field(2, ge=1)

    @pydantic.model_validator(mode="after")
    def _check_stages(self) -> ImagingEncoderConfig:
        # MONAI's ResNet has exactly four stages; DenseNet takes any number of blocks.
        if self.network == "resnet" and (len(self.layers) != 4 or len(self.widths) != 4):
            raise ValueError(
                f"a resnet encoder needs 4 entries in 'layers' and 'widths' (one per stage), "
                f"got {len(self.layers)} and {len(self.widths)}"
            )
        return self


class ImagingConfig(_Section):
    kind: Literal["imaging"]
    manifest: Path
    id_column: str = "subject_id"
    paths_relative_to: Path | None = None
    sequences: list[str] = Field(min_length=1)
    mask: str | None = None
    reference: str | None = None
    crop_margin: int | None = Field(None, ge=0)
    spatial_size: tuple[int, int, int] = (64, 64, 64)
    resize_mode: Literal["fit", "stretch"] = "fit"
    normalize: Literal["zscore_nonzero", "zscore", "none"] = "zscore_nonzero"
    encoder: ImagingEncoderConfig = Field(default_factory=ImagingEncoderConfig)
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(epochs=15, batch_size=8))


class OmicsPreprocessingConfig(_Section):
    """scanpy steps fitted on the training subjects of each fold."""

    scale: bool = True
    n_top_features: int | None = Field(None, ge=1)
    pca_components: int | None = Field(None, ge=1)


class OmicsEncoderConfig(_Section):
    hidden_dims: list[int] = Field(default_factory=lambda: [64])
    embedding_dim: int = Field(16, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)


class OmicsConfig(_Section):
    kind: Literal["omics"]
    files: list[Path] = Field(min_length=1)
    layer: str | None = None
    preprocessing: OmicsPreprocessingConfig = Field(default_factory=OmicsPreprocessingConfig)
    encoder: OmicsEncoderConfig = Field(default_factory=OmicsEncoderConfig)
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(epochs=100))


class ClinicalEncoderConfig(_Section):
    backbone: Literal["CategoryEmbedding", "FTTransformer", "GANDALF"] = "CategoryEmbedding"
    embedding_dim: int = Field(16, ge=1)


class ClinicalConfig(_Section):
    kind: Literal["clinical"]
    table: Path
    id_column: str = "subject_id"
    categorical: list[str] | None = None
    continuous: list[str] | None = None
    impute: Literal["median", "error"] = "median"
    encoder: ClinicalEncoderConfig = Field(default_factory=ClinicalEncoderConfig)
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(epochs=100))


ModalityConfig = Annotated[
    ImagingConfig | OmicsConfig | ClinicalConfig, Field(discriminator="kind")
]


class TargetConfig(_Section):
    """The outcome: one column, or ``time`` and ``event`` for survival.

    ``outcome_columns`` names further outcome columns of the tables (another endpoint,
    follow-up status) that must never become inputs. Config validation rejects any of them
    listed as a feature, and column-type inference leaves them out.

    ``missing`` decides what happens to subjects without a target value: ``error`` (the
    default) stops before training and lists them; ``exclude`` leaves them out with a warning.
    """

    table: Path | None = None
    id_column: str = "subject_id"
    kind: Literal["binary", "multiclass", "regression", "survival"]
    column: str | None = None
    time: str | None = None
    event: str | None = None
    outcome_columns: list[str] = Field(default_factory=list)
    missing: Literal["error", "exclude"] = "error"

    @pydantic.model_validator(mode="after")
    def _check_columns(self) -> TargetConfig:
        if self.kind == "survival":
            if self.time is None or self.event is None:
                raise ValueError("a survival target needs both 'time' and 'event' columns")
            if self.column is not None:
                raise ValueError("a survival target takes 'time' and 'event', not 'column'")
        elif self.column is None:
            raise ValueError(f"a {self.kind} target needs 'column'")
        return self

    @property
    def columns(self) -> list[str]:
        return [self.time, self.event] if self.kind == "survival" else [self.column]

    @property
    def forbidden_inputs(self) -> list[str]:
        """Target columns plus ``outcome_columns``: columns no modality may use as input."""
        return list(dict.fromkeys(self.columns + self.outcome_columns))


class GroupsConfig(_Section):
    """Subjects sharing a group (patient, site) never sit on both sides of a split."""

    column: str
    leave_one_group_out: bool = False


class EvaluationConfig(_Section):
    outer_folds: int = Field(5, ge=2)
    inner_folds: int = Field(3, ge=2)
    repeats: int = Field(1, ge=1)


class TuningConfig(_Section):
    """Optuna search over late-fusion heads.

    ``epochs`` caps each head's full-batch training; ``patience`` stops it earlier once the
    training loss has not improved for that many epochs (0 always trains ``epochs``).
    """

    n_trials: int = Field(30, ge=1)
    heads: list[Literal["weighted_average", "stacking", "mlp", "attention"]] = Field(
        default_factory=lambda: list(HEAD_TYPES), min_length=1
    )
    inner_folds: int = Field(3, ge=2)
    epochs: int = Field(150, ge=1)
    patience: int = Field(10, ge=0)
    storage: str | None = None


class AttributionConfig(_Section):
    n_steps: int = Field(32, ge=2)


class JointTrainingConfig(_Section):
    """Training of the intermediate (joint) strategies: encoders and fusion layer end to end.

    ``imaging: network`` trains the modality's MONAI network inside the joint model.
    ``statistics`` feeds an MLP with per-sequence intensity statistics instead, so a joint
    model trains in seconds instead of minutes on the CPU.
    """

    epochs: int = Field(40, ge=1)
    batch_size: int = Field(16, ge=2)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    modality_dropout: float = Field(0.2, ge=0, lt=1)
    hidden: int = Field(16, ge=1)
    rank: int = Field(4, ge=1)
    imaging: Literal["network", "statistics"] = "network"


class BenchmarkConfig(_Section):
    """Settings of ``fusion benchmark``; every strategy shares the run's folds and encoders.

    ``strategies`` lists built-in strategy names (``None`` runs them all) and may add
    user strategies as ``"module:ClassName"``. ``missing_fractions`` are the training and
    test fractions of the robustness curve: each modality is removed from that fraction
    of subjects, independently per modality.
    """

    strategies: list[str] | None = None
    missing_fractions: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=lambda: [0.25, 0.5])
    test_without_each_modality: bool = True
    late_epochs: int = Field(150, ge=1)
    joint: JointTrainingConfig = Field(default_factory=JointTrainingConfig)


class FusionConfig(_Section):
    """A whole run: cohort sources, target, evaluation protocol, tuning and attribution."""

    name: str = "run"
    seed: int = 0
    cache_dir: Path = Path(".fusion_cache")
    target: TargetConfig
    groups: GroupsConfig | None = None
    modalities: dict[str, ModalityConfig] = Field(min_length=1)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    attribution: AttributionConfig = Field(default_factory=AttributionConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)

    @pydantic.model_validator(mode="after")
    def _check_consistency(self) -> FusionConfig:
        outcome = set(self.target.forbidden_inputs)
        for name, modality in self.modalities.items():
            if isinstance(modality, ClinicalConfig):
                listed = set(modality.categorical or []) | set(modality.continuous or [])
                leaked = sorted(outcome & listed)
                if leaked:
                    raise ValueError(
                        f"modality '{name}' lists the outcome column(s) {leaked} as features; "
                        "an outcome is never an input: remove them from categorical/continuous"
                    )
                if self.groups is not None and self.groups.column in listed:
                    raise ValueError(
                        f"modality '{name}' lists the group column '{self.groups.column}' as a "
                        "feature; remove it or drop 'groups'"
                    )
            if isinstance(modality, ImagingConfig):
                columns = modality.sequences + ([modality.mask] if modality.mask else [])
                if modality.reference is not None and modality.reference not in modality.sequences:
                    raise ValueError(
                        f"modality '{name}': reference '{modality.reference}' is not one of the "
                        f"sequences {modality.sequences}"
                    )
                if len(set(columns)) != len(columns):
                    raise ValueError(f"modality '{name}': a manifest column is listed twice: {columns}")
        if self.target.table is None and not any(
            isinstance(m, ClinicalConfig) for m in self.modalities.values()
        ):
            raise ValueError("target.table is required when no clinical modality is configured")
        return self

    def resolve_paths(self, base: Path) -> FusionConfig:
        """Return a copy whose relative paths are made absolute against ``base``."""
        data = self.model_dump()

        def absolute(value: Any) -> Any:
            if value is None:
                return None
            path = Path(value)
            return path if path.is_absolute() else (base / path).resolve()

        data["cache_dir"] = absolute(data["cache_dir"])
        data["target"]["table"] = absolute(data["target"]["table"])
        for modality in data["modalities"].values():
            for key in ("manifest", "paths_relative_to", "table"):
                if key in modality:
                    modality[key] = absolute(modality[key])
            if "files" in modality:
                modality["files"] = [absolute(f) for f in modality["files"]]
        return FusionConfig.model_validate(data)

    def to_yaml_dict(self) -> dict[str, Any]:
        """Return the config as plain YAML-serialisable values (paths as strings)."""
        return self.model_dump(mode="json")


_MODALITY_KINDS = {"imaging": ImagingConfig, "omics": OmicsConfig, "clinical": ClinicalConfig}


def _unwrap(annotation: Any, node: Any) -> Any:
    """Find the pydantic model inside ``Optional``, ``dict`` or the modality union."""
    origin = getattr(annotation, "__origin__", None)
    args = getattr(annotation, "__args__", ())
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if origin is dict and len(args) == 2:
        return _ModalityMap
    if isinstance(node, dict) and node.get("kind") in _MODALITY_KINDS:
        return _MODALITY_KINDS[node["kind"]]
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        found = _unwrap(arg, node)
        if found is not None and found is not arg:
            return found
    return None


class _ModalityMap:
    """Marker for the ``modalities`` mapping while walking an error location."""


def _format_error(error: dict[str, Any], data: Any, source: str) -> str:
    location = tuple(error["loc"])
    # Discriminated unions add the tag ("imaging") to the location; drop it for display.
    shown = [str(p) for p in location if p not in _MODALITY_KINDS]
    where = ".".join(shown) or "(top level)"
    if error["type"] == "extra_forbidden":
        key = str(location[-1])
        parent = [p for p in location[:-1]]
        allowed = _allowed_keys_at(parent, data)
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        valid = f" Valid keys here: {', '.join(sorted(allowed))}." if allowed else ""
        return f"{source}: unknown key '{where}'{hint}{valid}"
    received = error.get("input")
    shown_input = "" if isinstance(received, (dict, list)) else f" (got {received!r})"
    return f"{source}: invalid value at '{where}': {error['msg']}{shown_input}"


def _allowed_keys_at(location: list[Any], data: Any) -> list[str]:
    model: Any = FusionConfig
    node: Any = data
    index = 0
    while index < len(location):
        part = location[index]
        index += 1
        if part in _MODALITY_KINDS:
            continue
        node = node.get(part) if isinstance(node, dict) else None
        if model is _ModalityMap:
            kind = node.get("kind") if isinstance(node, dict) else None
            model = _MODALITY_KINDS.get(kind)
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _unwrap(field.annotation, node)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def validate_config(data: Any, *, source: str = "config") -> FusionConfig:
    """Validate a parsed YAML mapping; raise ConfigError with every problem, one per line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return FusionConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        lines = [_format_error(error, data, source) for error in exc.errors()]
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def load_config(path: str | Path) -> FusionConfig:
    """Read, validate and resolve a YAML config; relative paths are taken from its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    config = validate_config(data, source=str(path))
    return config.resolve_paths(path.resolve().parent)
