"""Tests of the clinical-table preprocessor and the pytorch-tabular encoder."""

from __future__ import annotations

import json
import logging
import random
import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import IntegratedGradients
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from fusion._errors import ConfigError, DataError, DataWarning
from fusion.encoders._clinical import ClinicalEncoder
from fusion.preprocessing._clinical import (
    MISSING_CODE,
    UNKNOWN_CODE,
    ClinicalPreprocessor,
    category_label,
    infer_column_types,
)

BACKBONES = ["CategoryEmbedding", "FTTransformer", "GANDALF"]

# Small, dropout-free settings keep the encoder tests fast and deterministic.
SMALL_OPTIONS = {
    "CategoryEmbedding": {"layers": "32-16"},
    "FTTransformer": {
        "num_attn_blocks": 1,
        "num_heads": 2,
        "input_embed_dim": 8,
        "attn_dropout": 0.0,
        "ff_dropout": 0.0,
        "add_norm_dropout": 0.0,
    },
    "GANDALF": {"gflu_stages": 2},
}


def small_encoder(
    backbone: str, *, n_continuous: int = 2, cardinalities: tuple[int, ...] = (5, 6)
) -> ClinicalEncoder:
    return ClinicalEncoder(
        n_continuous=n_continuous,
        categorical_cardinalities=list(cardinalities),
        backbone=backbone,
        embedding_dim=8,
        seed=0,
        **SMALL_OPTIONS[backbone],
    )


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread() -> Iterator[None]:
    """Run the tiny models on one thread (two threads on a busy 2-core CPU were 50x slower)."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def data_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DataWarning)]


# ---------------------------------------------------------------------- category labels


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (True, "True"),
        (np.bool_(False), "False"),
        (1, "1"),
        (1.0, "1"),
        (np.int64(3), "3"),
        (np.float32(2.0), "2"),
        (2.5, "2.5"),
        ("b", "b"),
        ("1.0", "1.0"),
        (None, None),
        (float("nan"), None),
        (pd.NA, None),
    ],
)
def test_category_label_rule(value: object, label: str | None) -> None:
    assert category_label(value) == label


def test_int_and_float_one_share_level() -> None:
    train = pd.DataFrame({"stage": [1, 2, 1]}, index=["a", "b", "c"])
    test = pd.DataFrame({"stage": np.array([1.0, "1", 2.0], dtype=object)}, index=["d", "e", "f"])

    preprocessor = ClinicalPreprocessor(categorical=["stage"], continuous=[]).fit(train)
    _, x_cat = preprocessor.transform(test)

    assert preprocessor.vocabularies_ == {"stage": ["1", "2"]}
    assert x_cat[:, 0].tolist() == [2, 2, 3]


def test_numeric_levels_sorted_by_value() -> None:
    train = pd.DataFrame({"grade": [10, 2, 1, 2]}, index=list("abcd"))

    preprocessor = ClinicalPreprocessor(categorical=["grade"], continuous=[]).fit(train)

    assert preprocessor.vocabularies_["grade"] == ["1", "2", "10"]


# ---------------------------------------------------------------------- column type inference


def test_infer_column_types(caplog: pytest.LogCaptureFixture) -> None:
    n = 12
    table = pd.DataFrame(
        {
            "site": ["A", "B"] * 6,
            "flag": [True, False] * 6,
            "stage": pd.Categorical(["I", "II", "III"] * 4),
            "sex": [1.0, 2.0, np.nan] + [1.0] * 9,
            "count": list(range(n)),
            "age": np.linspace(30.5, 70.5, n),
            "empty": [np.nan] * n,
        }
    )

    with caplog.at_level(logging.INFO, logger="fusion"), pytest.warns(DataWarning, match="'empty'"):
        categorical, continuous = infer_column_types(table, max_categories=10)

    assert categorical == ["site", "flag", "stage", "sex"]
    assert continuous == ["count", "age"]
    for column in ["site", "flag", "stage", "sex", "count", "age"]:
        assert f"column {column!r}" in caplog.text


def test_infer_max_categories_boundary() -> None:
    table = pd.DataFrame({"codes": [1, 2, 3, 1]})

    assert infer_column_types(table, max_categories=3) == (["codes"], [])
    assert infer_column_types(table, max_categories=2) == ([], ["codes"])


# ---------------------------------------------------------------------- unseen and missing levels


def c3_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return a training table (200 rows, ``flag`` all False, ``site`` A/B/C) and a test table."""
    rng = np.random.default_rng(0)
    train = pd.DataFrame(
        {
            "flag": np.zeros(200, dtype=bool),
            "site": rng.choice(["A", "B", "C"], size=200),
            "age": rng.normal(60.0, 10.0, size=200),
        },
        index=[f"T{i:03d}" for i in range(200)],
    )
    flag = np.zeros(20, dtype=bool)
    flag[[1, 5, 9]] = True
    site = np.array(["A", "B", "C"] * 6 + ["C", "A"], dtype=object)
    site[[4, 17]] = "Z"
    test = pd.DataFrame(
        {"flag": flag, "site": site, "age": rng.normal(60.0, 10.0, size=20)},
        index=[f"V{i:02d}" for i in range(20)],
    )
    return train, test


