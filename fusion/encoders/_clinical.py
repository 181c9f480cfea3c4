"""Clinical-table encoder built from pytorch-tabular backbones and embedding layers.

:class:`ClinicalEncoder` wraps one pytorch-tabular backbone (``CategoryEmbeddingBackbone``,
``FTTransformerBackbone`` or ``GANDALFBackbone``) with the embedding layer that the backbone's
own ``_build_embedding_layer`` returns, exactly as the matching pytorch-tabular model builds
them, and adds a linear projection when the backbone's output width differs from
``embedding_dim``. It takes the arrays of :class:`fusion.preprocessing.ClinicalPreprocessor`:
standardised continuous values and integer category codes (0 unknown, 1 missing).

For attribution the forward pass is split in two steps. :meth:`ClinicalEncoder.embed_inputs`
looks up the categorical embeddings, and :meth:`ClinicalEncoder.forward_embedded` runs the rest
of the network from float tensors only. Integrated gradients can then interpolate the
embeddings instead of the integer codes, and the attribution of a categorical column is the
sum over its embedding axis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import random
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_tabular.config import InferredConfig
from pytorch_tabular.models.base_model import safe_merge_config
from pytorch_tabular.models.category_embedding.category_embedding_model import (
    CategoryEmbeddingBackbone,
)
from pytorch_tabular.models.category_embedding.config import CategoryEmbeddingModelConfig
from pytorch_tabular.models.common.layers import Embedding2dLayer
from pytorch_tabular.models.common.layers.embeddings import SharedEmbeddings
from pytorch_tabular.models.ft_transformer.config import FTTransformerConfig
from pytorch_tabular.models.ft_transformer.ft_transformer import FTTransformerBackbone
from pytorch_tabular.models.gandalf.config import GANDALFConfig
from pytorch_tabular.models.gandalf.gandalf import GANDALFBackbone
from torch import Tensor, nn

from fusion._errors import ConfigError, DataError

__all__ = ["CLINICAL_BACKBONES", "ClinicalBackbone", "ClinicalEncoder"]

ClinicalBackbone = Literal["CategoryEmbedding", "FTTransformer", "GANDALF"]

CLINICAL_BACKBONES: dict[str, type] = {
    "CategoryEmbedding": CategoryEmbeddingModelConfig,
    "FTTransformer": FTTransformerConfig,
    "GANDALF": GANDALFConfig,
}
"""Backbone names accepted by :class:`ClinicalEncoder`, with their pytorch-tabular config class."""

# Config fields that the encoder sets itself, with the reason given when a user passes one.
_MANAGED_OPTIONS = {
    "task": "the encoder always uses the backbone without a head",
    "head": "the encoder returns the backbone output; heads belong to the fusion strategy",
    "head_config": "the encoder returns the backbone output; heads belong to the fusion strategy",
    "embedding_dims": "set category_embedding_dim, one width shared by every categorical column",
    "seed": "pass seed= to ClinicalEncoder",
    "learning_rate": "training options belong to the modality's training settings",
    "loss": "training options belong to the modality's training settings",
    "metrics": "training options belong to the modality's training settings",
    "metrics_prob_input": "training options belong to the modality's training settings",
    "metrics_params": "training options belong to the modality's training settings",
    "target_range": "the encoder has no output range; it returns an embedding",
}

# Defaults that differ from pytorch-tabular's, applied unless the caller passes the option.
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    # ClinicalPreprocessor already standardises with training statistics, and a BatchNorm
    # layer fails on a training batch of one subject.
    "CategoryEmbedding": {"batch_norm_continuous_input": False},
    "GANDALF": {"batch_norm_continuous_input": False},
    # Attention-based importance copies weights to NumPy on every forward pass; Captum
    # gives the attributions instead.
    "FTTransformer": {"batch_norm_continuous_input": False, "attn_feature_importance": False},
}


class ClinicalEncoder(nn.Module):
    """Encode clinical inputs into an ``(n, embedding_dim)`` embedding with pytorch-tabular.

    Parameters
    ----------
    n_continuous
        Number of continuous columns (``x_cont.shape[1]``).
    categorical_cardinalities
        Number of codes of each categorical column, reserved codes included, as in
        ``ClinicalPreprocessor.categorical_cardinalities_``.
    backbone
        ``"CategoryEmbedding"`` (an MLP on concatenated embeddings), ``"FTTransformer"``
        (a transformer over one token per column) or ``"GANDALF"`` (gated feature learning units).
    embedding_dim
        Width of the returned embedding. A linear layer maps the backbone output to it when
        the widths differ.
    category_embedding_dim
        Width of each categorical column's embedding; every column shares it so that the
        embeddings stack into ``(n, n_categorical, category_embedding_dim)``. Default for
        CategoryEmbedding and GANDALF: pytorch-tabular's rule ``min(50, (c + 1) // 2)`` applied
        to the largest cardinality ``c``. For FTTransformer it is the token width
        ``input_embed_dim`` (pytorch-tabular default 32); pass one of the two, not both.
    seed
        Seed for weight initialisation. When given, the torch and Python ``random`` generators
        are seeded inside a forked state (GANDALF draws its feature masks from ``random``), and
        the global generators are left as they were. ``None`` uses the global generators.
    **backbone_options
        Fields of the backbone's pytorch-tabular config (``CategoryEmbeddingModelConfig``,
        ``FTTransformerConfig``, ``GANDALFConfig``), for example ``layers="64-32"`` or
        ``num_attn_blocks=2``. Unlike pytorch-tabular, ``batch_norm_continuous_input``
        defaults to False because the inputs are already standardised, and FTTransformer's
        ``attn_feature_importance`` defaults to False.

    Notes
    -----
    The embedding rows of the reserved codes 0 (unknown) and 1 (missing) start at zero. The
    unknown code never occurs in training, so an unseen value keeps a neutral embedding
    instead of a random one, and so does a missing value when training had none.
    FTTransformer's shared embeddings also keep row 0 at zero (``padding_idx=0``).

    Examples
    --------
    >>> encoder = ClinicalEncoder(n_continuous=1, categorical_cardinalities=[4, 5], seed=0)
    >>> encoder(torch.zeros(3, 1), torch.ones(3, 2, dtype=torch.int64)).shape
    torch.Size([3, 16])
    """

    def __init__(
        self,
        *,
        n_continuous: int,
        categorical_cardinalities: Sequence[int],
        backbone: ClinicalBackbone = "CategoryEmbedding",
        embedding_dim: int = 16,
        category_embedding_dim: int | None = None,
        seed: int | None = None,
        **backbone_options: Any,
    ) -> None:
        super().__init__()
        cardinalities = _validate_sizes(
            n_continuous, categorical_cardinalities, embedding_dim, category_embedding_dim
        )
        config_class = _config_class(backbone)
        options = _resolve_options(backbone, config_class, n_continuous, backbone_options)
        width = _category_width(
            backbone, config_class, cardinalities, category_embedding_dim, options
        )

        self.n_continuous = int(n_continuous)
        self.categorical_cardinalities = cardinalities
        self.backbone_name = backbone
        self.embedding_dim = int(embedding_dim)
        self.category_embedding_dim = width
        self._init_kwargs = {
            "n_continuous": self.n_continuous,
            "categorical_cardinalities": list(cardinalities),
            "backbone": backbone,
            "embedding_dim": self.embedding_dim,
            "category_embedding_dim": category_embedding_dim,
            "seed": seed,
            **backbone_options,
        }

        with _seeded(seed):
            hparams = _backbone_hparams(
                backbone, config_class, self.n_continuous, cardinalities, width, options, seed
            )
            self.backbone = _build_backbone(backbone, hparams)
            self.embedding_layer = self.backbone._build_embedding_layer()
            _zero_reserved_rows(self.embedding_layer)
            output_dim = int(self.backbone.output_dim)
            self.projection = (
                nn.Linear(output_dim, self.embedding_dim)
                if output_dim != self.embedding_dim
                else nn.Identity()
            )

        self._is_token_embedding = isinstance(self.embedding_layer, Embedding2dLayer)
        self.register_buffer(
            "_cardinalities", torch.tensor(cardinalities, dtype=torch.int64), persistent=False
        )

    @property
    def n_categorical(self) -> int:
        """Number of categorical columns."""
        return len(self.categorical_cardinalities)

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments; ``ClinicalEncoder(**config)`` rebuilds the encoder."""
        return dict(self._init_kwargs)

    # ------------------------------------------------------------------ forward passes

    def forward(self, x_cont: Tensor, x_cat: Tensor) -> Tensor:
        """Embed a batch of subjects.

        Parameters
        ----------
        x_cont
            Continuous values, float, shape (n, n_continuous).
        x_cat
            Category codes, integer, shape (n, n_categorical).

        Returns
        -------
        Tensor
            Embedding, shape (n, embedding_dim).
        """
        self._check_codes(x_cont, x_cat)
        embedded = self.embedding_layer({"continuous": x_cont, "categorical": x_cat})
        return self.projection(self.backbone(embedded))

    def embed_inputs(self, x_cont: Tensor, x_cat: Tensor) -> tuple[Tensor, Tensor]:
        """Look up the categorical embeddings: the float inputs of :meth:`forward_embedded`.

        Parameters
        ----------
        x_cont
            Continuous values, float, shape (n, n_continuous).
        x_cat
            Category codes, integer, shape (n, n_categorical).

        Returns
        -------
        x_cont : Tensor
            The continuous input as given, shape (n, n_continuous).
        cat_embeddings : Tensor
            Embedding of each categorical column, shape (n, n_categorical,
            category_embedding_dim), including FTTransformer's per-column bias.

        Notes
        -----
        ``embed_inputs`` of all-zero codes gives the embeddings of the unknown level, a
        neutral baseline for integrated gradients.
        """
        self._check_codes(x_cont, x_cat)
        layer = self.embedding_layer
        n = x_cat.shape[0]

        columns = [
            embedding(x_cat[:, j]) for j, embedding in enumerate(layer.cat_embedding_layers)
        ]  # each (n, e)
        if not columns:
            return x_cont, x_cont.new_zeros((n, 0, self.category_embedding_dim))
        cat_embeddings = torch.stack(columns, dim=1)  # (n, n_categorical, e)
        if self._is_token_embedding and layer.embedding_bias:
            cat_embeddings = cat_embeddings + layer.cat_embedding_bias
        return x_cont, cat_embeddings

    def forward_embedded(self, x_cont: Tensor, cat_embeddings: Tensor) -> Tensor:
        """Embed a batch of subjects from continuous values and categorical embeddings.

        ``forward_embedded(*embed_inputs(x_cont, x_cat))`` equals ``forward(x_cont, x_cat)``.

        Parameters
        ----------
        x_cont
            Continuous values, float, shape (n, n_continuous).
        cat_embeddings
            Categorical embeddings from :meth:`embed_inputs`, shape (n, n_categorical,
            category_embedding_dim).

        Returns
        -------
        Tensor
            Embedding, shape (n, embedding_dim).
        """
        self._check_embedded(x_cont, cat_embeddings)
        layer = self.embedding_layer
        n = x_cont.shape[0]

        parts = []
        if self.n_continuous > 0:
            continuous = x_cont
            if layer.batch_norm_continuous_input:
                continuous = layer.normalizing_batch_norm(continuous)
            if self._is_token_embedding:
                column_index = torch.arange(self.n_continuous, device=x_cont.device).expand(n, -1)
                # (n, n_continuous, 1) * (n, n_continuous, e): one token per continuous column
                continuous = torch.mul(
                    continuous.unsqueeze(2), layer.cont_embedding_layer(column_index)
                )
                if layer.embedding_bias:
                    continuous = continuous + layer.cont_embedding_bias
            parts.append(continuous)
        if self.n_categorical > 0:
            # Token backbones take (n, n_categorical, e), the others (n, n_categorical * e).
            parts.append(
                cat_embeddings if self._is_token_embedding else cat_embeddings.reshape(n, -1)
            )
        embedded = torch.cat(parts, dim=1)
        if layer.embd_dropout is not None:
            embedded = layer.embd_dropout(embedded)

        return self.projection(self.backbone(embedded))

    # ------------------------------------------------------------------ input checks

    def _check_codes(self, x_cont: Tensor, x_cat: Tensor) -> None:
        """Raise a DataError unless the inputs match the encoder's columns and code ranges."""
        self._check_continuous(x_cont)
        if x_cat.ndim != 2 or x_cat.shape[1] != self.n_categorical:
            msg = (
                f"clinical encoder: x_cat must have shape (n, {self.n_categorical}), got "
                f"{tuple(x_cat.shape)}."
            )
            raise DataError(msg)
        if x_cat.dtype.is_floating_point or x_cat.dtype.is_complex or x_cat.dtype == torch.bool:
            msg = (
                "clinical encoder: x_cat must hold integer category codes, got dtype "
                f"{x_cat.dtype}. Codes are looked up, never interpolated: to attribute "
                "categorical columns, use embed_inputs() and forward_embedded()."
            )
            raise DataError(msg)
        if x_cat.shape[0] != x_cont.shape[0]:
            msg = (
                f"clinical encoder: x_cont has {x_cont.shape[0]} rows and x_cat has "
                f"{x_cat.shape[0]}; both must hold the same subjects in the same order."
            )
            raise DataError(msg)

        if self.n_categorical and x_cat.numel():
            out_of_range = (x_cat < 0) | (x_cat >= self._cardinalities)  # (n, n_categorical)
            if bool(out_of_range.any()):
                row, column = (int(i) for i in out_of_range.nonzero()[0])
                msg = (
                    f"clinical encoder: categorical column {column} has code "
                    f"{int(x_cat[row, column])} in row {row}, outside "
                    f"0..{self.categorical_cardinalities[column] - 1}. Encode the table with the "
                    "ClinicalPreprocessor fitted for this encoder."
                )
                raise DataError(msg)

    def _check_embedded(self, x_cont: Tensor, cat_embeddings: Tensor) -> None:
        self._check_continuous(x_cont)
        expected = (x_cont.shape[0], self.n_categorical, self.category_embedding_dim)
        if tuple(cat_embeddings.shape) != expected:
            msg = (
                f"clinical encoder: cat_embeddings must have shape {expected} (n, n_categorical, "
                f"category_embedding_dim), got {tuple(cat_embeddings.shape)}; build it with "
                "embed_inputs()."
            )
            raise DataError(msg)

    def _check_continuous(self, x_cont: Tensor) -> None:
        if x_cont.ndim != 2 or x_cont.shape[1] != self.n_continuous:
            msg = (
                f"clinical encoder: x_cont must have shape (n, {self.n_continuous}), got "
                f"{tuple(x_cont.shape)}."
            )
            raise DataError(msg)
        if not x_cont.dtype.is_floating_point:
            msg = f"clinical encoder: x_cont must be a float tensor, got dtype {x_cont.dtype}."
            raise DataError(msg)


