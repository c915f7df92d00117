"""`multidigits`: two overlaid handwritten digits, one task per digit.

Source: scikit-learn's `load_digits` (1,797 8x8 images, shipped with the
package: no download). The source images are split into train and test
before pairing, so no test digit is ever seen in training. Each example is a
10x10 canvas: the left digit at [0:8, 0:8], the right one at [2:10, 2:10],
combined by pixelwise max. Task `left` classifies the left digit, task
`right` the right one.
"""

import numpy as np

__all__ = ["load", "build_model", "TASKS"]

TASKS = ("left", "right")


def _overlay(left, right):
    canvas = np.zeros((len(left), 10, 10), "float32")
    canvas[:, 0:8, 0:8] = left
    canvas[:, 2:10, 2:10] = np.maximum(canvas[:, 2:10, 2:10], right)
    return canvas


def _pairs(images, labels, count, rng):
    i = rng.integers(0, len(images), size=count)
    j = rng.integers(0, len(images), size=count)
    x = _overlay(images[i], images[j])[..., None]
    return x, {"left": labels[i].astype("int32"), "right": labels[j].astype("int32")}


def load(train_pairs=6000, test_pairs=2000, test_fraction=0.25, seed=0):
    """Returns `(x_train, y_train, x_test, y_test)`; `y` dicts by task."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")
    labels = digits.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_test = int(round(test_fraction * len(images)))
    test, train = order[:n_test], order[n_test:]
    x_train, y_train = _pairs(images[train], labels[train], train_pairs, rng)
    x_test, y_test = _pairs(images[test], labels[test], test_pairs, rng)
    return x_train, y_train, x_test, y_test


def build_model(model_class=None, seed=0, tasks=TASKS):
    """A small CNN with a shared trunk and one softmax head per task."""
    import keras
    from keras import layers

    if model_class is None:
        from multiloss import MultiLossModel as model_class

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((10, 10, 1))
    h = layers.Conv2D(32, 3, activation="relu", padding="same", name="conv_1")(inputs)
    h = layers.Conv2D(32, 3, activation="relu", padding="same", name="conv_2")(h)
    h = layers.MaxPooling2D(2)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(128, activation="relu", name="shared")(h)
    outputs = {task: layers.Dense(10, activation="softmax", name=task)(h) for task in tasks}
    return model_class(inputs, outputs)