def test_unseen_category_maps_to_unknown() -> None:
    train, test = c3_tables()
    preprocessor = ClinicalPreprocessor(categorical=["flag", "site"], continuous=["age"]).fit(train)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        x_cont, x_cat = preprocessor.transform(test)
    messages = data_warnings(record)

    expected_flag = np.where(test["flag"], UNKNOWN_CODE, 2)
    expected_site = test["site"].map({"A": 2, "B": 3, "C": 4, "Z": UNKNOWN_CODE}).to_numpy()
    assert x_cont.shape == (20, 1)
    assert x_cat[:, 0].tolist() == expected_flag.tolist()
    assert x_cat[:, 1].tolist() == expected_site.tolist()
    assert len(messages) == 2
    assert "'flag': 3 of 20 values" in messages[0]
    assert "'True'" in messages[0]
    assert "'site': 2 of 20 values" in messages[1]
    assert "'Z'" in messages[1]


def test_unseen_rows_keep_input_order() -> None:
    train, test = c3_tables()
    preprocessor = ClinicalPreprocessor(categorical=["flag", "site"], continuous=["age"]).fit(train)
    order = np.random.default_rng(1).permutation(len(test))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        x_cont, x_cat = preprocessor.transform(test)
        x_cont_shuffled, x_cat_shuffled = preprocessor.transform(test.iloc[order])

    assert np.array_equal(x_cont_shuffled, x_cont[order])
    assert np.array_equal(x_cat_shuffled, x_cat[order])


def test_unseen_rows_get_embeddings() -> None:
    train, test = c3_tables()
    preprocessor = ClinicalPreprocessor(categorical=["flag", "site"], continuous=["age"]).fit(train)
    encoder = ClinicalEncoder(
        n_continuous=1, categorical_cardinalities=preprocessor.categorical_cardinalities_, seed=0
    ).eval()
    order = np.random.default_rng(1).permutation(len(test))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        x_cont, x_cat = preprocessor.transform(test)
        x_cont_shuffled, x_cat_shuffled = preprocessor.transform(test.iloc[order])
    with torch.no_grad():
        embedding = encoder(torch.from_numpy(x_cont), torch.from_numpy(x_cat))
        embedding_shuffled = encoder(
            torch.from_numpy(x_cont_shuffled), torch.from_numpy(x_cat_shuffled)
        )

    assert embedding.shape == (20, 16)
    assert torch.isfinite(embedding).all()
    assert torch.equal(embedding_shuffled, embedding[torch.from_numpy(order)])