# ---------------------------------------------------------------------- construction helpers


def _validate_sizes(
    n_continuous: int,
    categorical_cardinalities: Sequence[int],
    embedding_dim: int,
    category_embedding_dim: int | None,
) -> list[int]:
    """Validate the size arguments and return the cardinalities as a list of int."""
    if not _is_count(n_continuous):
        msg = (
            f"clinical encoder: n_continuous must be a non-negative integer, got {n_continuous!r}."
        )
        raise ConfigError(msg)
    cardinalities = list(categorical_cardinalities)
    if not all(_is_count(c) and c >= 1 for c in cardinalities):
        msg = (
            "clinical encoder: categorical_cardinalities must be positive integers, got "
            f"{cardinalities!r}."
        )
        raise ConfigError(msg)
    if n_continuous == 0 and not cardinalities:
        msg = (
            "clinical encoder: there are no input columns; declare at least one categorical or "
            "continuous column."
        )
        raise ConfigError(msg)
    if not _is_count(embedding_dim) or embedding_dim < 1:
        msg = f"clinical encoder: embedding_dim must be a positive integer, got {embedding_dim!r}."
        raise ConfigError(msg)
    if category_embedding_dim is not None and (
        not _is_count(category_embedding_dim) or category_embedding_dim < 1
    ):
        msg = (
            "clinical encoder: category_embedding_dim must be a positive integer or None, got "
            f"{category_embedding_dim!r}."
        )
        raise ConfigError(msg)
    return [int(c) for c in cardinalities]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _config_class(backbone: str) -> type:
    if backbone not in CLINICAL_BACKBONES:
        msg = (
            f"clinical encoder: unknown backbone {backbone!r}; choose one of "
            f"{list(CLINICAL_BACKBONES)}."
        )
        close = difflib.get_close_matches(str(backbone), list(CLINICAL_BACKBONES), n=1)
        msg += f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(msg)
    return CLINICAL_BACKBONES[backbone]


