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


def _normalize(alias):
    """Aliases ignore case, underscores and hyphens: 'scale_normalized',
    'ScaleNormalized' and 'scalenormalized' name the same balancer."""
    return alias.lower().replace("_", "").replace("-", "")


def register(alias):
    """Class decorator: registers a balancer under `alias` (kept as its class
    name in lower case, without underscores) and for Keras serialisation."""
    alias = _normalize(alias)

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
        key = _normalize(identifier)
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
    describe their hyperparameters in `get_config`. Optional hooks:

    - `on_epoch_begin(epoch)`, `on_epoch_end(epoch, logs)`: called by the
      model's `fit` before any user callback (so `BackupAndRestore` saves
      the state after the hook ran), outside the compiled step;
    - `log_names` and `logs()`: extra scalars for the training logs (e.g. a
      solver's count of non-converged steps), read inside the step, logged
      as their latest value;
    - `step_variables()`: the state a training step assigns (default: all
      non-trainable variables but `task_weights`), which a skipped step
      restores.
    """

    log_names = ()

    def __init__(self, name=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # state stays float32 under mixed precision
        super().__init__(name=name, **kwargs)
        self.task_names = None
        self._initial_task_weights = None
        self._state_sync = None

    def step_variables(self):
        """The non-trainable variables a training step may assign, which a
        skipped step puts back: all of them but `task_weights` (changed
        between steps only) unless a rule says which (one whose state
        changes between steps spares the step that work: torch copies each
        of these at every step)."""
        fixed = getattr(self, "task_weights", None)
        return [v for v in self.non_trainable_variables if v is not fixed]

    def build(self, input_shape):
        if len(input_shape) != 1 or input_shape[0] is None or input_shape[0] < 1:
            raise ValueError(
                f"{type(self).__name__} is built with the shape (K,) of the task "
                f"loss vector, got {input_shape}."
            )
        initial = self._initial_task_weights
        if initial is None or len(initial) != input_shape[0]:
            initial = np.ones(input_shape[0], "float32")
        self.task_weights = self.add_weight(
            shape=(input_shape[0],),
            # A callable initializer: the value is right from creation, also
            # when the first trace of a compiled step creates the state.
            initializer=lambda shape, dtype: keras.ops.convert_to_tensor(initial, dtype),
            trainable=False,
            name="task_weights",
        )

    def setup(self, task_names, task_weights=None):
        """Builds the balancer for these tasks with these fixed weights, or,
        if it is built already for as many tasks, names them and assigns the
        weights. The model calls this at compile."""
        names = tuple(task_names)
        weights = np.ones(len(names), "float32") if task_weights is None else np.asarray(
            task_weights, "float32"
        )
        if self.built:
            if len(names) != self.num_tasks:
                raise ValueError(
                    f"{type(self).__name__} is built for {self.num_tasks} tasks, got "
                    f"{len(names)}: {list(names)}."
                )
            self.task_weights.assign(weights)
        else:
            self._initial_task_weights = weights
            self.build((len(names),))
        self.task_names = names

    def build_state(self, variables):
        """Creates state shaped like the model's variables (DB-MTL's moving
        average of the gradients). The model calls it at compile, or before
        the first step, outside any compiled function, with all its
        trainable variables; most balancers need nothing here."""

    @property
    def num_tasks(self):
        return None if not self.built else int(self.task_weights.shape[0])

    def _bind_state_sync(self, sync):
        """Called by the model: `sync` runs before the state is read or
        assigned, so that a trainer holding the state outside the Variables
        (JAX's `fit`) writes it back first and reads the new value at its
        next step."""
        self._state_sync = None if sync is None else weakref.WeakMethod(sync)

    def _sync_state(self):
        sync = self._state_sync() if self._state_sync is not None else None
        if sync is not None:
            sync()

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
        self._sync_state()
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
        self.task_weights.assign(new)

    # Keras saves a layer's variables but not its seed generators' state:
    # add it, so that `.keras` files, weights files and BackupAndRestore
    # continue a seeded random sequence (RLW, PCGrad's order, GradDrop).

    def _saved_variables(self):
        return (
            list(self._trainable_variables)
            + list(self._non_trainable_variables)
            + [generator.state for generator in self._seed_generators]
        )

    def save_own_variables(self, store):
        for i, variable in enumerate(self._saved_variables()):
            store[f"{i}"] = variable

    def load_own_variables(self, store):
        variables = self._saved_variables()
        plain = len(variables) - len(self._seed_generators)
        count = len(store.keys())
        if count not in (plain, len(variables)):
            raise ValueError(
                f"{type(self).__name__} {self.name!r} expects {len(variables)} saved "
                f"values ({plain} variables and {len(self._seed_generators)} seed states); "
                f"the file has {count}."
            )
        for i in range(count):
            variables[i].assign(store[f"{i}"])

    def on_epoch_begin(self, epoch):
        """Called before each training epoch (outside the compiled step)."""

    def on_epoch_end(self, epoch, logs=None):
        """Called after each training epoch, with its logs (validation
        included), before any user callback."""

    def logs(self):
        """A dict from each name in `log_names` to a scalar tensor."""
        return {}

    def get_task_weights(self):
        """The fixed task weights, as a dict from task name to float."""
        self._sync_state()
        values = keras.ops.convert_to_numpy(self.task_weights)
        names = self.task_names or tuple(f"task_{i}" for i in range(len(values)))
        return {name: float(v) for name, v in zip(names, values)}
