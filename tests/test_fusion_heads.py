"""Late-fusion heads: the absent-modality path, hand-computed averages, Shapley efficiency."""

import numpy as np
import pandas as pd
import pytest
import torch

from fusion import Task
from fusion.explain import modality_shapley
from fusion.strategies import (
    HEADS,
    FusionInputs,
    ModalityOutputs,
    fit_head,
    make_head,
    predict_head,
    stack_outputs,
)


def _inputs(n=30, dims=(4, 3, 5), seed=0, missing=0.3):
    generator = torch.Generator().manual_seed(seed)
    ids = pd.Index([f"S{i:03d}" for i in range(n)])
    mask = (torch.rand(n, len(dims), generator=generator) > missing).float()
    embeddings = [torch.randn(n, d, generator=generator) * mask[:, [m]] for m, d in enumerate(dims)]
    scores = [e[:, :1] * 0.5 for e in embeddings]
    return FusionInputs(ids, [f"m{m}" for m in range(len(dims))], embeddings, scores, mask)


def test_weighted_average_hand_computed():
    head = make_head("weighted_average", [1, 1], 1, {})
    with torch.no_grad():
        head.logits.copy_(torch.log(torch.tensor([1.0, 3.0])))
        head.bias.fill_(0.5)
    scores = [torch.tensor([[2.0], [2.0], [2.0]]), torch.tensor([[6.0], [6.0], [6.0]])]
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    out = head([torch.zeros(3, 1)] * 2, scores, mask)[:, 0]
    assert out[0].item() == pytest.approx((0.25 * 2 + 0.75 * 6) + 0.5)
    assert out[1].item() == pytest.approx(2 + 0.5)   # weights renormalised over present
    assert out[2].item() == pytest.approx(0.5)       # nothing present: bias


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_absent_values_are_ignored(kind):
    # Whatever sits in an absent modality's rows must not change the output.
    inputs = _inputs()
    head = make_head(kind, [e.shape[1] for e in inputs.embeddings], 1, {"hidden": 8})
    head.eval()
    noisy = [e + 100 * (1 - inputs.mask[:, [m]]) for m, e in enumerate(inputs.embeddings)]
    noisy_scores = [s - 50 * (1 - inputs.mask[:, [m]]) for m, s in enumerate(inputs.scores)]
    with torch.no_grad():
        clean = head(inputs.embeddings, inputs.scores, inputs.mask)
        dirty = head(noisy, noisy_scores, inputs.mask)
    torch.testing.assert_close(clean, dirty)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_shapley_sums_to_prediction_minus_baseline(kind):
    inputs = _inputs()
    head = make_head(kind, [e.shape[1] for e in inputs.embeddings], 1, {"hidden": 8})
    frame = modality_shapley(head, inputs)
    total = frame[inputs.modalities].sum(axis=1)
    np.testing.assert_allclose(total, frame["prediction"] - frame["baseline"], atol=1e-5)
    assert head.training  # the previous mode is restored after attribution
    head.eval()
    with torch.no_grad():
        expected = head(inputs.embeddings, inputs.scores, inputs.mask)[:, 0].numpy()
        empty = head(inputs.embeddings, inputs.scores, torch.zeros_like(inputs.mask))[:, 0].numpy()
    np.testing.assert_allclose(frame["prediction"], expected, atol=1e-6)
    np.testing.assert_allclose(frame["baseline"], empty, atol=1e-6)


def test_shapley_zero_for_missing_modality():
    inputs = _inputs(missing=0.5)
    head = make_head("mlp", [e.shape[1] for e in inputs.embeddings], 1, {"hidden": 8})
    frame = modality_shapley(head, inputs)
    absent = inputs.mask[:, 1].numpy() == 0
    assert absent.any()
    np.testing.assert_allclose(frame.loc[absent, "m1"], 0.0, atol=1e-7)


