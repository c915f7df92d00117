"""`TaskMetrics`: the per-task entries of the training logs."""

import keras
import numpy as np
from keras import ops

__all__ = ["TaskMetrics", "PACKED_KEY", "lazy_log_entries", "unpack_logs"]


class TaskMetrics(keras.metrics.Metric):
    """Running means of each task's unweighted loss and of its weight in force.

    Its result is a dict, `{"<task>_loss": ..., "<task>_weight": ...}`, which
    Keras merges into the logs (History, TensorBoard, progress bar); Keras
    adds the `val_` prefix for validation. Values are averaged over samples,
    as Keras averages `loss`. One metric with (K,) state keeps the cost per
    step at a few variable updates whatever K is.

    Optional entries:
    - `extra_names`: the balancer's own scalars (e.g. a solver's count of
      non-converged steps), logged as their latest value;
    - `diagnostics`: `<task>_grad_norm`, `grad_cos_min` and `grad_norm_ratio`
      from each step's Gram matrix, averaged over the epoch's steps;
    - `guarded`: `skipped_steps`, the steps of the epoch skipped for a
      non-finite loss or gradient (their values are left out of the means).
    """

    def __init__(self, task_names, extra_names=(), diagnostics=False, guarded=False,
                 name="multiloss_tasks", **kwargs):
        super().__init__(name=name, dtype="float32", **kwargs)
        self.task_names = tuple(task_names)
        self.extra_names = tuple(extra_names)
        self.diagnostics = diagnostics
        self.guarded = guarded
        k = len(self.task_names)
        # The K loss sums then the K weight sums: one update, one division.
        self.sums = self.add_variable(shape=(2 * k,), initializer="zeros", name="sums")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")
        if self.extra_names:
            self.extra = self.add_variable(
                shape=(len(self.extra_names),), initializer="zeros", name="extra"
            )
        if diagnostics:
            self.norm_sum = self.add_variable(shape=(k,), initializer="zeros", name="norm_sum")
            self.cos_min_sum = self.add_variable(shape=(), initializer="zeros", name="cos_min_sum")
            self.ratio_sum = self.add_variable(shape=(), initializer="zeros", name="ratio_sum")
            self.diagnosed_steps = self.add_variable(
                shape=(), initializer="zeros", name="diagnosed_steps"
            )
        if guarded:
            self.skipped = self.add_variable(shape=(), initializer="zeros", name="skipped")
            # Which tasks were non-finite at the last skipped step (not logged:
            # read to name them when training stops).
            self.nonfinite = self.add_variable(shape=(k,), initializer="zeros", name="nonfinite")

    def update_state(self, losses, weights, batch_size, extras=None, finite=None,
                     diagnostics=None):
        """Adds one step.

        Args:
            losses, weights: (K,) unweighted losses and weights in force.
            batch_size: the step's number of samples.
            extras: dict of the balancer's scalars, by name.
            finite: (K,) booleans; a step with any False is skipped.
            diagnostics: `(norms, cos_min, ratio)` from `gram_diagnostics`.
        """
        batch_size = ops.cast(batch_size, "float32")
        values = ops.concatenate([ops.cast(losses, "float32"), ops.cast(weights, "float32")])
        if finite is not None:
            ok = ops.all(finite)
            # A skipped step adds nothing: NaN * 0 would still be NaN.
            values = ops.where(ok, values, ops.zeros_like(values))
            batch_size = ops.where(ok, batch_size, ops.zeros_like(batch_size))
            if self.guarded:
                self.skipped.assign_add(ops.where(ok, 0.0, 1.0))
                bad = ops.cast(ops.logical_not(finite), "float32")
                self.nonfinite.assign(ops.where(ok, self.nonfinite.value, bad))
        self.sums.assign_add(ops.multiply(values, batch_size))
        self.count.assign_add(batch_size)
        if self.extra_names:
            self.extra.assign(
                ops.stack([ops.cast(extras[name], "float32") for name in self.extra_names])
            )
        if self.diagnostics and diagnostics is not None:
            norms, cos_min, ratio = diagnostics
            step = ops.cast(ops.greater(batch_size, 0), "float32")
            self.norm_sum.assign_add(ops.multiply(ops.where(step > 0, norms, 0.0), step))
            self.cos_min_sum.assign_add(ops.multiply(ops.where(step > 0, cos_min, 0.0), step))
            self.ratio_sum.assign_add(ops.multiply(ops.where(step > 0, ratio, 0.0), step))
            self.diagnosed_steps.assign_add(step)

    @property
    def packed_names(self):
        """The log names of `packed()`'s entries, in order."""
        names = [f"{name}_loss" for name in self.task_names]
        names += [f"{name}_weight" for name in self.task_names]
        names += list(self.extra_names)
        if self.diagnostics:
            names += [f"{name}_grad_norm" for name in self.task_names]
            names += ["grad_cos_min", "grad_norm_ratio"]
        if self.guarded:
            names.append("skipped_steps")
        return tuple(names)

    def packed(self):
        """Every entry of `result()` in one float32 vector, in `packed_names`
        order. A compiled step returns this one tensor rather than 2K+1
        scalars: each output of a step costs the trainer a transfer and a
        conversion at every batch (measured: 15% of a small step at K=8 on
        TensorFlow); `unpack_logs` gives Keras the named entries back."""
        parts = [ops.divide_no_nan(self.sums, self.count)]
        if self.extra_names:
            parts.append(self.extra.value)
        if self.diagnostics:
            parts.append(ops.divide_no_nan(self.norm_sum, self.diagnosed_steps))
            scalars = ops.stack([self.cos_min_sum.value, self.ratio_sum.value])
            parts.append(ops.divide_no_nan(scalars, self.diagnosed_steps))
        if self.guarded:
            parts.append(ops.reshape(self.skipped.value, (1,)))
        return ops.concatenate(parts)

    def result(self):
        return dict(zip(self.packed_names, ops.unstack(self.packed())))

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def get_config(self):
        return {
            "task_names": list(self.task_names),
            "extra_names": list(self.extra_names),
            "diagnostics": self.diagnostics,
            "guarded": self.guarded,
            "name": self.name,
        }


