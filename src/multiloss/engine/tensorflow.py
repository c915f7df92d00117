"""TensorFlow engine."""

import tensorflow as tf


def jit(fn):
    return tf.function(fn, reduce_retracing=True)
