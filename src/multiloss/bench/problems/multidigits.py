"""`multidigits`: two overlaid handwritten digits, one task per digit.

Source: scikit-learn's `load_digits` (1,797 8x8 images, shipped with the
package: no download). The source images are split into train and test
before pairing, so no test digit is ever seen in training. Each example is a
10x10 canvas: the left digit at [0:8, 0:8], the right one at [2:10, 2:10],
combined by pixelwise max. Task `left` classifies the left digit, task
`right` the right one. The validation pairs are drawn from the training
images (other pairs), the test pairs from the test images.
"""

import numpy as np

from multiloss.bench.problems.base import Classification, FitProblem

__all__ = ["load", "build_model", "overlay", "TASKS", "MultiDigits"]

TASKS = ("left", "right")


def overlay(left, right):
    """The 10x10 canvases of two stacks of 8x8 images: left at [0:8, 0:8],
    right at [2:10, 2:10], pixelwise max."""
    canvas = np.zeros((len(left), 10, 10), "float32")
    canvas[:, 0:8, 0:8] = left
    canvas[:, 2:10, 2:10] = np.maximum(canvas[:, 2:10, 2:10], right)
    return canvas


def _pairs(images, labels, count, rng):
    i = rng.integers(0, len(images), size=count)
    j = rng.integers(0, len(images), size=count)
    x = overlay(images[i], images[j])[..., None]
    return x, {"left": labels[i].astype("int32"), "right": labels[j].astype("int32")}


def load(train_pairs=6000, test_pairs=2000, test_fraction=0.25, seed=0, val_pairs=0):
    """Returns `(x_train, y_train, x_test, y_test)`, `y` dicts by task; with
    `val_pairs > 0`, `(x_train, y_train, x_val, y_val, x_test, y_test)`."""
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
    if not val_pairs:
        return x_train, y_train, x_test, y_test
    x_val, y_val = _pairs(images[train], labels[train], val_pairs, rng)
    return x_train, y_train, x_val, y_val, x_test, y_test


def build_model(model_class=None, seed=None, tasks=TASKS):
    """A small CNN with a shared trunk and one softmax head per task."""
    import keras
    from keras import layers

    if model_class is None:
        from multiloss import MultiLossModel as model_class

    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input((10, 10, 1))
    h = layers.Conv2D(32, 3, activation="relu", padding="same", name="conv_1")(inputs)
    h = layers.Conv2D(32, 3, activation="relu", padding="same", name="conv_2")(h)
    h = layers.MaxPooling2D(2)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(128, activation="relu", name="shared")(h)
    outputs = {task: layers.Dense(10, activation="softmax", name=task)(h) for task in tasks}
    return model_class(inputs, outputs)


class MultiDigits(Classification, FitProblem):
    """The `multidigits` benchmark."""

    name = family = "multidigits"
    title = "multidigits: two overlaid scikit-learn digits"
    tasks = TASKS
    baselines = True
    batch_size = 64
    default_steps = 3000
    quick_steps = 300

    def __init__(self, train_pairs=6000, val_pairs=1000, test_pairs=2000):
        super().__init__()
        self.sizes = (train_pairs, val_pairs, test_pairs)
        self.description = (
            "Two scikit-learn digits (8x8) on a 10x10 canvas, left at [0:8, 0:8], right at "
            "[2:10, 2:10], pixelwise max; the source images are split (75/25) before pairing. "
            f"{train_pairs} training pairs, {test_pairs} test pairs. A small CNN (2 conv, "
            "dense 128) with one softmax head per digit; per-task test accuracy, and "
            "delta_m% against single-task CNNs trained the same way."
        )

    def load_data(self):
        train, val, test = self.sizes
        return load(train_pairs=train, test_pairs=test, val_pairs=val)

    def build_model(self, tasks):
        return build_model(tasks=tasks)