def _resolve_options(
    backbone: str, config_class: type, n_continuous: int, options: dict[str, Any]
) -> dict[str, Any]:
    """Validate the backbone options against the config class and add the encoder's defaults."""
    allowed = {
        f.name for f in dataclasses.fields(config_class) if f.init and not f.name.startswith("_")
    }
    for key in options:
        if key in _MANAGED_OPTIONS:
            msg = (
                f"clinical encoder: option {key!r} cannot be set for the {backbone} backbone: "
                f"{_MANAGED_OPTIONS[key]}."
            )
            raise ConfigError(msg)
        if key not in allowed:
            msg = f"clinical encoder: unknown option {key!r} for the {backbone} backbone."
            close = difflib.get_close_matches(key, sorted(allowed - set(_MANAGED_OPTIONS)), n=1)
            msg += f" Did you mean {close[0]!r}?" if close else ""
            msg += f" Valid options: {sorted(allowed - set(_MANAGED_OPTIONS))}."
            raise ConfigError(msg)

    resolved = {**_DEFAULT_OPTIONS[backbone], **options}
    if n_continuous == 0:
        # pytorch-tabular would build a BatchNorm layer over zero features.
        resolved["batch_norm_continuous_input"] = False
    return resolved


def _category_width(
    backbone: str,
    config_class: type,
    cardinalities: list[int],
    category_embedding_dim: int | None,
    options: dict[str, Any],
) -> int:
    """Return the embedding width of every categorical column.

    For FTTransformer the width is the token width ``input_embed_dim``, which this function
    writes into ``options`` when ``category_embedding_dim`` is given.
    """
    if config_class is FTTransformerConfig:
        token_width = options.get("input_embed_dim", category_embedding_dim)
        if category_embedding_dim is not None and token_width != category_embedding_dim:
            msg = (
                f"clinical encoder: category_embedding_dim={category_embedding_dim} and "
                f"input_embed_dim={token_width} both set the {backbone} token width; pass one."
            )
            raise ConfigError(msg)
        if category_embedding_dim is not None:
            options["input_embed_dim"] = category_embedding_dim
        defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
        return int(options.get("input_embed_dim", defaults["input_embed_dim"]))

    if category_embedding_dim is not None:
        return category_embedding_dim
    largest = max(cardinalities, default=1)
    return min(50, (largest + 1) // 2)


def _backbone_hparams(
    backbone: str,
    config_class: type,
    n_continuous: int,
    cardinalities: list[int],
    width: int,
    options: dict[str, Any],
    seed: int | None,
) -> DictConfig:
    """Build the merged OmegaConf config that pytorch-tabular models pass to their backbones."""
    embedding_dims = [[c, width] for c in cardinalities]
    seed_option = {} if seed is None else {"seed": seed}
    try:
        model_config = config_class(
            task="backbone", head=None, embedding_dims=embedding_dims, **seed_option, **options
        )
    except (AssertionError, ValueError, TypeError) as exc:
        msg = f"clinical encoder: invalid options for the {backbone} backbone {options}: {exc}"
        raise ConfigError(msg) from exc
    inferred = InferredConfig(
        categorical_dim=len(cardinalities),
        continuous_dim=n_continuous,
        categorical_cardinality=cardinalities,
        embedding_dims=embedding_dims,
    )
    return safe_merge_config(OmegaConf.structured(model_config), OmegaConf.structured(inferred))


def _build_backbone(backbone: str, hparams: DictConfig) -> nn.Module:
    """Build the backbone as the matching pytorch-tabular model's ``_build_network`` does."""
    try:
        if backbone == "CategoryEmbedding":
            return CategoryEmbeddingBackbone(hparams)
        if backbone == "FTTransformer":
            return FTTransformerBackbone(hparams)
        return GANDALFBackbone(
            cat_embedding_dims=hparams.embedding_dims,
            n_continuous_features=hparams.continuous_dim,
            gflu_stages=hparams.gflu_stages,
            gflu_dropout=hparams.gflu_dropout,
            gflu_feature_init_sparsity=hparams.gflu_feature_init_sparsity,
            learnable_sparsity=hparams.learnable_sparsity,
            batch_norm_continuous_input=hparams.batch_norm_continuous_input,
            embedding_dropout=hparams.embedding_dropout,
            virtual_batch_size=hparams.virtual_batch_size,
        )
    except AssertionError as exc:
        msg = f"clinical encoder: pytorch-tabular rejected the {backbone} settings: {exc}"
        raise ConfigError(msg) from exc


def _zero_reserved_rows(embedding_layer: nn.Module) -> None:
    """Set the embedding rows of codes 0 (unknown) and 1 (missing) to zero."""
    with torch.no_grad():
        for layer in embedding_layer.cat_embedding_layers:
            table = layer.embed.weight if isinstance(layer, SharedEmbeddings) else layer.weight
            table[:2] = 0.0


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed torch and Python ``random`` inside the block and restore both afterwards."""
    if seed is None:
        yield
        return
    python_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            yield
    finally:
        random.setstate(python_state)
