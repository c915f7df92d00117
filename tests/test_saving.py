"""A compiled MultiLossModel goes through .keras save/load and continues identically."""

import keras
import numpy as np
import pytest
from keras import layers

import multiloss
from helpers import AddsLoss, max_weight_diff, network_weights


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype("float32")
    labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    y = {"digit": keras.utils.to_categorical(labels, 3).astype("float32"), "size": x[:, 2:3] * 3.0}
    return x, y


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    h = layers.Dense(8, activation="relu", kernel_regularizer="l2")(inputs)
    h = AddsLoss(0.05)(h)
    model = multiloss.MultiLossModel(
        inputs,
        {"digit": layers.Dense(3, activation="softmax")(h), "size": layers.Dense(1)(h)},
    )
    model.compile(
        keras.optimizers.Adam(0.01),
        loss={
            "digit": multiloss.CombinedLoss(
                {"ce": "categorical_crossentropy",
                 "focal": keras.losses.CategoricalFocalCrossentropy()},
                weights={"focal": 2.0},
            ),
            "size": "mse",
        },
        loss_weights={"size": 0.5, "added_loss": 3.0},
        balancer="static",
        metrics={"digit": ["accuracy"]},
    )
    return model


def test_save_load_keeps_tasks_weights_optimizer_and_continues_identically(tmp_path):
    x, y = _data()
    model = _model()
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    model.balancer.assign({"digit_ce": 0.25})  # a weight set during training survives
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert isinstance(loaded, multiloss.MultiLossModel)
    assert loaded.task_names == ("digit_ce", "digit_focal", "size", "added_loss")
    assert loaded.balancer.get_task_weights() == {
        "digit_ce": 0.25, "digit_focal": 2.0, "size": 0.5, "added_loss": 3.0
    }
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 3
    for a, b in zip(network_weights(model), network_weights(loaded)):
        np.testing.assert_array_equal(a, b)

    h1 = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    h2 = loaded.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    assert max_weight_diff(model, loaded) < 1e-6
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-6)
    assert h2["digit_ce_weight"] == pytest.approx([0.25, 0.25])


def test_weights_file_round_trip_restores_the_task_weights(tmp_path):
    x, y = _data()
    model = _model()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.balancer.assign({"size": 7.0})
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    other = _model()
    other.fit(x, y, batch_size=16, epochs=1, verbose=0)  # builds the optimizer
    other.load_weights(path)
    assert other.balancer.get_task_weights()["size"] == 7.0
    assert max_weight_diff(model, other) == 0.0
