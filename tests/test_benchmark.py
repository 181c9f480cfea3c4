"""`fusion benchmark`: strategies, leaderboard, paired tests, robustness, resume and plug-ins."""

import json
import math
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from scipy import stats

from fusion import ConfigError, load_config
from fusion._task import Task
from fusion.benchmark import Strategy, imaging_statistics, run_benchmark
from fusion.cli import cli
from fusion.datasets import make_demo_cohort
from fusion.evaluation import compute_metrics
from fusion.strategies._joint import GatedFusion, LowRankFusion
from fusion.strategies._late import GatingHead
from fusion.strategies._linear import PenalizedLinearModel

MODALITIES = ["clinical", "expression"]


class HalfClinicalAge(Strategy):
    """A user strategy: minus the first clinical feature (age), NaN without clinical data."""

    name = "custom:age"
    family = "custom"

    def fit(self, fold, availability):
        self.column_ = fold.features("train", availability, availability, ["clinical"]).columns[0]
        self.train_availability_ = availability

    def predict(self, fold, availability):
        features = fold.features("test", self.train_availability_, availability, ["clinical"])
        scores = -features[self.column_].to_numpy(float)
        scores[~availability.loc[fold.test_ids, "clinical"].to_numpy(bool)] = np.nan
        return scores


def _write_config(root, name="bench", **benchmark):
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["name"] = name
    config["cache_dir"] = str(root / "cache")
    config["evaluation"] = {"outer_folds": 3, "inner_folds": 2}
    config["tuning"] = {"n_trials": 3, "inner_folds": 2, "epochs": 30}
    config["benchmark"] = {"missing_fractions": [0.5], "late_epochs": 40, "joint": {"epochs": 5}, **benchmark}
    del config["modalities"]["mri"]
    for modality in config["modalities"].values():
        modality["training"] = {"epochs": 5, "batch_size": 16, "learning_rate": 0.01, "weight_decay": 0.0001}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark") / "cohort"
    return make_demo_cohort(root, task="binary", n_subjects=48, volume_shape=(12, 12, 8), n_genes=30,
                            n_signal_genes=5, seed=5)


@pytest.fixture(scope="module")
def finished(demo):
    config = load_config(_write_config(demo.root))
    return run_benchmark(config, demo.root / "runs" / "bench", strategies=[HalfClinicalAge()])


def _outputs(result, fold, modality):
    data = np.load(result.run_dir / "folds" / f"repeat0-fold{fold}" / f"outputs_{modality}.npz")
    return pd.Series(data["test_scores"][:, 0], index=data["test_ids"].astype(str))


def test_benchmark_writes_every_artifact(finished):
    names = {p.name for p in finished.run_dir.iterdir()}
    expected = {"config.yaml", "splits.csv", "leaderboard.csv", "comparisons.csv", "robustness.csv",
                "benchmark.json", "predictions.csv", "fold_metrics.csv", "report.html", "benchmark.log",
                "optuna.db", "timings.json"}
    assert expected <= names
    report = (finished.run_dir / "report.html").read_text()
    assert "Nadeau-Bengio corrected resampled t-test" in report
    assert report.count("data:image/png;base64") == 2


def test_leaderboard_lists_every_family(finished):
    board = finished.leaderboard
    assert len(board) == 2 + 1 + 4 + 5 + 3 + 1
    assert set(board["family"]) == {"unimodal", "early", "intermediate", "late", "linear", "custom"}
    assert {"late:mean", "late:weighted_mean", "late:stacking", "late:tuned", "late:gating"} <= set(board["strategy"])
    assert {"intermediate:concat", "intermediate:gated", "intermediate:attention",
            "intermediate:low_rank"} <= set(board["strategy"])
    assert {"linear:clinical", "linear:expression", "linear:all"} <= set(board["strategy"])
    assert list(board["rank"]) == list(range(1, len(board) + 1))
    means = board["auroc_mean"].dropna().to_numpy()
    assert np.all(np.diff(means) <= 0)
    assert (board["n_folds"] == 3).all()
    assert (board["fit_seconds"] >= 0).all()


