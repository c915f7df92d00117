"""Trains the same model on one device and data-parallel on two CPU devices
and prints the largest weight difference per method, as JSON. Run as a
subprocess: the device count must be set before the framework starts."""

import json
import os
import sys

BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "jax":
    import jax

    jax.config.update("jax_num_cpu_devices", 2)
elif BACKEND == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import multiloss  # noqa: E402
from helpers import regression_data, two_head  # noqa: E402


def train(method, weights, x, y, scope=None):
    if scope is None:
        model = two_head(multiloss.MultiLossModel, seed=0)
        model.set_weights(weights)
        model.compile(keras.optimizers.SGD(0.01), loss={"a": "mse", "b": "mse"}, balancer=method)
    else:
        with scope:
            model = two_head(multiloss.MultiLossModel, seed=0)
            model.set_weights(weights)
            model.compile(keras.optimizers.SGD(0.01), loss={"a": "mse", "b": "mse"},
                          balancer=method)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return [np.array(w) for layer in model.layers for w in layer.get_weights()]


def main():
    x, y = regression_data(n=64)
    y["b"] = -3.0 * y["b"]
    initial = two_head(multiloss.MultiLossModel, seed=0).get_weights()
    results = {}
    if BACKEND == "tensorflow":
        # One strategy for every run: several in one process clash in TF's
        # collective ops.
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for method in sys.argv[1:]:
        single = train(method, initial, x, y)
        if BACKEND == "tensorflow":
            parallel = train(method, initial, x, y, scope=strategy.scope())
            replicas = strategy.num_replicas_in_sync
        else:
            devices = keras.distribution.list_devices()
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            parallel = train(method, initial, x, y)
            keras.distribution.set_distribution(None)
            replicas = len(devices)
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(single, initial))
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single, parallel))
        results[method] = {"diff": diff, "moved": moved, "replicas": replicas}
    print(json.dumps(results))


main()