# The key under which a compiled step returns `TaskMetrics.packed()`.
PACKED_KEY = "multiloss_packed_logs"


class PackedLogs:
    """One step's packed task logs, copied to the host once, when the first
    entry is read (by Keras's callbacks, possibly in a worker thread: the
    main thread goes on to the next step meanwhile)."""

    __slots__ = ("_tensor", "_values")

    def __init__(self, tensor):
        self._tensor = tensor
        self._values = None

    def value(self, index):
        if self._values is None:
            self._values = ops.convert_to_numpy(self._tensor)
        return self._values[index]


class LogEntry:
    """One entry of `PackedLogs`: what Keras's callbacks read as a number
    (`float()`, as `keras.utils.pythonify_logs` does, or `np.array()`, as
    `train_on_batch` does)."""

    __slots__ = ("_packed", "_index")

    def __init__(self, packed, index):
        self._packed = packed
        self._index = index

    def __float__(self):
        return float(self._packed.value(self._index))

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self._packed.value(self._index), dtype=dtype)

    def __repr__(self):
        return repr(float(self))


def lazy_log_entries(packed, count):
    """The `count` entries of a packed logs vector as `LogEntry`s, which
    copy it to the host when the first is read."""
    holder = PackedLogs(packed)
    return [LogEntry(holder, i) for i in range(count)]


def unpack_logs(logs, names, entries=lazy_log_entries, keep=None):
    """`logs` (holding `PACKED_KEY`) with that entry replaced by one per name:
    the step's logs as Keras would have them. `entries(packed, count)`
    splits the vector (an engine picks what its Keras reads fastest).
    `keep`: the names to give back (default: all); the others are left
    out, and with them the work of splitting when none is kept."""
    logs = dict(logs)
    packed = logs.pop(PACKED_KEY)
    if keep is None:
        logs.update(zip(names, entries(packed, len(names))))
    elif keep:
        logs.update((name, entry) for name, entry in zip(names, entries(packed, len(names)))
                    if name in keep)
    return logs
