"""Small models and data shared by the tests."""

import keras
import numpy as np
from keras import layers, ops


def regression_data(n=64, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y_a = (x[:, :1] * 2.0 + 0.1 * rng.normal(size=(n, 1))).astype("float32")
    y_b = np.stack([x[:, 1] - x[:, 2], 10.0 * x[:, 3]], axis=1).astype("float32")
    return x, {"a": y_a, "b": y_b}


def two_head(model_class, d=6, dict_outputs=True, seed=0):
    """A shared trunk with head `a` (1 unit) and head `b` (2 units)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((d,))
    h = layers.Dense(8, activation="tanh", name="trunk")(inputs)
    a = layers.Dense(1, name="a")(h)
    b = layers.Dense(2, name="b")(h)
    outputs = {"a": a, "b": b} if dict_outputs else [a, b]
    return model_class(inputs, outputs)


def network_weights(model):
    """The weights of the network's layers (without a balancer's state)."""
    return [w for layer in model.layers for w in layer.get_weights()]


def copy_weights(source, target):
    weights = network_weights(source)
    for layer in target.layers:
        n = len(layer.weights)
        layer.set_weights(weights[:n])
        weights = weights[n:]
    assert not weights
    return target


def max_weight_diff(m1, m2):
    w1, w2 = network_weights(m1), network_weights(m2)
    assert len(w1) == len(w2)
    return max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2))


@keras.saving.register_keras_serializable(package="multiloss_tests")
class AddsLoss(layers.Layer):
    """Adds `rate * mean(x**2)` with add_loss on every call."""

    def __init__(self, rate=0.01, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, x):
        self.add_loss(self.rate * ops.mean(ops.square(x)))
        return x

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}