def test_categorical_nan_is_missing_level() -> None:
    train = pd.DataFrame({"stage": ["I", None, "II", np.nan]}, index=list("abcd"))
    test = pd.DataFrame({"stage": [np.nan, "II"]}, index=["e", "f"])

    preprocessor = ClinicalPreprocessor(categorical=["stage"], continuous=[]).fit(train)
    _, x_cat_train = preprocessor.transform(train)
    _, x_cat_test = preprocessor.transform(test)

    assert preprocessor.vocabularies_["stage"] == ["I", "II"]
    assert preprocessor.categorical_cardinalities_ == [4]
    assert x_cat_train[:, 0].tolist() == [2, MISSING_CODE, 3, MISSING_CODE]
    assert x_cat_test[:, 0].tolist() == [MISSING_CODE, 3]


def test_missing_level_without_training_nan() -> None:
    train = pd.DataFrame({"sex": [1, 2, 2]}, index=list("abc"))
    test = pd.DataFrame({"sex": [np.nan]}, index=["d"])

    preprocessor = ClinicalPreprocessor(categorical=["sex"], continuous=[]).fit(train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        _, x_cat = preprocessor.transform(test)

    assert x_cat.tolist() == [[MISSING_CODE]]


# ---------------------------------------------------------------------- continuous columns


def c4_table() -> pd.DataFrame:
    """100 rows: ``age`` with 7 NaN, categorical ``stage`` with 4 NaN."""
    rng = np.random.default_rng(0)
    age = rng.normal(60.0, 10.0, size=100)
    age[[3, 10, 20, 30, 40, 50, 60]] = np.nan
    stage = rng.choice(["I", "II", "III"], size=100).astype(object)
    stage[[1, 2, 5, 7]] = np.nan
    return pd.DataFrame({"age": age, "stage": stage}, index=[f"P{i:03d}" for i in range(100)])


def test_impute_error_names_column_and_count() -> None:
    preprocessor = ClinicalPreprocessor(categorical=["stage"], continuous=["age"], impute="error")

    with pytest.raises(DataError, match=r"'age' \(7 missing of 100; subjects 'P003', 'P010'"):
        preprocessor.fit(c4_table())


def test_impute_error_at_transform() -> None:
    table = c4_table()
    complete = table.dropna(subset=["age"])
    preprocessor = ClinicalPreprocessor(
        categorical=["stage"], continuous=["age"], impute="error"
    ).fit(complete)

    with pytest.raises(DataError, match=r"'age' \(7 missing of 100"):
        preprocessor.transform(table)


def test_impute_error_lists_every_column() -> None:
    table = pd.DataFrame({"a": [1.0, np.nan, 3.0], "b": [np.nan, np.nan, 1.0]}, index=list("xyz"))
    preprocessor = ClinicalPreprocessor(categorical=[], continuous=["a", "b"], impute="error")

    with pytest.raises(DataError) as excinfo:
        preprocessor.fit(table)

    assert "'a' (1 missing of 3" in str(excinfo.value)
    assert "'b' (2 missing of 3" in str(excinfo.value)


def test_impute_median_fills_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    train = pd.DataFrame({"age": [30.0, 40.0, 50.0, 80.0, np.nan]}, index=list("abcde"))
    test = pd.DataFrame({"age": [np.nan, 40.0, np.nan]}, index=list("fgh"))
    preprocessor = ClinicalPreprocessor(categorical=[], continuous=["age"]).fit(train)

    with caplog.at_level(logging.DEBUG, logger="fusion"):
        x_cont, x_cat = preprocessor.transform(test)

    mean, sd, median = 50.0, np.sqrt((400 + 100 + 0 + 900) / 4), 45.0
    assert preprocessor.medians_.tolist() == [median]
    assert x_cont[:, 0] == pytest.approx(np.array([median - mean, 40.0 - mean, median - mean]) / sd)
    assert x_cont.dtype == np.float32
    assert x_cat.shape == (3, 0)
    assert x_cat.dtype == np.int64
    assert "filled 2 missing values of column 'age'" in caplog.text


def test_string_in_continuous_column() -> None:
    table = pd.DataFrame({"age": [61, "unknown", 45, "n/a"]}, index=["P1", "P2", "P3", "P4"])
    preprocessor = ClinicalPreprocessor(categorical=[], continuous=["age"])

    with pytest.raises(DataError) as excinfo:
        preprocessor.fit(table)

    message = str(excinfo.value)
    assert "'age'" in message
    assert "'unknown' (subject 'P2')" in message
    assert "'n/a' (subject 'P4')" in message
    assert "categorical" in message


def test_string_examples_capped_at_five() -> None:
    table = pd.DataFrame({"age": [f"x{i}" for i in range(8)]}, index=[f"P{i}" for i in range(8)])

    with pytest.raises(DataError) as excinfo:
        ClinicalPreprocessor(categorical=[], continuous=["age"]).fit(table)

    assert "8 values that are not numbers" in str(excinfo.value)
    assert "'x4'" in str(excinfo.value)
    assert "'x5'" not in str(excinfo.value)


def test_infinite_continuous_value() -> None:
    table = pd.DataFrame({"dose": [1.0, np.inf]}, index=["P1", "P2"])

    with pytest.raises(DataError, match=r"'dose' has 1 infinite values \(subjects 'P2'\)"):
        ClinicalPreprocessor(categorical=[], continuous=["dose"]).fit(table)


def test_all_missing_continuous_column() -> None:
    table = pd.DataFrame({"dose": [np.nan, np.nan]}, index=["P1", "P2"])

    with pytest.raises(DataError, match="'dose' has no observed value"):
        ClinicalPreprocessor(categorical=[], continuous=["dose"]).fit(table)


def test_zero_variance_sd_one() -> None:
    train = pd.DataFrame({"dose": [5.0, 5.0, 5.0]}, index=list("abc"))

    with pytest.warns(DataWarning, match="'dose' has one value"):
        preprocessor = ClinicalPreprocessor(categorical=[], continuous=["dose"]).fit(train)
    x_cont, _ = preprocessor.transform(pd.DataFrame({"dose": [5.0, 7.0]}, index=list("de")))

    assert preprocessor.sds_.tolist() == [1.0]
    assert x_cont[:, 0].tolist() == [0.0, 2.0]


# ---------------------------------------------------------------------- column names


def c5_table() -> pd.DataFrame:
    table = pd.DataFrame(
        {
            0: ["x", "y", "x", "z"],
            1: [1.5, 2.5, 3.5, 4.5],
            "home.dest": ["NY", "Paris", "NY", None],
            "D[cm/g]": [0.1, 0.2, 0.3, 0.4],
            "length (cm)": [10.0, 20.0, 30.0, 40.0],
        },
        index=["s1", "s2", "s3", "s4"],
    )
    return table


def test_column_names_kept_one_to_one() -> None:
    table = c5_table()
    preprocessor = ClinicalPreprocessor(
        categorical=[0, "home.dest"], continuous=[1, "D[cm/g]", "length (cm)"]
    )

    x_cont, x_cat = preprocessor.fit(table).transform(table)
    state = json.loads(json.dumps(preprocessor.get_state()))

    assert x_cont.shape == (4, 3)
    assert x_cat.tolist() == [[2, 2], [3, 3], [2, 2], [4, MISSING_CODE]]
    assert preprocessor.categorical_columns_ == [0, "home.dest"]
    assert preprocessor.continuous_columns_ == [1, "D[cm/g]", "length (cm)"]
    assert list(preprocessor.vocabularies_) == [0, "home.dest"]
    assert state["categorical"] == [0, "home.dest"]
    assert state["continuous"] == [1, "D[cm/g]", "length (cm)"]


def test_numpy_integer_labels_become_int() -> None:
    table = pd.DataFrame(np.arange(6.0).reshape(3, 2), index=list("abc"))
    preprocessor = ClinicalPreprocessor(categorical=[], continuous=list(table.columns))

    preprocessor.fit(table)

    assert [type(c) for c in preprocessor.continuous_columns_] == [int, int]
    assert json.dumps(preprocessor.get_state())


def test_declared_names_collide_as_text() -> None:
    table = pd.DataFrame({0: [1, 2], "0": [3, 4]}, index=["a", "b"])
    preprocessor = ClinicalPreprocessor(categorical=[0], continuous=["0"])

    with pytest.raises(DataError, match=r"collide when written as text.*0 and '0'"):
        preprocessor.fit(table)


def test_table_names_collide_with_declared() -> None:
    table = pd.DataFrame({0: [1, 2], "0": [3, 4]}, index=["a", "b"])
    preprocessor = ClinicalPreprocessor(categorical=[0], continuous=[])

    with pytest.raises(
        DataError, match=r"collide when written as text in the training table: 0 and '0'"
    ):
        preprocessor.fit(table)


def test_missing_column_suggests_closest() -> None:
    table = pd.DataFrame({"age": [50.0, 60.0], "sex": [1, 2]}, index=["a", "b"])
    preprocessor = ClinicalPreprocessor(categorical=["sex"], continuous=["agee"])

    with pytest.raises(
        DataError, match=r"column 'agee' not found in the training table. Did you mean 'age'\?"
    ):
        preprocessor.fit(table)


def test_text_label_suggests_integer_column() -> None:
    table = pd.DataFrame({0: [50.0, 60.0]}, index=["a", "b"])
    preprocessor = ClinicalPreprocessor(categorical=[], continuous=["0"])

    with pytest.raises(
        DataError, match=r"column '0' not found in the training table. Did you mean 0\?"
    ):
        preprocessor.fit(table)


def test_column_declared_twice() -> None:
    table = pd.DataFrame({"age": [50.0, 60.0]}, index=["a", "b"])
    preprocessor = ClinicalPreprocessor(categorical=["age"], continuous=["age"])

    with pytest.raises(ConfigError, match="'age' are declared more than once"):
        preprocessor.fit(table)


def test_repeated_subject_ids() -> None:
    table = pd.DataFrame({"age": [50.0, 60.0, 70.0]}, index=["a", "b", "a"])

    with pytest.raises(DataError, match="repeats 1 subject ids"):
        ClinicalPreprocessor(categorical=[], continuous=["age"]).fit(table)


def test_invalid_impute_option() -> None:
    table = pd.DataFrame({"age": [50.0, 60.0]}, index=["a", "b"])

    with pytest.raises(ConfigError, match="impute must be one of"):
        ClinicalPreprocessor(categorical=[], continuous=["age"], impute="mean").fit(table)


# ---------------------------------------------------------------------- leakage and state


def test_fitted_statistics_from_training_rows() -> None:
    train = pd.DataFrame(
        {"age": [30.0, 40.0, 50.0, np.nan], "site": ["A", "B", "A", "B"]}, index=list("abcd")
    )

    preprocessor = ClinicalPreprocessor(categorical=["site"], continuous=["age"]).fit(train)

    assert preprocessor.means_.tolist() == [40.0]
    assert preprocessor.sds_.tolist() == pytest.approx([np.sqrt(200.0 / 3.0)])
    assert preprocessor.medians_.tolist() == [40.0]


def test_transform_leaves_statistics_unchanged() -> None:
    train = pd.DataFrame({"age": [30.0, 40.0, 50.0], "site": ["A", "B", "A"]}, index=list("abc"))
    held_out = pd.DataFrame({"age": [1e6], "site": ["Q"]}, index=["z"])
    preprocessor = ClinicalPreprocessor(categorical=["site"], continuous=["age"]).fit(train)
    before = json.dumps(preprocessor.get_state())

    with pytest.warns(DataWarning):
        x_cont, _ = preprocessor.transform(held_out)

    assert json.dumps(preprocessor.get_state()) == before
    assert x_cont[0, 0] == pytest.approx((1e6 - 40.0) / np.sqrt(200.0 / 3.0))


def test_state_round_trip_same_transform() -> None:
    train, test = c3_tables()
    test.loc["V03", "age"] = np.nan
    preprocessor = ClinicalPreprocessor(categorical=["flag", "site"], continuous=["age"]).fit(train)

    restored = ClinicalPreprocessor.from_state(json.loads(json.dumps(preprocessor.get_state())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        expected = preprocessor.transform(test)
        actual = restored.transform(test)

    assert np.array_equal(actual[0], expected[0])
    assert np.array_equal(actual[1], expected[1])
    assert restored.categorical_cardinalities_ == preprocessor.categorical_cardinalities_


def test_state_with_wrong_format() -> None:
    with pytest.raises(DataError, match="not a clinical preprocessor state"):
        ClinicalPreprocessor.from_state({"format": "something else"})


def test_state_with_wrong_lengths() -> None:
    table = pd.DataFrame({"age": [50.0, 60.0]}, index=["a", "b"])
    state = ClinicalPreprocessor(categorical=[], continuous=["age"]).fit(table).get_state()
    state["means"] = [1.0, 2.0]

    with pytest.raises(DataError, match="'means' must be a list of 1 entries, got 2"):
        ClinicalPreprocessor.from_state(state)


def test_unfitted_transform_raises() -> None:
    table = pd.DataFrame({"age": [50.0]}, index=["a"])

    with pytest.raises(NotFittedError, match="call fit"):
        ClinicalPreprocessor(categorical=[], continuous=["age"]).transform(table)


def test_clone_gives_unfitted_copy() -> None:
    table = pd.DataFrame({"age": [50.0, 60.0]}, index=["a", "b"])
    preprocessor = ClinicalPreprocessor(categorical=[], continuous=["age"], impute="error").fit(
        table
    )

    copy = clone(preprocessor)

    assert copy.get_params() == preprocessor.get_params()
    assert not hasattr(copy, "means_")


# ---------------------------------------------------------------------- real data


def test_tcga_lgg_clinical_table(shared_data) -> None:
    table = pd.read_csv(shared_data / "tcga_lgg" / "clinical.csv", index_col="patient_id")
    categorical = [
        "gender",
        "race",
        "ethnicity",
        "histological_type",
        "tumor_location",
        "laterality",
        "site",
    ]
    train, test = table.iloc[:80], table.iloc[80:]

    preprocessor = ClinicalPreprocessor(
        categorical=categorical, continuous=["age_at_initial_pathologic"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        x_cont, x_cat = preprocessor.fit(train).transform(test)

    assert x_cont.shape == (30, 1)
    assert x_cat.shape == (30, 7)
    assert np.isfinite(x_cont).all()
    assert (x_cat >= 0).all()
    assert (x_cat < np.array(preprocessor.categorical_cardinalities_)).all()
    assert preprocessor.means_[0] == pytest.approx(train["age_at_initial_pathologic"].mean())


def test_tcga_lgg_inferred_types(shared_data) -> None:
    table = pd.read_csv(shared_data / "tcga_lgg" / "clinical.csv", index_col="patient_id")
    inputs = table.drop(columns=["death01", "os_days", "os_event"])

    categorical, continuous = infer_column_types(inputs)

    assert continuous == ["age_at_initial_pathologic"]
    for column in ["site", "gender", "race", "histological_type", "tumor_location"]:
        assert column in categorical


# ---------------------------------------------------------------------- encoder


def synthetic_rule(n: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target from continuous column 0 and categorical column 0; the other columns are noise."""
    rng = np.random.default_rng(0)
    x_cont = rng.normal(size=(n, 2)).astype(np.float32)
    x_cat = np.stack([rng.integers(2, 5, n), rng.integers(2, 6, n)], axis=1)
    y = 1.5 * x_cont[:, 0] + 2.0 * (x_cat[:, 0] == 3) - 1.0 * (x_cat[:, 0] == 4)
    return torch.from_numpy(x_cont), torch.from_numpy(x_cat), torch.from_numpy(y.astype(np.float32))


@pytest.fixture(scope="module", params=BACKBONES)
def trained(request: pytest.FixtureRequest) -> dict:
    """An encoder and a linear head trained for 300 full-batch steps on the synthetic rule."""
    x_cont, x_cat, y = synthetic_rule()
    torch.manual_seed(0)
    encoder = small_encoder(request.param)
    head = torch.nn.Linear(encoder.embedding_dim, 1)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=5e-3)
    losses = []
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(head(encoder(x_cont, x_cat)).squeeze(1), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {
        "backbone": request.param,
        "encoder": encoder.eval(),
        "head": head.eval(),
        "losses": losses,
    }


@pytest.mark.parametrize("backbone", BACKBONES)
def test_encoder_output_shape(backbone: str) -> None:
    x_cont, x_cat, _ = synthetic_rule(7)

    embedding = small_encoder(backbone)(x_cont, x_cat)

    assert embedding.shape == (7, 8)
    assert embedding.dtype == torch.float32


@pytest.mark.parametrize("backbone", BACKBONES)
def test_encoder_gradients_flow(backbone: str) -> None:
    x_cont, x_cat, _ = synthetic_rule(16)
    x_cont = x_cont.clone().requires_grad_(True)
    encoder = small_encoder(backbone)

    encoder(x_cont, x_cat).pow(2).sum().backward()

    assert x_cont.grad.abs().sum() > 0
    for j, layer in enumerate(encoder.embedding_layer.cat_embedding_layers):
        table = layer.embed.weight if hasattr(layer, "embed") else layer.weight
        assert table.grad.abs().sum() > 0, f"no gradient reaches categorical column {j}"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_embedded_equals_forward(backbone: str) -> None:
    x_cont, x_cat, _ = synthetic_rule(9)
    encoder = small_encoder(backbone).eval()

    with torch.no_grad():
        direct = encoder(x_cont, x_cat)
        x_cont_embedded, cat_embeddings = encoder.embed_inputs(x_cont, x_cat)
        split = encoder.forward_embedded(x_cont_embedded, cat_embeddings)

    assert cat_embeddings.shape == (9, 2, encoder.category_embedding_dim)
    assert x_cont_embedded is x_cont
    assert torch.equal(split, direct)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize(("n_continuous", "cardinalities"), [(0, (5, 6)), (2, ())])
def test_encoder_single_kind_of_column(
    backbone: str, n_continuous: int, cardinalities: tuple[int, ...]
) -> None:
    x_cont, x_cat, _ = synthetic_rule(4)
    x_cont, x_cat = x_cont[:, :n_continuous], x_cat[:, : len(cardinalities)]
    encoder = small_encoder(backbone, n_continuous=n_continuous, cardinalities=cardinalities).eval()

    with torch.no_grad():
        direct = encoder(x_cont, x_cat)
        split = encoder.forward_embedded(*encoder.embed_inputs(x_cont, x_cat))

    assert direct.shape == (4, 8)
    assert torch.equal(split, direct)


def test_encoder_learns_synthetic_rule(trained: dict) -> None:
    losses = trained["losses"]

    assert losses[-1] < 0.05 * losses[0], (
        f"{trained['backbone']}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )


def test_integrated_gradients_per_column(trained: dict) -> None:
    encoder, head = trained["encoder"], trained["head"]
    x_cont, x_cat, _ = synthetic_rule(20)

    def score(continuous: torch.Tensor, cat_embeddings: torch.Tensor) -> torch.Tensor:
        return head(encoder.forward_embedded(continuous, cat_embeddings)).squeeze(1)

    inputs = tuple(t.detach() for t in encoder.embed_inputs(x_cont, x_cat))
    baselines = tuple(
        t.detach() for t in encoder.embed_inputs(torch.zeros_like(x_cont), torch.zeros_like(x_cat))
    )
    (cont_attr, cat_attr), delta = IntegratedGradients(score).attribute(
        inputs, baselines=baselines, n_steps=32, return_convergence_delta=True
    )
    per_column = cat_attr.sum(dim=2)  # (n, n_categorical): one score per categorical column

    assert cont_attr.shape == (20, 2)
    assert per_column.shape == (20, 2)
    assert per_column[:, 0].abs().sum() > 0
    assert per_column[:, 0].abs().mean() > per_column[:, 1].abs().mean()
    assert cont_attr[:, 0].abs().mean() > cont_attr[:, 1].abs().mean()
    assert delta.abs().max() < 0.1


@pytest.mark.parametrize("backbone", ["CategoryEmbedding", "GANDALF"])
def test_unknown_code_embeds_to_zero(backbone: str) -> None:
    encoder = small_encoder(backbone)

    _, cat_embeddings = encoder.embed_inputs(
        torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.int64)
    )

    assert torch.equal(cat_embeddings, torch.zeros_like(cat_embeddings))


def test_default_category_width_rule() -> None:
    encoder = ClinicalEncoder(n_continuous=1, categorical_cardinalities=[4, 9])

    assert encoder.category_embedding_dim == 5


def test_transformer_token_width_option() -> None:
    encoder = ClinicalEncoder(
        n_continuous=1,
        categorical_cardinalities=[4],
        backbone="FTTransformer",
        category_embedding_dim=8,
        num_heads=2,
        num_attn_blocks=1,
    )
    _, cat_embeddings = encoder.embed_inputs(torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.int64))

    assert encoder.category_embedding_dim == 8
    assert cat_embeddings.shape == (2, 1, 8)
    with pytest.raises(ConfigError, match="both set the FTTransformer token width"):
        ClinicalEncoder(
            n_continuous=1,
            categorical_cardinalities=[4],
            backbone="FTTransformer",
            category_embedding_dim=8,
            input_embed_dim=16,
        )


@pytest.mark.parametrize("backbone", BACKBONES)
def test_same_seed_same_weights(backbone: str) -> None:
    torch_state, python_state = torch.random.get_rng_state(), random.getstate()

    first = small_encoder(backbone).state_dict()
    second = small_encoder(backbone).state_dict()

    assert all(torch.equal(first[key], second[key]) for key in first)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert random.getstate() == python_state


@pytest.mark.parametrize("backbone", BACKBONES)
def test_config_rebuilds_encoder(backbone: str) -> None:
    encoder = small_encoder(backbone)
    config = json.loads(json.dumps(encoder.get_config()))

    rebuilt = ClinicalEncoder(**config)
    missing, unexpected = rebuilt.load_state_dict(encoder.state_dict())

    assert missing == []
    assert unexpected == []


def test_float_codes_rejected() -> None:
    encoder = small_encoder("CategoryEmbedding")

    with pytest.raises(
        DataError, match=r"integer category codes, got dtype torch.float32.*embed_inputs"
    ):
        encoder(torch.zeros(2, 2), torch.zeros(2, 2))


def test_code_out_of_range_rejected() -> None:
    encoder = small_encoder("CategoryEmbedding")
    x_cat = torch.tensor([[2, 2], [2, 6]])

    with pytest.raises(DataError, match=r"column 1 has code 6 in row 1, outside 0..5"):
        encoder(torch.zeros(2, 2), x_cat)


def test_wrong_column_count_rejected() -> None:
    encoder = small_encoder("CategoryEmbedding")

    with pytest.raises(DataError, match=r"x_cont must have shape \(n, 2\), got \(2, 3\)"):
        encoder(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.int64))


def test_unknown_backbone_suggests_closest() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'FTTransformer'"):
        ClinicalEncoder(n_continuous=1, categorical_cardinalities=[3], backbone="FTTransformr")


def test_unknown_option_suggests_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'layer'.*Did you mean 'layers'"):
        ClinicalEncoder(n_continuous=1, categorical_cardinalities=[3], layer="8-8")


def test_managed_option_rejected() -> None:
    with pytest.raises(
        ConfigError, match=r"'embedding_dims' cannot be set.*category_embedding_dim"
    ):
        ClinicalEncoder(n_continuous=1, categorical_cardinalities=[3], embedding_dims=[[3, 2]])


def test_invalid_library_option_value() -> None:
    with pytest.raises(ConfigError, match="initialization"):
        ClinicalEncoder(n_continuous=1, categorical_cardinalities=[3], initialization="zeros")
