"""Bad input fails at compile, names the offender, and changes nothing."""

import keras
import numpy as np
import pytest
from keras import layers, ops

import multiloss
from helpers import AddsLoss, regression_data, two_head

ML = multiloss.MultiLossModel


@pytest.fixture
def model():
    return two_head(ML)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss={"a": "mse", "c": "mse"}), r"\['c'\].*outputs are \['a', 'b'\]"),
        (dict(loss=["mse"]), r"1 entries for the model's 2 outputs \['a', 'b'\]"),
        (dict(loss="mse", loss_weights={"a": 1.0, "z": 2.0}), r"\['z'\].*valid names: \['a', 'b'\]"),
        (dict(loss="mse", loss_weights=[1.0, 2.0, 3.0]), r"3 entries.*\['a', 'b'\]"),
        (dict(loss="mse", loss_weights={"a": -1.0}), r"'a'.*>= 0"),
        (dict(loss="mse", loss_weights={"b": float("nan")}), r"'b'.*finite"),
        (dict(loss="mse", loss_weights=[1.0, float("inf")]), r"entry 1.*finite"),
        (dict(loss="mse", loss_weights={"a": "heavy"}), r"'a'.*number"),
        (dict(loss={"a": "mse", "b": "no_such_loss"}), r"output 'b'.*unknown loss"),
        (dict(loss={"a": keras.losses.MeanSquaredError(reduction=None), "b": "mse"}), r"'a'.*reduction=None"),
        (dict(loss="mse", balancer="no_such_balancer"), r"Unknown balancer 'no_such_balancer'; valid names: \[.*'static'"),
        (dict(loss=None), r"Nothing to train on"),
    ],
)
def test_compile_rejects(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.compile("sgd", **kwargs)
    assert not model.compiled


def test_a_failed_recompile_leaves_the_compiled_model_as_it_was(model):
    model.compile("sgd", loss="mse", loss_weights={"b": 2.0})
    balancer = model.balancer
    optimizer = model.optimizer
    with pytest.raises(ValueError, match="'c'"):
        model.compile("adam", loss={"a": "mse", "c": "mse"})
    assert model.balancer is balancer and model.optimizer is optimizer
    assert model.task_names == ("a", "b")
    assert balancer.get_task_weights() == {"a": 1.0, "b": 2.0}
    x, y = regression_data()
    model.fit(x, y, epochs=1, verbose=0)


class PerSampleLoss(keras.losses.Loss):
    """A loss whose __call__ skips the reduction: one value per sample."""

    def __call__(self, y_true, y_pred, sample_weight=None):
        return ops.mean(ops.square(y_true - y_pred), axis=-1)


def test_a_loss_that_returns_one_value_per_sample_is_named_at_compile(model):
    with pytest.raises(ValueError, match=r"task 'b' returns shape \(None,\)"):
        model.compile("sgd", loss={"a": "mse", "b": PerSampleLoss()})


def test_task_names_must_not_collide():
    inputs = keras.Input((4,))
    h = AddsLoss()(layers.Dense(3)(inputs))
    model = ML(inputs, {"added_loss": layers.Dense(1)(h), "b": layers.Dense(1)(h)})
    with pytest.raises(ValueError, match="Two tasks are named 'added_loss'"):
        model.compile("sgd", loss="mse")


def test_combined_loss_rejects_bad_components_and_weights():
    with pytest.raises(ValueError, match="non-empty dict"):
        multiloss.CombinedLoss({})
    with pytest.raises(ValueError, match=r"unknown component\(s\) \['fcal'\].*\['ce', 'focal'\]"):
        multiloss.CombinedLoss({"ce": "mse", "focal": "mae"}, weights={"fcal": 1.0})
    with pytest.raises(ValueError, match=r"'focal'.*>= 0"):
        multiloss.CombinedLoss({"ce": "mse", "focal": "mae"}, weights={"focal": -0.5})
    with pytest.raises(ValueError, match=r"component 'ce'.*unknown loss"):
        multiloss.CombinedLoss({"ce": "not_a_loss"})


def test_a_balancer_built_for_other_tasks_is_rejected(model):
    balancer = multiloss.weighting.Static()
    balancer.build((3,))
    with pytest.raises(ValueError, match=r"built for 3 tasks.*\['a', 'b'\]"):
        model.compile("sgd", loss="mse", balancer=balancer)


def test_single_output_model_with_one_loss_works(model):
    x, y = regression_data()
    inputs = keras.Input((6,))
    single = ML(inputs, layers.Dense(1, name="only")(inputs))
    single.compile("sgd", loss="mse", loss_weights=2.0)
    logs = single.evaluate(x, y["a"], return_dict=True, verbose=0)
    assert logs["loss"] == pytest.approx(2.0 * logs["only_loss"], rel=1e-6)
    pred = single.predict(x, verbose=0)
    assert logs["only_loss"] == pytest.approx(float(np.mean((pred - y["a"]) ** 2)), rel=1e-5)
