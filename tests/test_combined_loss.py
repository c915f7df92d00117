"""CombinedLoss: an ordinary Loss in keras.Model, one task per component in MultiLossModel."""

import keras
import numpy as np
import pytest
from keras import layers

import multiloss


def _classification_data(n=48, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    return x, keras.utils.to_categorical(labels, classes).astype("float32")


def _ce_focal(weights=None):
    return multiloss.CombinedLoss(
        {"ce": "categorical_crossentropy", "focal": keras.losses.CategoricalFocalCrossentropy(gamma=2.0)},
        weights=weights,
    )


def _np_ce(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(np.mean(-np.sum(y * np.log(p), axis=-1)))


def _np_focal(y, p, gamma=2.0, alpha=0.25):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(np.mean(np.sum(-alpha * y * (1 - p) ** gamma * np.log(p), axis=-1)))


def _classifier(cls, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    h = layers.Dense(8, activation="relu")(inputs)
    return cls(inputs, layers.Dense(3, activation="softmax", name="digit")(h))


def test_value_is_the_weighted_sum_of_components():
    x, y = _classification_data()
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3), size=len(y)).astype("float32")
    loss = _ce_focal({"focal": 0.5})
    expected = _np_ce(y, p) + 0.5 * _np_focal(y, p)
    assert float(loss(y, p)) == pytest.approx(expected, rel=1e-5)


def test_plain_keras_model_trains_on_it_and_saves(tmp_path):
    x, y = _classification_data()
    model = _classifier(keras.Model)
    model.compile("adam", loss=_ce_focal({"focal": 2.0}))
    model.fit(x, y, epochs=1, verbose=0)
    logs = model.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    p = model.predict(x, verbose=0)
    assert logs["loss"] == pytest.approx(_np_ce(y, p) + 2.0 * _np_focal(y, p), rel=1e-4)
    path = str(tmp_path / "plain.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    again = loaded.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    assert again["loss"] == pytest.approx(logs["loss"], rel=1e-6)


def test_config_round_trip_keeps_components_and_weights():
    loss = _ce_focal({"focal": 0.25})
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, multiloss.CombinedLoss)
    assert clone.weights == {"ce": 1.0, "focal": 0.25}
    y = np.eye(3, dtype="float32")[[0, 1, 2, 1]]
    p = np.full((4, 3), 1 / 3, dtype="float32")
    assert float(clone(y, p)) == pytest.approx(float(loss(y, p)), rel=1e-6)


def test_components_become_logged_weighted_tasks():
    x, y = _classification_data()
    model = _classifier(multiloss.MultiLossModel)
    model.compile("adam", loss=_ce_focal({"focal": 3.0}))
    assert model.task_names == ("ce", "focal")
    history = model.fit(x, y, epochs=1, verbose=0).history
    assert {"ce_loss", "focal_loss", "ce_weight", "focal_weight"} <= set(history)
    logs = model.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    p = model.predict(x, verbose=0)
    assert logs["ce_loss"] == pytest.approx(_np_ce(y, p), rel=1e-4)
    assert logs["focal_loss"] == pytest.approx(_np_focal(y, p), rel=1e-4)
    assert logs["focal_weight"] == pytest.approx(3.0)
    assert logs["loss"] == pytest.approx(_np_ce(y, p) + 3.0 * _np_focal(y, p), rel=1e-4)
    # Each component is weighted on its own: switching focal off leaves ce.
    model.balancer.assign({"focal": 0.0})
    logs = model.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    assert logs["loss"] == pytest.approx(_np_ce(y, p), rel=1e-4)


def test_component_tasks_carry_the_output_name_in_multi_output_models():
    x, y = _classification_data()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    h = layers.Dense(8, activation="relu")(inputs)
    model = multiloss.MultiLossModel(
        inputs, {"digit": layers.Dense(3, activation="softmax")(h), "size": layers.Dense(1)(h)}
    )
    model.compile(
        "adam",
        loss={"digit": _ce_focal({"focal": 2.0}), "size": "mse"},
        loss_weights={"digit": 0.5, "digit_ce": 4.0},
    )
    assert model.task_names == ("digit_ce", "digit_focal", "size")
    # Output weight times component weight, times a task's own weight.
    assert model.balancer.get_task_weights() == {"digit_ce": 2.0, "digit_focal": 1.0, "size": 1.0}
    history = model.fit(x, {"digit": y, "size": x[:, :1]}, epochs=1, verbose=0).history
    assert history["digit_focal_weight"][0] == pytest.approx(1.0)
