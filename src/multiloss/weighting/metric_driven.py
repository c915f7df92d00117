"""`MetricDriven`: weights recomputed after each epoch from validation metrics."""

import math
import numbers
import warnings

import keras
import numpy as np
from keras import ops

from multiloss.balancer import register
from multiloss.engine import ops as step_ops
from multiloss.weighting._common import add_state, check_float, check_kwargs
from multiloss.weighting.base import Weighting

__all__ = ["MetricDriven"]


@register("metric_driven")
class MetricDriven(Weighting):
    """Task weights set after each epoch by a rule of the epoch's metrics.

    The "adjust the weights from the validation metrics after each epoch"
    recipe, done inside `fit` so it works on every backend (JAX's compiled
    step included) and is saved and resumed with the model.

    After each training epoch (in `on_epoch_end`, before any user
    callback, so `BackupAndRestore` saves the new weights), the balancer
    reads one score per task from the epoch's logs, `s_k = logs[monitor_k]`,
    and sets its weights `lambda = rule(scores, epoch)`; the next epoch
    trains on `total = sum_k c_k lambda_k L_k` (`c_k`: the fixed task
    weights; weights in force `c_k lambda_k`). Before the first epoch ends,
    `lambda_k = 1`.

    The default rule is inversely proportional to the scores, normalised to
    sum to K:

        lambda_k = K (1 / (s_k + epsilon)) / sum_j (1 / (s_j + epsilon))

    With the default monitor, each task's validation loss
    (`val_<task>_loss`), this equalises the weighted validation losses
    (`lambda_k s_k` is the same for every task). With a score where higher
    is better (an accuracy: `monitor={"digit": "val_digit_accuracy", ...}`)
    it gives more weight to the tasks that score lower.

    A rule of your own takes `(scores, epoch)`, `scores` a dict from task
    name to float, and returns a dict from task name to weight (tasks not
    named keep theirs) or a sequence of K weights, each finite and >= 0. Its
    weights are used as returned (the default rule's sum to K, which keeps
    the learning rate's meaning). For `.keras` saving, give a named function
    registered with `@keras.saving.register_keras_serializable()`.

    No paper: a common recipe. Scale of the update: the default rule's
    weights sum to K (as static weights of 1); a custom rule's, whatever it
    returns.

    Needs the monitored keys in the epoch logs: pass `validation_data` (or
    `validation_split`) to `fit`, or monitor training logs
    (`monitor="{task}_loss"`); a missing key raises, naming it and the keys
    there are. A non-finite score keeps the weights as they are and warns,
    naming the task. In a custom loop, call
    `balancer.on_epoch_end(epoch, logs)` with your own logs.

    Args:
        rule: None (the default rule) or a callable `(scores, epoch)`.
        monitor: the log key of each task's score: a string with `{task}`
            in it, or a dict from task name to key.
        epsilon: added to each score in the default rule (> 0).

    Example:

    ```python
    import keras, multiloss
    balancer = multiloss.weighting.MetricDriven()
    balancer.setup(["a", "b"])
    balancer.on_epoch_end(0, {"val_a_loss": 1.0, "val_b_loss": 3.0})
    _, weights = balancer.combine(keras.ops.array([1.0, 3.0]))
    print(keras.ops.convert_to_numpy(weights))  # [1.5, 0.5]: weighted losses equal
    ```
    """

    def __init__(self, rule=None, monitor="val_{task}_loss", epsilon=1e-8, name=None, **kwargs):
        owner = "MetricDriven"
        check_kwargs(owner, kwargs, ("rule", "monitor", "epsilon"))
        if isinstance(rule, dict):  # from a config
            rule = keras.saving.deserialize_keras_object(rule)
        if rule is not None and not callable(rule):
            raise ValueError(
                f"MetricDriven(rule={rule!r}): rule must be None or a callable "
                "(scores, epoch) -> weights."
            )
        if isinstance(monitor, str):
            if "{task}" not in monitor:
                raise ValueError(
                    f"MetricDriven(monitor={monitor!r}): a string monitor must contain "
                    "'{task}' (e.g. 'val_{task}_loss'); or give a dict from task name to "
                    "log key."
                )
        elif isinstance(monitor, dict):
            bad = [k for k, v in monitor.items() if not isinstance(v, str)]
            if bad:
                raise ValueError(
                    f"MetricDriven(monitor=...): the log keys of tasks {bad} must be strings."
                )
            monitor = dict(monitor)
        else:
            raise ValueError(
                f"MetricDriven(monitor={monitor!r}): monitor must be a string with "
                "'{task}' or a dict from task name to log key."
            )
        epsilon = check_float(owner, "epsilon", epsilon, low=0.0, low_open=True)
        super().__init__(name=name, **kwargs)
        self.rule = rule
        self._monitor = monitor
        self.epsilon = epsilon

    @property
    def monitor(self):
        return self._monitor

    def build(self, input_shape):
        super().build(input_shape)
        self.metric_weights = add_state(self, "metric_weights", 1.0, (input_shape[0],))

    def step_variables(self):
        return []  # the weights change between epochs only

    def balance(self, losses, training=True):
        weights = self.metric_weights.value
        return step_ops.sum(weights * losses), weights

    def _names(self):
        if self.task_names is not None:
            return tuple(self.task_names)
        return tuple(f"task_{i}" for i in range(self.num_tasks))

    def _key(self, task):
        if isinstance(self._monitor, str):
            return self._monitor.replace("{task}", task)
        if task not in self._monitor:
            raise ValueError(
                f"MetricDriven(monitor=...) gives no log key for task {task!r}; it "
                f"names {sorted(self._monitor)}, the tasks are {list(self._names())}."
            )
        return self._monitor[task]

    def inverse(self, scores, epoch=None):
        """The default rule: `K (1/(s_k + eps)) / sum_j 1/(s_j + eps)`."""
        names = self._names()
        values = np.array([scores[name] for name in names], "float64")
        negative = [name for name, v in zip(names, values) if v < 0]
        if negative:
            raise ValueError(
                f"MetricDriven's default rule needs scores >= 0; tasks {negative} "
                f"score {[scores[n] for n in negative]}. Give a rule of your own."
            )
        inverse = 1.0 / (values + self.epsilon)
        return list(len(names) * inverse / np.sum(inverse))

    def on_epoch_end(self, epoch, logs=None):
        if not self.built:
            raise ValueError("MetricDriven is not built yet: compile the model first.")
        self._sync_state()
        logs = logs or {}
        names = self._names()
        keys = {name: self._key(name) for name in names}
        missing = [key for key in keys.values() if key not in logs]
        if missing:
            raise ValueError(
                f"MetricDriven monitors {missing}, which the epoch logs do not have "
                f"(they have {sorted(logs)}). Pass validation_data to fit, or monitor "
                "keys that are there (monitor='{task}_loss' for the training losses)."
            )
        scores = {name: float(logs[keys[name]]) for name in names}
        bad = [name for name in names if not math.isfinite(scores[name])]
        if bad:
            warnings.warn(
                f"MetricDriven: non-finite score for task(s) {bad} after epoch {epoch} "
                f"({ {n: scores[n] for n in bad} }); the weights stay as they are.",
                stacklevel=2,
            )
            return
        rule = self.rule if self.rule is not None else self.inverse
        weights = self._check_weights(rule(scores, epoch), names)
        self.metric_weights.assign(weights)

    def _check_weights(self, weights, names):
        current = np.array(ops.convert_to_numpy(self.metric_weights), "float32")
        new = current.copy()
        if isinstance(weights, dict):
            unknown = sorted(set(weights) - set(names))
            if unknown:
                raise ValueError(
                    f"MetricDriven's rule returned weights for unknown task(s) {unknown}; "
                    f"the tasks are {list(names)}."
                )
            items = [(names.index(k), k, v) for k, v in weights.items()]
        else:
            values = list(np.asarray(weights, "float64").reshape(-1))
            if len(values) != len(names):
                raise ValueError(
                    f"MetricDriven's rule returned {len(values)} weights for "
                    f"{len(names)} tasks {list(names)}."
                )
            items = [(i, names[i], v) for i, v in enumerate(values)]
        for i, name, value in items:
            if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating)):
                raise ValueError(
                    f"MetricDriven's rule returned {value!r} for task {name!r}; "
                    "weights must be numbers."
                )
            value = float(value)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"MetricDriven's rule returned {value} for task {name!r}; "
                    "weights must be finite and >= 0."
                )
            new[i] = value
        return new

    def get_config(self):
        rule = None if self.rule is None else keras.saving.serialize_keras_object(self.rule)
        monitor = self._monitor if isinstance(self._monitor, str) else dict(self._monitor)
        return {
            **super().get_config(),
            "rule": rule,
            "monitor": monitor,
            "epsilon": self.epsilon,
        }
