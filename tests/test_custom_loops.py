"""The custom-loop doors (tape helper, JAX transform, torch backward) give
the same gradients as the `fit` path, each in its framework's idiom."""

import keras
import numpy as np
import pytest

import multiloss
from conftest import BACKEND
from helpers import copy_weights, network_weights, regression_data, two_head

ML = multiloss.MultiLossModel
MSE = keras.losses.MeanSquaredError()


def _data():
    x, y = regression_data(n=16)
    y["b"] = -3.0 * y["b"]
    return x, y


def _fit_gradients(template, balancer, x, y):
    """The gradient `fit` applies: one SGD step with lr 1."""
    model = copy_weights(template, two_head(ML, seed=5))
    model.compile(keras.optimizers.SGD(1.0), loss={"a": "mse", "b": "mse"}, balancer=balancer)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return [b - a for a, b in zip(network_weights(model), network_weights(template))]


def _custom_loop_gradients(model, balancer, x, y):
    variables = model.trainable_variables
    if BACKEND == "tensorflow":
        import tensorflow as tf

        from multiloss.engine.tensorflow import gradient

        with tf.GradientTape(persistent=True) as tape:
            pred = model(x, training=True)
            losses = [MSE(y["a"], pred["a"]), MSE(y["b"], pred["b"])]
        grads, _ = gradient(tape, losses, variables, balancer)
        return [np.array(g) for g in grads]
    if BACKEND == "torch":
        from multiloss.engine.torch import backward

        pred = model(x, training=True)
        losses = [MSE(y["a"], pred["a"]), MSE(y["b"], pred["b"])]
        backward(losses, variables, balancer)
        return [v.value.grad.detach().cpu().numpy() for v in variables]
    import jax

    from multiloss.engine.jax import balancer_state, value_and_grad

    non_trainable = [v.value for v in model.non_trainable_variables]

    def losses(trainable_values):
        pred, _ = model.stateless_call(trainable_values, non_trainable, x, training=True)
        return [MSE(y["a"], pred["a"]), MSE(y["b"], pred["b"])]

    if not balancer.built:
        balancer.build((2,))
    step = jax.jit(value_and_grad(losses, balancer))
    out = step([v.value for v in variables], balancer_state(balancer))
    return [np.array(g) for g in out.grads]


@pytest.mark.parametrize("balancer", ["mgda", "pcgrad", "static"])
def test_custom_loop_equals_the_fit_path(balancer):
    x, y = _data()
    template = two_head(ML, seed=3)
    expected = _fit_gradients(template, balancer, x, y)
    model = copy_weights(template, two_head(keras.Model, seed=7))
    got = _custom_loop_gradients(model, multiloss.balancer.get(balancer), x, y)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
