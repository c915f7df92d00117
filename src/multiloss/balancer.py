"""`Balancer`: the base of every rule that balances several task losses.

A balancer holds the task weights the user sets (from
`compile(loss_weights=...)`, a `CombinedLoss`, or `assign`) and whatever
state its rule needs, all in Keras Variables, so the model tracks them: JAX's
stateless step sees them, `model.save` and `BackupAndRestore` keep them.

Two families derive from it:
- `multiloss.weighting`: weights from the loss values (one backward pass);
- `multiloss.aggregators`: weights from per-task gradients.

Every balancer has a string alias, usable in `compile(balancer="...")`.
"""

import weakref

import keras
import numpy as np

from multiloss.losses import check_weight

__all__ = ["Balancer", "register", "get", "available"]

_REGISTRY = {}


def register(alias):
    """Class decorator: registers a balancer under `alias` and for Keras
    serialisation."""

    def decorate(cls):
        if alias in _REGISTRY:
            raise ValueError(f"The balancer alias {alias!r} is taken by {_REGISTRY[alias]}.")
        _REGISTRY[alias] = cls
        cls.alias = alias
        return keras.saving.register_keras_serializable(package="multiloss")(cls)

    return decorate


def available():
    """The registered balancer aliases, sorted."""
    return sorted(_REGISTRY)


def get(identifier):
    """A balancer from `None` (static weights), an alias, a config dict or
    an instance."""
    if identifier is None:
        identifier = "static"
    if isinstance(identifier, Balancer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _REGISTRY:
            raise ValueError(
                f"Unknown balancer {identifier!r}; valid names: {available()}."
            )
        return _REGISTRY[key]()
    if isinstance(identifier, dict):
        balancer = keras.saving.deserialize_keras_object(identifier)
        if isinstance(balancer, Balancer):
            return balancer
    raise ValueError(
        f"balancer must be None, a name from {available()} or a "
        f"multiloss Balancer, got {identifier!r}."
    )


class Balancer(keras.layers.Layer):
    """Base class of balancers.

    Build it with the shape of the loss vector, `(K,)`; the model does this
    at `compile`. `task_weights` (a non-trainable Variable, default 1 each)
    are the user's fixed weights; the rule's own weights multiply them.

    Subclasses create their state in `build` (after `super().build`) and
    describe their hyperparameters in `get_config`.
    """

    def __init__(self, name=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # state stays float32 under mixed precision
        super().__init__(name=name, **kwargs)
        self.task_names = None
        self._before_assign = None

    def build(self, input_shape):
        if len(input_shape) != 1 or input_shape[0] is None or input_shape[0] < 1:
            raise ValueError(
                f"{type(self).__name__} is built with the shape (K,) of the task "
                f"loss vector, got {input_shape}."
            )
        self.task_weights = self.add_weight(
            shape=(input_shape[0],),
            initializer="ones",
            trainable=False,
            name="task_weights",
        )

    @property
    def num_tasks(self):
        return None if not self.built else int(self.task_weights.shape[0])

    def set_task_names(self, names):
        names = tuple(names)
        if self.built and len(names) != self.num_tasks:
            raise ValueError(
                f"{type(self).__name__} is built for {self.num_tasks} tasks, got "
                f"{len(names)} names: {list(names)}."
            )
        self.task_names = names

    def _bind_state_sync(self, sync):
        """Called by the model: `sync` runs before any `assign`, so that a
        trainer holding the state outside the Variables (JAX's `fit`) writes
        it back first and reads the new value at its next step."""
        self._before_assign = None if sync is None else weakref.WeakMethod(sync)

    def assign(self, weights):
        """Sets the fixed task weights, between steps or from a callback.

        Args:
            weights: a dict from task name to weight (tasks not named keep
                their weight) or a sequence of K weights. Each must be finite
                and >= 0. Nothing is changed if any entry is invalid.
        """
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} is not built yet: compile the model first "
                "(or build it with (K,))."
            )
        current = np.array(keras.ops.convert_to_numpy(self.task_weights), dtype="float32")
        new = current.copy()
        names = self.task_names or tuple(f"task_{i}" for i in range(len(current)))
        if isinstance(weights, dict):
            unknown = sorted(set(weights) - set(names))
            if unknown:
                raise ValueError(
                    f"assign() names unknown task(s) {unknown}; the tasks are {list(names)}."
                )
            for key, value in weights.items():
                new[names.index(key)] = check_weight(value, f"The weight of task {key!r}")
        else:
            values = list(np.asarray(weights, dtype="float64").reshape(-1))
            if len(values) != len(current):
                raise ValueError(
                    f"assign() got {len(values)} weights for {len(current)} tasks "
                    f"{list(names)}."
                )
            for i, value in enumerate(values):
                new[i] = check_weight(value, f"The weight of task {names[i]!r}")
        sync = self._before_assign() if self._before_assign is not None else None
        if sync is not None:
            sync()
        self.task_weights.assign(new)

    def get_task_weights(self):
        """The fixed task weights, as a dict from task name to float."""
        values = keras.ops.convert_to_numpy(self.task_weights)
        names = self.task_names or tuple(f"task_{i}" for i in range(len(values)))
        return {name: float(v) for name, v in zip(names, values)}
