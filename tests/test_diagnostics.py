"""multiloss.diagnose against numpy on Keras's own task gradients."""

import numpy as np
import pytest

import multiloss
from helpers import regression_data, two_head
from test_engine import _trunk, keras_task_gradients

ML = multiloss.MultiLossModel


def test_diagnose_equals_numpy_and_names_the_dominating_task(capsys):
    x, y = regression_data(n=32)
    y["b"] = -30.0 * y["b"]  # task b: a far larger, conflicting gradient
    model = two_head(ML, seed=3)
    model.compile("sgd", loss={"a": "mse", "b": "mse"})
    batches = [(x[:16], {k: v[:16] for k, v in y.items()}), (x[16:], {k: v[16:] for k, v in y.items()})]
    norms, cosines, losses = [], [], []
    for bx, by in batches:
        grads = keras_task_gradients(model, bx, by)
        g1, g2 = _trunk(grads["a"]), _trunk(grads["b"])
        norms.append([np.linalg.norm(g1), np.linalg.norm(g2)])
        cosines.append(np.dot(g1, g2) / (norms[-1][0] * norms[-1][1]))
        pred = model.predict(bx, verbose=0)
        losses.append([np.mean((pred["a"] - by["a"]) ** 2), np.mean((pred["b"] - by["b"]) ** 2)])
    with pytest.warns(UserWarning, match="'b' dominates the update"):
        report = multiloss.diagnose(model, (x, y), steps=2, batch_size=16)
    np.testing.assert_allclose(report.grad_norm, np.mean(norms, axis=0), rtol=1e-4)
    np.testing.assert_allclose(report.cosine[0, 1], np.mean(cosines), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(report.loss, np.mean(losses, axis=0), rtol=1e-4)
    assert report.grad_share.sum() == pytest.approx(1.0)
    assert report.grad_norm_ratio > 10
    assert any("conflict" in w for w in report.warnings) == (np.mean(cosines) < 0)
    printed = capsys.readouterr().out
    assert "grad share" in printed and "dominates" in printed


def test_diagnose_is_quiet_on_balanced_tasks():
    x, y = regression_data(n=32)
    y["b"] = y["b"] / np.abs(y["b"]).mean() * np.abs(y["a"]).mean()
    model = two_head(ML, seed=3)
    model.compile("sgd", loss={"a": "mse", "b": "mse"})
    report = multiloss.diagnose(model, (x, y), steps=2, batch_size=16, verbose=False)
    assert report.grad_norm_ratio < 10
    assert not any("dominates" in w for w in report.warnings)
