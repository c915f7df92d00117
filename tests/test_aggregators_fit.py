"""Every aggregator inside `fit`, on the active backend: a few training
steps of a two-head model with three tasks, finite weights and losses, the
solver's non-convergence count in the logs, and the state carried by the
model (so JAX's stateless step updates it)."""

import keras
import numpy as np
import pytest
from keras import layers

import multiloss
from multiloss import aggregators as A

ALIASES = [
    alias
    for alias in sorted(
        name.lower() for name in A.__all__
        if isinstance(getattr(A, name), type) and issubclass(getattr(A, name), A.Aggregator)
        and name != "Aggregator"
    )
]


def three_task_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    h = layers.Dense(6, activation="tanh", name="trunk")(inputs)
    h = layers.Dense(6, activation="tanh", name="trunk2")(h)
    outputs = {name: layers.Dense(1, name=name)(h) for name in ("a", "b", "c")}
    return multiloss.MultiLossModel(inputs, outputs)


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype("float32")
    y = {"a": x[:, :1] * 2.0, "b": -3.0 * x[:, :1] + x[:, 1:2], "c": np.sin(x[:, 2:3])}
    return x, {k: v.astype("float32") for k, v in y.items()}


@pytest.mark.parametrize("alias", ALIASES)
def test_every_aggregator_trains_inside_fit(alias):
    model = three_task_model()
    model.compile(keras.optimizers.SGD(0.05), loss={"a": "mse", "b": "mse", "c": "mse"},
                  balancer=alias)
    x, y = data()
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    for task in ("a", "b", "c"):
        values = np.asarray(history[f"{task}_weight"], dtype=np.float64)
        assert np.all(np.isfinite(values)), (task, values)
        assert np.all(np.isfinite(history[f"{task}_loss"]))
    for name in model.balancer.log_names:
        assert name in history, name
        assert history[name][-1] == 0.0, f"{name}: {history[name]}"
    state = [v for v in model.balancer.variables if v is not model.balancer.task_weights]
    for var in state:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(var))), var.path
    moving = {"gradnorm": ("loss_weights", 1.0), "gradvac": ("targets", 0.0),
              "nashmtl": ("step", 0.0), "dbmtl": ("buffer", 0.0)}
    if alias in moving:
        attribute, initial = moving[alias]
        value = keras.ops.convert_to_numpy(getattr(model.balancer, attribute))
        assert np.any(value != initial), "the state moves inside fit"
