"""`TaskMetrics`: the per-task entries of the training logs."""

import keras
from keras import ops

__all__ = ["TaskMetrics"]


class TaskMetrics(keras.metrics.Metric):
    """Running means of each task's unweighted loss and of its weight in force.

    Its result is a dict, `{"<task>_loss": ..., "<task>_weight": ...}`, which
    Keras merges into the logs (History, TensorBoard, progress bar); Keras
    adds the `val_` prefix for validation. Values are averaged over samples,
    as Keras averages `loss`. One metric with (K,) state keeps the cost per
    step at three variable updates whatever K is.
    """

    def __init__(self, task_names, extra_names=(), name="multiloss_tasks", **kwargs):
        super().__init__(name=name, dtype="float32", **kwargs)
        self.task_names = tuple(task_names)
        self.extra_names = tuple(extra_names)
        k = len(self.task_names)
        self.loss_sum = self.add_variable(shape=(k,), initializer="zeros", name="loss_sum")
        self.weight_sum = self.add_variable(shape=(k,), initializer="zeros", name="weight_sum")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")
        if self.extra_names:
            self.extra = self.add_variable(
                shape=(len(self.extra_names),), initializer="zeros", name="extra"
            )

    def update_state(self, losses, weights, batch_size, extras=None):
        """Adds one step: (K,) unweighted losses, (K,) weights in force, the
        batch size, and a dict of extra scalars (kept as latest values)."""
        batch_size = ops.cast(batch_size, "float32")
        self.loss_sum.assign_add(ops.multiply(ops.cast(losses, "float32"), batch_size))
        self.weight_sum.assign_add(ops.multiply(ops.cast(weights, "float32"), batch_size))
        self.count.assign_add(batch_size)
        if self.extra_names:
            self.extra.assign(
                ops.stack([ops.cast(extras[name], "float32") for name in self.extra_names])
            )

    def result(self):
        losses = ops.divide_no_nan(self.loss_sum, self.count)
        weights = ops.divide_no_nan(self.weight_sum, self.count)
        logs = {}
        for i, name in enumerate(self.task_names):
            logs[f"{name}_loss"] = losses[i]
            logs[f"{name}_weight"] = weights[i]
        for i, name in enumerate(self.extra_names):
            logs[name] = self.extra[i]
        return logs

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def get_config(self):
        return {
            "task_names": list(self.task_names),
            "extra_names": list(self.extra_names),
            "name": self.name,
        }
