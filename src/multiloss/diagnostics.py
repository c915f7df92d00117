"""`diagnose`: measure the domination effect before choosing a balancer.

One task dominates training when its loss, or its gradient on the shared
variables, is much larger than the others': the summed gradient then points
where that task wants, and the others barely learn. `diagnose` measures, on
a few batches and without training, each task's loss scale, its share of the
shared gradient's norm, and the cosine between every pair of task gradients
(negative: the tasks pull the shared variables apart).
"""

import dataclasses
import warnings

import keras
import numpy as np

from multiloss import balancer as balancer_module
from multiloss import engine

__all__ = ["diagnose", "Diagnosis", "DOMINATION_RATIO"]

# A task whose gradient norm is this many times another's dominates it.
DOMINATION_RATIO = 10.0

# Balancers that address each symptom, by alias (only registered ones are named).
_FOR_GRADIENT_SCALE = ("normalizedsum", "gradnorm", "imtlg", "upgrad", "nashmtl", "dbmtl",
                       "alignedmtl")
_FOR_LOSS_SCALE = ("scalenormalized", "uncertainty", "geometricmean", "dwa", "imtll")
_FOR_CONFLICT = ("pcgrad", "upgrad", "mgda", "cagrad", "nashmtl", "config", "gradvac")


@dataclasses.dataclass
class Diagnosis:
    """What `diagnose` measured (means over the batches).

    Attributes:
        task_names: the K tasks.
        loss: (K,) mean unweighted loss of each task.
        grad_norm: (K,) mean norm of each task's gradient on the shared
            variables.
        grad_share: (K,) each task's share of the summed gradient norms.
        cosine: (K, K) cosine between the task gradients.
        steps: the number of batches measured.
        warnings: the findings, in words.
    """

    task_names: tuple
    loss: np.ndarray
    grad_norm: np.ndarray
    grad_share: np.ndarray
    cosine: np.ndarray
    steps: int
    warnings: list

    @property
    def grad_norm_ratio(self):
        """Largest over smallest task gradient norm."""
        return float(np.max(self.grad_norm) / max(np.min(self.grad_norm), 1e-12))

    def table(self):
        """The report as text: one row per task, then the cosine matrix."""
        width = max(len(n) for n in self.task_names + ("task",))
        lines = [f"multiloss diagnosis over {self.steps} batch(es)", ""]
        lines.append(f"{'task':<{width}}  {'loss':>11}  {'grad norm':>11}  {'grad share':>10}")
        for i, name in enumerate(self.task_names):
            lines.append(
                f"{name:<{width}}  {self.loss[i]:>11.4g}  {self.grad_norm[i]:>11.4g}  "
                f"{100 * self.grad_share[i]:>9.1f}%"
            )
        lines += ["", "cosine between task gradients:"]
        lines.append(" " * (width + 2) + "  ".join(f"{n[:8]:>8}" for n in self.task_names))
        for i, name in enumerate(self.task_names):
            row = "  ".join(f"{c:>8.3f}" for c in self.cosine[i])
            lines.append(f"{name:<{width}}  {row}")
        if self.warnings:
            lines.append("")
            lines += [f"! {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def _available(names):
    registered = set(balancer_module.available())
    return [name for name in names if name in registered]


def _findings(names, loss, norms, cosine):
    found = []
    k = len(names)
    if k >= 2 and np.min(norms) > 0:
        big, small = int(np.argmax(norms)), int(np.argmin(norms))
        ratio = norms[big] / norms[small]
        if ratio > DOMINATION_RATIO:
            found.append(
                f"task {names[big]!r}'s gradient is {ratio:.0f}x task {names[small]!r}'s on the "
                f"shared variables: {names[big]!r} dominates the update. Balancers that "
                f"equalise gradient scale: {_available(_FOR_GRADIENT_SCALE)}; from the loss "
                f"values alone: {_available(_FOR_LOSS_SCALE)}."
            )
    elif k >= 2:
        zero = [names[i] for i in range(k) if norms[i] == 0]
        found.append(f"task(s) {zero} have a zero gradient on the shared variables.")
    if k >= 2:
        positive = loss[loss > 0]
        if len(positive) == k and np.max(loss) / np.min(loss) > DOMINATION_RATIO:
            big, small = int(np.argmax(loss)), int(np.argmin(loss))
            found.append(
                f"task {names[big]!r}'s loss is {loss[big] / loss[small]:.0f}x task "
                f"{names[small]!r}'s: with static weights the total mostly measures "
                f"{names[big]!r}."
            )
        off = cosine[~np.eye(k, dtype=bool)]
        if np.min(off) < 0:
            i, j = np.unravel_index(np.argmin(cosine + 2 * np.eye(k)), cosine.shape)
            found.append(
                f"tasks {names[i]!r} and {names[j]!r} conflict (cosine {cosine[i, j]:.2f}): "
                f"their gradients pull the shared variables apart. Balancers that resolve "
                f"conflicts: {_available(_FOR_CONFLICT)}."
            )
    return found


def _batches(data, batch_size, steps):
    """Up to `steps` batches `(x, y, sample_weight)` from arrays or an
    iterable of batches (a tf.data.Dataset, a generator, a PyDataset)."""
    if isinstance(data, tuple) and 2 <= len(data) <= 3:
        x, y = data[0], data[1]
        sample_weight = data[2] if len(data) == 3 else None
        n = len(keras.tree.flatten(x)[0])
        for step, start in enumerate(range(0, n, batch_size)):
            if step >= steps:
                return
            cut = slice(start, start + batch_size)
            yield keras.tree.map_structure(
                lambda a: None if a is None else a[cut], (x, y, sample_weight),
                none_is_leaf=True,
            )
        return
    for step, batch in enumerate(data):
        if step >= steps:
            return
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        yield keras.tree.map_structure(
            lambda a: None if a is None else np.asarray(a), (x, y, sample_weight),
            none_is_leaf=True,
        )


def diagnose(model, data, steps=10, batch_size=32, verbose=True):
    """Measures the domination effect on a compiled `MultiLossModel`.

    For each of up to `steps` batches, without changing the model, computes
    every task's loss and its gradient on the shared variables (those two or
    more tasks reach, or `compile(shared=...)`), then reports the means:
    loss scale, gradient norm and share, and the cosine of every task pair.
    A task whose gradient is more than 10x another's is named, with the
    balancers that address it, in `Diagnosis.warnings` and as a Python
    warning.

    Args:
        model: a compiled `MultiLossModel`.
        data: `(x, y)` or `(x, y, sample_weight)` arrays, or an iterable of
            such batches.
        steps: how many batches to measure.
        batch_size: the batch size when `data` is arrays.
        verbose: print the report.

    Returns:
        A `Diagnosis`.

    Example:

    ```python
    import numpy as np, keras, multiloss
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    model = multiloss.MultiLossModel(
        inputs, {"small": keras.layers.Dense(1)(h), "large": keras.layers.Dense(1)(h)}
    )
    model.compile("sgd", loss="mse")
    x = np.random.rand(64, 4).astype("float32")
    report = multiloss.diagnose(model, (x, {"small": x[:, :1], "large": 100 * x[:, 1:2]}), steps=2)
    print(report.grad_norm_ratio > 10, report.warnings[0][:30])
    ```
    """
    if getattr(model, "_compile_args", None) is None:
        raise ValueError("diagnose needs a compiled multiloss.MultiLossModel.")
    batches = list(_batches(data, batch_size, steps))
    if not batches:
        raise ValueError("diagnose got no batch: the data is empty.")
    if model._tasks is None:
        model._symbolic_build(data_batch=batches[0])
    compute = engine.backend_module().task_gram(model)
    losses, grams = [], []
    for x, y, sample_weight in batches:
        loss, gram = compute(x, y, sample_weight)
        losses.append(keras.ops.convert_to_numpy(loss))
        grams.append(keras.ops.convert_to_numpy(gram))
    names = model.task_names
    loss = np.mean(losses, axis=0)
    norms_per_step = np.sqrt(np.maximum([np.diag(g) for g in grams], 0.0))
    norms = norms_per_step.mean(axis=0)
    outer = np.maximum(np.einsum("si,sj->sij", norms_per_step, norms_per_step), 1e-30)
    cosine = np.mean(np.asarray(grams) / outer, axis=0)
    np.fill_diagonal(cosine, 1.0)
    share = norms / max(norms.sum(), 1e-30)
    report = Diagnosis(names, loss, norms, share, cosine, len(batches),
                       _findings(names, loss, norms, cosine))
    for finding in report.warnings:
        warnings.warn(finding, stacklevel=2)
    if verbose:
        print(report.table())
    return report