def test_leaderboard_means_match_fold_metrics(finished):
    folds = pd.read_csv(finished.run_dir / "fold_metrics.csv")
    full = folds[folds["scenario"] == "full"]
    board = finished.leaderboard.set_index("strategy")
    for strategy, part in full.groupby("strategy"):
        values = part["auroc"].dropna().to_numpy()
        assert board.loc[strategy, "auroc_mean"] == pytest.approx(values.mean())
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
        assert board.loc[strategy, "auroc_ci_low"] == pytest.approx(max(values.mean() - half, 0.0))


def test_unimodal_strategy_uses_cached_encoder(finished, demo):
    predictions = pd.read_csv(finished.run_dir / "predictions.csv", dtype={"subject_id": str})
    for fold in range(3):
        cached = _outputs(finished, fold, "expression")
        rows = predictions[(predictions["strategy"] == "unimodal:expression") & (predictions["fold"] == fold)
                           & (predictions["scenario"] == "full")].set_index("subject_id")
        assert rows.loc[cached.index, "score"].to_numpy() == pytest.approx(cached.to_numpy(), abs=1e-6)
        assert rows.drop(index=cached.index)["score"].isna().all()


def test_late_mean_is_mean_of_present_scores(finished):
    predictions = pd.read_csv(finished.run_dir / "predictions.csv", dtype={"subject_id": str})
    rows = predictions[(predictions["strategy"] == "late:mean") & (predictions["scenario"] == "full")
                       & (predictions["fold"] == 0)].set_index("subject_id")
    scores = pd.concat([_outputs(finished, 0, m) for m in MODALITIES], axis=1).reindex(rows.index)
    expected = scores.mean(axis=1, skipna=True).fillna(0.0)
    assert rows["score"].to_numpy() == pytest.approx(expected.to_numpy(), abs=1e-5)