def test_shapley_of_additive_head_is_each_term():
    # For a stacking head the fused score is additive over modalities, so each Shapley value
    # is exactly that modality's term minus its missing constant.
    inputs = _inputs(dims=(2, 2))
    head = make_head("stacking", [2, 2], 1, {})
    with torch.no_grad():
        head.linears[0].weight.fill_(2.0)
        head.linears[1].weight.fill_(-1.0)
        head.missing.copy_(torch.tensor([[0.3], [0.1]]))
    frame = modality_shapley(head, inputs)
    for m, weight, constant in [(0, 2.0, 0.3), (1, -1.0, 0.1)]:
        present = inputs.mask[:, m].numpy()
        expected = present * (weight * inputs.scores[m][:, 0].numpy() - constant)
        np.testing.assert_allclose(frame[f"m{m}"], expected, atol=1e-6)


def test_fit_head_learns_informative_modality():
    generator = torch.Generator().manual_seed(1)
    n = 200
    signal = torch.randn(n, 1, generator=generator)
    noise = torch.randn(n, 1, generator=generator)
    y = (signal[:, 0] > 0).long()
    ids = pd.Index([f"S{i}" for i in range(n)])
    inputs = FusionInputs(ids, ["signal", "noise"], [signal, noise], [signal * 3, noise], torch.ones(n, 2))
    target = pd.DataFrame({"y": y.numpy()}, index=ids)
    params = {"head": "weighted_average", "learning_rate": 0.05, "weight_decay": 0.0, "modality_dropout": 0.0}
    head = fit_head(inputs, target, Task("binary"), params, epochs=200, seed=0)
    weights = head.modality_weights()
    assert weights[0] > 0.9
    accuracy = ((predict_head(head, inputs) > 0) == y.numpy().astype(bool)).mean()
    assert accuracy > 0.95


def test_fit_head_patience_stops_on_plateau(monkeypatch):
    import fusion.strategies._late as late

    losses = []
    original = late.task_loss

    def recording_loss(*args):
        loss = original(*args)
        losses.append(float(loss.detach()))
        return loss

    monkeypatch.setattr(late, "task_loss", recording_loss)
    inputs = _inputs(n=60, missing=0.0)
    target = pd.DataFrame({"y": (inputs.scores[0][:, 0] > 0).long().numpy()}, index=inputs.subject_ids)
    # A zero learning rate keeps the loss flat, so training stops after `patience` stale epochs.
    params = {"head": "stacking", "learning_rate": 0.0, "weight_decay": 0.0, "modality_dropout": 0.0}
    fit_head(inputs, target, Task("binary"), params, epochs=100, seed=0, patience=7)
    assert len(losses) == 8  # the first epoch sets the best loss, then 7 without improvement

    losses.clear()
    fit_head(inputs, target, Task("binary"), params, epochs=100, seed=0, patience=0)
    assert len(losses) == 100

    losses.clear()
    params["learning_rate"] = 0.05
    fit_head(inputs, target, Task("binary"), params, epochs=100, seed=0, patience=7)
    assert 8 < len(losses) <= 100
    assert min(losses) < losses[0]


def test_stack_outputs_aligns_by_id():
    ids = pd.Index(["a", "b", "c", "d"])
    out = ModalityOutputs(pd.Index(["d", "b"]), np.array([[4.0], [2.0]], np.float32), np.array([[40.0], [20.0]], np.float32))
    stacked = stack_outputs(ids, {"m": out}, ["m"], {"m": (1, 1)})
    assert stacked.mask[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert stacked.scores[0][:, 0].tolist() == [0.0, 20.0, 0.0, 40.0]


def test_align_embeddings_recovers_rotation():
    from fusion.strategies import align_embeddings

    rng = np.random.default_rng(0)
    source = rng.normal(size=(50, 4))
    rotation, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    target = source @ rotation * 2.0 + 3.0
    mapping = align_embeddings(source, target, ridge=1e-9)
    new = rng.normal(size=(5, 4))
    np.testing.assert_allclose(mapping(new), new @ rotation * 2.0 + 3.0, atol=1e-4)
