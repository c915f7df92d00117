"""compile(representation=...): balancing at a shared layer's output."""

import keras
import numpy as np
import pytest
from keras import layers

import multiloss
from helpers import copy_weights, network_weights, regression_data, two_head
from test_engine import np_mgda_two

ML = multiloss.MultiLossModel


def test_representation_mode_equals_a_hand_computation():
    x, y = regression_data(n=16)
    y["b"] = -3.0 * y["b"]
    template = two_head(ML, seed=3)
    W, c, Wa, ba, Wb, bb = network_weights(template)
    n = len(x)
    # Forward, by hand: z = tanh(x W + c), linear heads, MSE losses.
    z = np.tanh(x @ W + c)
    ra, rb = z @ Wa + ba - y["a"], z @ Wb + bb - y["b"]
    ja = 2.0 / (n * 1) * ra @ Wa.T  # dL_a/dz
    jb = 2.0 / (n * 2) * rb @ Wb.T  # dL_b/dz
    w = np_mgda_two(ja.ravel(), jb.ravel())
    cotangent = w[0] * ja + w[1] * jb
    pre = cotangent * (1.0 - z**2)
    lr = 0.1
    expected = [
        W - lr * x.T @ pre,
        c - lr * pre.sum(0),
        Wa - lr * z.T @ (2.0 / n * ra),
        ba - lr * (2.0 / n * ra).sum(0),
        Wb - lr * z.T @ (2.0 / (2 * n) * rb),
        bb - lr * (2.0 / (2 * n) * rb).sum(0),
    ]
    model = copy_weights(template, two_head(ML, seed=5))
    model.compile(keras.optimizers.SGD(lr), loss={"a": "mse", "b": "mse"}, balancer="mgda",
                  representation="trunk")
    history = model.fit(x, y, batch_size=n, epochs=1, shuffle=False, verbose=0).history
    for got, want in zip(network_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert history["a_weight"][0] == pytest.approx(w[0], rel=1e-4)


def test_representation_mode_rejects_bad_settings():
    model = two_head(ML)
    with pytest.raises(ValueError, match=r"no such layer.*\['input_layer.*'trunk', 'a', 'b'\]"):
        model.compile("sgd", loss="mse", balancer="mgda", representation="trnk")
    with pytest.raises(ValueError, match="needs a gradient-level balancer"):
        model.compile("sgd", loss="mse", balancer="static", representation="trunk")


def test_a_task_below_the_representation_is_named():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = layers.Dense(8, kernel_regularizer="l2", name="trunk")(inputs)
    model = ML(inputs, {"a": layers.Dense(1)(h), "b": layers.Dense(1)(h)})
    model.compile("sgd", loss="mse", balancer="mgda", representation="trunk")
    x = np.ones((8, 6), "float32")
    with pytest.raises(ValueError, match=r"\['added_loss'\] do not pass through the representation"):
        model.fit(x, {"a": x[:, :1], "b": x[:, :1]}, epochs=1, verbose=0)