def test_paired_test_is_nadeau_bengio(finished):
    folds = pd.read_csv(finished.run_dir / "fold_metrics.csv")
    splits = pd.read_csv(finished.run_dir / "splits.csv")
    comparisons = pd.read_csv(finished.run_dir / "comparisons.csv")
    assert set(comparisons["test"]) == {"Nadeau-Bengio corrected resampled t-test"}
    assert set(comparisons["reference_kind"]) == {"best", "best unimodal"}
    best = finished.leaderboard.iloc[0]["strategy"]
    assert (comparisons[comparisons["reference_kind"] == "best"]["reference"] == best).all()

    row = comparisons[(comparisons["reference_kind"] == "best") & (comparisons["strategy"] == "late:mean")].iloc[0]
    full = folds[folds["scenario"] == "full"].pivot(index="fold", columns="strategy", values="auroc")
    diffs = (full["late:mean"] - full[best]).to_numpy()
    n_test = splits.groupby("fold").size().mean()
    n_train = len(splits) - n_test
    t = diffs.mean() / math.sqrt((1 / 3 + n_test / n_train) * diffs.var(ddof=1))
    assert row["t"] == pytest.approx(t)
    assert row["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), df=2))


def test_robustness_reports_unhandled_modalities(finished):
    table = finished.robustness.set_index(["strategy", "scenario"])
    for modality in MODALITIES:
        own = table.loc[(f"unimodal:{modality}", f"without:{modality}")]
        assert own["coverage"] == 0.0
        assert not own["handled"]
        assert table.loc[(f"linear:{modality}", f"without:{modality}"), "handled"] == False
        for strategy in ("late:mean", "late:tuned", "late:gating", "intermediate:low_rank", "early:mlp", "linear:all"):
            entry = table.loc[(strategy, f"without:{modality}")]
            assert entry["handled"]
            assert entry["coverage"] == 1.0
    assert not table.loc[("unimodal:clinical", "missing:0.5"), "handled"]
    assert table.loc[("late:stacking", "missing:0.5"), "fraction"] == 0.5
    assert table.loc[("custom:age", "without:clinical"), "coverage"] == 0.0


def test_test_time_removal_changes_late_predictions(finished):
    predictions = pd.read_csv(finished.run_dir / "predictions.csv", dtype={"subject_id": str})
    late = predictions[predictions["strategy"] == "late:mean"]
    full = late[late["scenario"] == "full"].set_index(["fold", "subject_id"])["score"]
    without = late[late["scenario"] == "without:expression"].set_index(["fold", "subject_id"])["score"]
    cached = pd.concat([_outputs(finished, f, "clinical") for f in range(3)])
    assert without.droplevel(0).loc[cached.index].to_numpy() == pytest.approx(cached.to_numpy(), abs=1e-5)
    assert not np.allclose(full.to_numpy(), without.loc[full.index].to_numpy())


def test_custom_strategy_scores_by_hand(finished, demo):
    folds = pd.read_csv(finished.run_dir / "fold_metrics.csv")
    predictions = pd.read_csv(finished.run_dir / "predictions.csv", dtype={"subject_id": str})
    config = load_config(demo.root / "bench.yaml")
    clinical = pd.read_csv(demo.root / "clinical.csv", dtype={"subject_id": str}).set_index("subject_id")
    rows = predictions[(predictions["strategy"] == "custom:age") & (predictions["scenario"] == "full")]
    for fold, part in rows.groupby("fold"):
        part = part.set_index("subject_id")
        # Minus the standardised first continuous column orders subjects as minus that column.
        raw = clinical.loc[part.index, config.modalities["clinical"].continuous[0]]
        measured = raw.notna()
        assert stats.spearmanr(part.loc[measured, "score"], -raw[measured]).statistic == pytest.approx(1.0)
        y = clinical.loc[part.index, "response"]
        expected = compute_metrics(Task("binary"), pd.DataFrame({"y": (y == y.max()).astype(int)}), part["score"].to_numpy())
        value = folds[(folds["strategy"] == "custom:age") & (folds["scenario"] == "full") & (folds["fold"] == fold)]
        assert value["auroc"].iloc[0] == pytest.approx(expected["auroc"])


def test_resume_reuses_finished_strategies(finished, demo):
    config = load_config(demo.root / "bench.yaml")
    record = finished.run_dir / "folds" / "repeat0-fold1" / "strategies" / "intermediate_gated.json"
    before = record.stat().st_mtime_ns
    again = run_benchmark(config, finished.run_dir, resume=True, strategies=[HalfClinicalAge()], report=False)
    assert record.stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(again.leaderboard, finished.leaderboard)


def test_plugin_from_config_and_cli(finished, demo, tmp_path, monkeypatch):
    module = tmp_path / "my_strategies.py"
    module.write_text(textwrap.dedent('''
        import numpy as np
        from fusion.benchmark import Strategy

        class Constant(Strategy):
            name = "custom:constant"

            def fit(self, fold, availability):
                self.value_ = float(fold.train_target["y"].mean())

            def predict(self, fold, availability):
                return np.full(len(fold.test_ids), self.value_)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _write_config(demo.root, name="plugin", strategies=["late:mean", "linear", "my_strategies:Constant"])
    # A benchmark directory lends its cached encoder outputs like a run directory does.
    result = CliRunner().invoke(cli, ["benchmark", str(path), "--out", str(tmp_path / "out"), "--no-report",
                                      "--from-run", str(finished.run_dir)])
    assert result.exit_code == 0, result.output
    assert "benchmark directory:" in result.output
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert set(board["strategy"]) == {"late:mean", "linear:clinical", "linear:expression", "linear:all",
                                      "custom:constant"}
    constant = board.set_index("strategy").loc["custom:constant"]
    assert constant["auroc_mean"] == pytest.approx(0.5)  # every pair tied
    assert constant["coverage"] == 1.0


@pytest.mark.parametrize("entry, message", [
    ("late:average", "unknown strategy 'late:average'"),
    ("no_such_module:Thing", "cannot import module 'no_such_module'"),
    ("json:dumps", "is not a subclass of fusion.benchmark.Strategy"),
])
def test_bad_strategy_names_are_config_errors(demo, entry, message, tmp_path):
    config = load_config(_write_config(demo.root, name="bad", strategies=[entry]))
    with pytest.raises(ConfigError, match=message):
        run_benchmark(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_benchmark_config_is_validated(demo, tmp_path):
    path = _write_config(demo.root, name="typo")
    data = yaml.safe_load(path.read_text())
    data["benchmark"]["joint"]["epoch"] = 3
    data["benchmark"]["missing_fractions"] = [1.5]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "did you mean 'epochs'?" in str(error.value)
    assert "benchmark.missing_fractions.0" in str(error.value)


def test_from_run_rejects_other_encoders(finished, demo, tmp_path):
    path = _write_config(demo.root, name="other")
    data = yaml.safe_load(path.read_text())
    data["seed"] = 11
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"differs in \['seed'\]"):
        run_benchmark(load_config(path), tmp_path / "out", from_run=finished.run_dir)


def test_from_run_copies_cached_outputs(finished, demo, tmp_path):
    config = load_config(demo.root / "bench.yaml")
    config.benchmark.strategies = ["unimodal"]
    result = run_benchmark(config, tmp_path / "copy", from_run=finished.run_dir, report=False)
    for fold in range(3):
        copied = np.load(tmp_path / "copy" / "folds" / f"repeat0-fold{fold}" / "outputs_clinical.npz")
        original = np.load(finished.run_dir / "folds" / f"repeat0-fold{fold}" / "outputs_clinical.npz")
        assert np.array_equal(copied["test_scores"], original["test_scores"])
    board = result.leaderboard.set_index("strategy")
    expected = finished.leaderboard.set_index("strategy")
    assert board.loc["unimodal:clinical", "auroc_mean"] == pytest.approx(expected.loc["unimodal:clinical", "auroc_mean"])
    info = json.loads((tmp_path / "copy" / "folds" / "repeat0-fold0" / "encoders.json").read_text())
    assert info["clinical"]["seconds"] > 0  # recorded by the benchmark it was copied from


# Units: fusion layers, gating head, linear models, imaging statistics


@pytest.mark.parametrize("layer", [GatedFusion, LowRankFusion, GatingHead])
def test_absent_modality_input_is_ignored(layer):
    torch.manual_seed(0)
    head = layer([3, 2], 1, hidden=4).eval()
    embeddings = [torch.randn(5, 3), torch.randn(5, 2)]
    scores = [torch.randn(5, 1), torch.randn(5, 1)]
    mask = torch.tensor([[1.0, 0.0]] * 5)
    changed = [embeddings[0], torch.randn(5, 2) * 10]
    changed_scores = [scores[0], torch.randn(5, 1) * 10]
    first = head(embeddings, scores, mask)
    assert first.shape == (5, 1)
    assert torch.allclose(first, head(changed, changed_scores, mask))


def test_gating_weights_cover_present_modalities():
    torch.manual_seed(0)
    head = GatingHead([3, 2, 4], 1, hidden=4).eval()
    embeddings = [torch.randn(3, 3), torch.randn(3, 2), torch.randn(3, 4)]
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    weights = head.gate_weights(embeddings, mask)
    assert weights[0].sum().item() == pytest.approx(1.0)
    assert weights[1, 1].item() == 0.0
    assert weights[1].sum().item() == pytest.approx(1.0)
    assert weights[2].sum().item() == 0.0
    output = head(embeddings, [torch.ones(3, 1)] * 3, mask)
    assert output[2].item() == pytest.approx(head.bias.item())


def test_linear_models_recover_signal(rng):
    features = rng.normal(size=(120, 4))
    risk = features[:, 0] - 0.5 * features[:, 1]
    binary = pd.DataFrame({"y": (risk + 0.3 * rng.normal(size=120) > 0).astype(int)})
    scores = PenalizedLinearModel(Task("binary"), seed=0).fit(features[:80], binary.iloc[:80]).predict(features[80:])
    assert compute_metrics(Task("binary"), binary.iloc[80:], scores)["auroc"] > 0.9

    time = rng.exponential(np.exp(-risk))
    survival = pd.DataFrame({"time": time, "event": rng.random(120) < 0.8})
    model = PenalizedLinearModel(Task("survival"), seed=0).fit(features[:80], survival.iloc[:80])
    assert compute_metrics(Task("survival"), survival.iloc[80:], model.predict(features[80:]))["c_index"] > 0.7
    assert model.n_parameters == 4


def test_imaging_statistics_by_hand():
    volume = np.zeros((2, 2, 2, 2), np.float32)
    volume[0, 0, 0, :] = [1.0, 3.0]
    volume[1, 0, 0, :] = [2.0, 2.0]
    table = imaging_statistics({"s1": (volume, np.array([1.0, 0.0], np.float32))}, ["flair", "t1"])
    row = table.loc["s1"]
    assert row["foreground_fraction"] == pytest.approx(2 / 8)
    assert row["flair:mean"] == pytest.approx(2.0)
    assert row["flair:sd"] == pytest.approx(1.0)
    assert row["flair:p50"] == pytest.approx(2.0)
    assert math.isnan(row["t1:mean"])  # not acquired


def test_joint_model_with_imaging_branch(rng):
    from fusion.encoders import ImagingEncoder, OmicsEncoder
    from fusion.strategies._joint import ModalityBranch, fit_joint, predict_joint

    ids = pd.Index([f"S{i:02d}" for i in range(40)])
    signal = rng.normal(size=40)
    target = pd.DataFrame({"y": (signal > 0).astype(int)}, index=ids)
    omics = pd.DataFrame(np.c_[signal, rng.normal(size=(40, 3))].astype(np.float32), index=ids)
    volumes = {s: rng.normal(size=(1, 6, 6, 6)).astype(np.float32) for s in ids}
    availability = pd.DataFrame({"omics": True, "mri": np.arange(40) % 4 != 0}, index=ids)

    def branches():
        torch.manual_seed(0)
        return {
            "omics": ModalityBranch(OmicsEncoder(4, hidden_dims=[8], embedding_dim=4, dropout=0.0),
                                    lambda s: (torch.as_tensor(omics.loc[s].to_numpy()),), "S01"),
            "mri": ModalityBranch(
                ImagingEncoder(1, network="resnet", layers=[1, 1, 1, 1], widths=[2, 2, 4, 4], embedding_dim=4,
                               dropout=0.0, stem_stride=1),
                lambda s: (torch.as_tensor(np.stack([volumes[i] for i in s])), torch.ones(len(s), 1)),
                "S01"),
        }

    parts = branches()
    model = fit_joint(parts, "concat", ids, availability, target, Task("binary"), epochs=8, batch_size=16,
                      learning_rate=0.01, weight_decay=0.0, modality_dropout=0.2, hidden=4, rank=2, seed=0)
    scores = predict_joint(model, parts, ids, availability)
    assert scores.shape == (40,)
    assert compute_metrics(Task("binary"), target, scores)["auroc"] > 0.9

    # Subjects without MRI get the same score whatever their volume holds.
    without = ids[~availability["mri"]]
    for subject in without:
        volumes[subject] = volumes[subject] * 100
    again = predict_joint(model, parts, ids, availability)
    rows = ids.get_indexer(without)
    assert again[rows] == pytest.approx(scores[rows])


def test_benchmark_help_lists_options():
    result = CliRunner().invoke(cli, ["benchmark", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--resume", "--overwrite", "--from-run", "--no-report"):
        assert option in result.output


def test_encoder_time_counts_encoders_read(finished):
    seconds = {name: 0.0 for name in MODALITIES}
    for fold in range(3):
        info = json.loads((finished.run_dir / "folds" / f"repeat0-fold{fold}" / "encoders.json").read_text())
        for name in MODALITIES:
            seconds[name] += info[name]["seconds"]
    board = finished.leaderboard.set_index("strategy")
    assert board.loc["unimodal:clinical", "encoder_seconds"] == pytest.approx(seconds["clinical"])
    assert board.loc["late:stacking", "encoder_seconds"] == pytest.approx(sum(seconds.values()))
    assert board.loc["linear:all", "encoder_seconds"] == 0.0
    row = board.loc["late:stacking"]
    assert row["total_seconds"] == pytest.approx(row["fit_seconds"] + row["encoder_seconds"])
