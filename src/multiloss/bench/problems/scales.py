"""`scales`: the synthetic regression of the GradNorm paper (Chen et al. 2018).

T regression tasks onto `f_i(x) = sigma_i tanh((B + eps_i) x)`, with
`x` in R^250 and outputs in R^100; `B` (100 x 250) and `eps_i` (100 x 250)
are constant matrices with IID entries from N(0, 10) and N(0, 3.5) (read as
standard deviations, as the common re-implementations do); `x` is uniform
on [-1, 1]^250, scaled to unit norm (the paper does not say; this is the
common choice). The tasks share `B` and differ by `eps_i`; `sigma_i` sets
each task's scale, so the losses differ by up to 10^4.

Two variants: `T = 2` with `sigma = (1, 100)`, and `T = 10` with `sigma_i`
log-uniform in [1, 100] (drawn from the data seed, the smallest and largest
set to 1 and 100). Model: a trunk of 4 ReLU layers of 100 units, one linear
head (100 outputs) per task, mean squared error per task. Metric: the test
`sum_i MSE_i / sigma_i^2` (each task's error in units of its own scale;
lower is better), reported per task as `MSE_i / sigma_i^2`.
"""

import numpy as np

from multiloss.bench.problems.base import FitProblem, Regression

__all__ = ["sigmas", "make_data", "Scales"]

INPUTS, OUTPUTS = 250, 100


def sigmas(num_tasks, seed=0):
    """The task scales: (1, 100) for two tasks, else log-uniform in
    [1, 100] with the extremes pinned to 1 and 100, sorted."""
    if num_tasks == 2:
        return np.array([1.0, 100.0])
    rng = np.random.default_rng(seed + 1000)
    values = np.sort(10.0 ** rng.uniform(0.0, 2.0, size=num_tasks))
    values[0], values[-1] = 1.0, 100.0
    return values


def make_data(num_tasks, n, seed=0, matrices=None):
    """`(x, y, matrices)`: `n` inputs, the dict of targets `t1..tT`, and
    `(B, eps, sigma)` (drawn from `seed` unless given)."""
    rng = np.random.default_rng(seed)
    if matrices is None:
        B = rng.normal(0.0, 10.0, size=(OUTPUTS, INPUTS))
        eps = rng.normal(0.0, 3.5, size=(num_tasks, OUTPUTS, INPUTS))
        matrices = (B, eps, sigmas(num_tasks, seed))
    B, eps, sigma = matrices
    x = rng.uniform(-1.0, 1.0, size=(n, INPUTS))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = {
        f"t{i + 1}": (sigma[i] * np.tanh(x @ (B + eps[i]).T)).astype("float32")
        for i in range(num_tasks)
    }
    return x.astype("float32"), y, matrices


class Scales(Regression, FitProblem):
    """The `scales` benchmark, one variant (`T` tasks)."""

    family = "scales"
    metric = "mse/sigma^2"
    higher_is_better = False
    baselines = False
    batch_size = 100
    default_steps = 5000
    quick_steps = 500

    def __init__(self, num_tasks=2, train=10000, val=1000, test=2000):
        super().__init__()
        self.num_tasks = int(num_tasks)
        self.tasks = tuple(f"t{i + 1}" for i in range(self.num_tasks))
        self.sizes = (train, val, test)
        self.sigma = sigmas(self.num_tasks)
        self.name = f"scales-T{self.num_tasks}"
        self.title = f"scales: GradNorm's regression, T = {self.num_tasks}"
        shown = ", ".join(f"{s:.3g}" for s in self.sigma)
        self.description = (
            f"{self.num_tasks} regressions onto sigma_i tanh((B + eps_i) x), x in R^250, "
            f"outputs in R^100, sigma = ({shown}); trunk of 4 ReLU layers of 100 units, one "
            f"linear head per task; {train} training examples. Metric: test sum_i "
            "MSE_i / sigma_i^2 (lower is better)."
        )

    def load_data(self):
        train, val, test = self.sizes
        x_train, y_train, matrices = make_data(self.num_tasks, train, seed=0)
        x_val, y_val, _ = make_data(self.num_tasks, val, seed=1, matrices=matrices)
        x_test, y_test, _ = make_data(self.num_tasks, test, seed=2, matrices=matrices)
        return x_train, y_train, x_val, y_val, x_test, y_test

    def build_model(self, tasks):
        import keras
        from keras import layers

        from multiloss import MultiLossModel

        inputs = keras.Input((INPUTS,))
        h = inputs
        for i in range(4):
            h = layers.Dense(100, activation="relu", name=f"trunk_{i + 1}")(h)
        outputs = {task: layers.Dense(OUTPUTS, name=task)(h) for task in tasks}
        return MultiLossModel(inputs, outputs)

    def task_metric(self, task, y_true, y_pred):
        sigma = self.sigma[self.tasks.index(task)]
        return self.task_loss(task, y_true, y_pred) / sigma**2

    def settings(self, steps):
        return {**super().settings(steps), "sigma": [float(s) for s in self.sigma]}

    def summarize(self, run):
        out = super().summarize(run)
        out["sum mse/sigma^2"] = float(sum(run["metrics"].values()))
        return out
