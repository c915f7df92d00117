"""Tasks: the named loss terms a `MultiLossModel` trains on.

A task is one of:
- the loss of one output (named after the output);
- one component of a `CombinedLoss` on an output (named after the component
  in a single-output model, `<output>_<component>` otherwise);
- `added_loss`: everything the model's layers add with `add_loss`, plus
  weight regularisers (Keras's `model.losses`).

Outputs follow Keras's order: a dict of outputs in sorted key order, a list
in its own order. Positional arguments (a list of losses, of loss weights, of
targets) are matched in that order, as Keras matches them.
"""

import dataclasses

import keras
from keras import ops

from multiloss._keras import compute_output_spec
from multiloss.losses import CombinedLoss, check_weight, get_loss

__all__ = ["ADDED_LOSS", "Task", "Tasks", "resolve_tasks", "check_compile_arguments"]

ADDED_LOSS = "added_loss"


@dataclasses.dataclass(frozen=True)
class Task:
    """One named loss term.

    Attributes:
        name: the key used in `compile`, in logs and in errors.
        output: the output the loss reads (`None` for `added_loss`).
        loss: the `keras.losses.Loss` computing it (`None` for `added_loss`).
        weight: its fixed weight, from `compile(loss_weights=...)` times its
            `CombinedLoss` weight.
    """

    name: str
    output: str | None
    loss: keras.losses.Loss | None
    weight: float


def check_compile_arguments(loss, loss_weights):
    """The checks that need no knowledge of the model's outputs: every loss
    resolves and reduces to a scalar, every weight is finite and >= 0."""
    if isinstance(loss, dict):
        for key, value in loss.items():
            _check_loss_entry(value, f"compile(loss=...) entry for output {key!r}")
    elif isinstance(loss, (list, tuple)):
        for i, value in enumerate(loss):
            _check_loss_entry(value, f"compile(loss=...) entry {i}")
    elif loss is not None:
        _check_loss_entry(loss, "compile(loss=...)")
    if isinstance(loss_weights, dict):
        for key, value in loss_weights.items():
            check_weight(value, f"compile(loss_weights=...) entry for {key!r}")
    elif isinstance(loss_weights, (list, tuple)):
        for i, value in enumerate(loss_weights):
            if value is not None:
                check_weight(value, f"compile(loss_weights=...) entry {i}")
    elif loss_weights is not None:
        check_weight(loss_weights, "compile(loss_weights=...)")


def _check_loss_entry(value, where):
    if value is not None and not isinstance(value, CombinedLoss):
        get_loss(value, where)


def output_keys(y_pred, output_names):
    """The names of a model's outputs, in Keras's flat order."""
    if isinstance(y_pred, dict):
        for key, value in y_pred.items():
            if not isinstance(key, str):
                raise ValueError(f"Output names must be strings, got {key!r}.")
            if keras.tree.is_nested(value):
                raise ValueError(
                    f"Output {key!r} is a nested structure; multiloss needs one "
                    "tensor per output: flatten the model's outputs."
                )
        return tuple(sorted(y_pred))
    if isinstance(y_pred, (list, tuple)):
        for i, value in enumerate(y_pred):
            if keras.tree.is_nested(value):
                raise ValueError(
                    f"Output {i} is a nested structure; multiloss needs one "
                    "tensor per output: flatten the model's outputs."
                )
        if output_names and len(output_names) == len(y_pred):
            return tuple(output_names)
        return tuple(f"output_{i}" for i in range(len(y_pred)))
    if output_names and len(output_names) == 1:
        return (output_names[0],)
    return ("output",)


def resolve_tasks(loss, loss_weights, y_pred, output_names, has_added_loss):
    """Turns `compile`'s `loss` and `loss_weights` into `Tasks`.

    Args:
        loss, loss_weights: as given to `compile`.
        y_pred: the model's output structure (tensors or `KerasTensor`s).
        output_names: `model.output_names` where the model has them.
        has_added_loss: whether the model adds losses (`add_loss`,
            regularisers).
    """
    keys = output_keys(y_pred, output_names)
    per_output = _losses_per_output(loss, keys)
    tasks = []
    for key, identifier in per_output.items():
        where = f"compile(loss=...) for output {key!r}"
        if isinstance(identifier, CombinedLoss):
            for component, component_loss in identifier.losses.items():
                name = component if len(keys) == 1 else f"{key}_{component}"
                tasks.append(
                    Task(name, key, component_loss, identifier.weights[component])
                )
        else:
            tasks.append(Task(key, key, get_loss(identifier, where), 1.0))
    if has_added_loss:
        tasks.append(Task(ADDED_LOSS, None, None, 1.0))
    if not tasks:
        raise ValueError(
            "Nothing to train on: compile(loss=...) gives no loss for any output "
            f"(the outputs are {list(keys)}) and the model adds no loss."
        )
    _check_unique([task.name for task in tasks])
    tasks = _apply_loss_weights(tasks, loss_weights, keys)
    return Tasks(tuple(tasks), keys, _structure(y_pred))


def _structure(y_pred):
    if isinstance(y_pred, dict):
        return "dict"
    if isinstance(y_pred, (list, tuple)):
        return "list"
    return "single"


def _losses_per_output(loss, keys):
    if loss is None:
        return {}
    if isinstance(loss, dict):
        unknown = sorted(set(loss) - set(keys))
        if unknown:
            raise ValueError(
                f"compile(loss=...) names output(s) {unknown} that the model does "
                f"not have; its outputs are {list(keys)}."
            )
        return {key: loss[key] for key in keys if loss.get(key) is not None}
    if isinstance(loss, (list, tuple)):
        if len(loss) != len(keys):
            raise ValueError(
                f"compile(loss=[...]) has {len(loss)} entries for the model's "
                f"{len(keys)} outputs {list(keys)}; give one per output (None for "
                "an output without loss) or a dict keyed by output name."
            )
        return {key: value for key, value in zip(keys, loss) if value is not None}
    # One loss for every output, summed: Keras's behaviour.
    return {key: loss for key in keys}


def _check_unique(names):
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(
                f"Two tasks are named {name!r} (an output, a CombinedLoss component "
                f"or '{ADDED_LOSS}'); rename one. Tasks: {names}."
            )
        seen.add(name)


def _apply_loss_weights(tasks, loss_weights, keys):
    if loss_weights is None:
        return tasks
    factors = {}  # output name or task name -> factor
    if isinstance(loss_weights, dict):
        valid = list(dict.fromkeys(list(keys) + [task.name for task in tasks]))
        unknown = sorted(set(loss_weights) - set(valid))
        if unknown:
            raise ValueError(
                f"compile(loss_weights=...) names {unknown}, which is neither an "
                f"output nor a task; valid names: {valid}."
            )
        factors = {
            key: check_weight(value, f"compile(loss_weights=...) entry for {key!r}")
            for key, value in loss_weights.items()
        }
    elif isinstance(loss_weights, (list, tuple)):
        if len(loss_weights) != len(keys):
            raise ValueError(
                f"compile(loss_weights=[...]) has {len(loss_weights)} entries for "
                f"the model's {len(keys)} outputs {list(keys)}."
            )
        factors = {
            key: check_weight(value, f"compile(loss_weights=...) entry {i} ({key!r})")
            for i, (key, value) in enumerate(zip(keys, loss_weights))
            if value is not None
        }
    else:
        if len(keys) != 1:
            raise ValueError(
                f"compile(loss_weights={loss_weights!r}): a single number fits a "
                f"single-output model; this one has outputs {list(keys)}: give a "
                "list or a dict."
            )
        factors = {keys[0]: check_weight(loss_weights, "compile(loss_weights=...)")}
    weighted = []
    for task in tasks:
        weight = task.weight
        if task.output is not None and task.output in factors and task.output != task.name:
            weight *= factors[task.output]
        if task.name in factors:
            weight *= factors[task.name]
        weighted.append(dataclasses.replace(task, weight=weight))
    return weighted


class Tasks:
    """The resolved tasks of a compiled model and how to compute their losses.

    `values(...)` returns the (K,) vector of unweighted task losses, in
    `names` order, as float32.
    """

    def __init__(self, tasks, output_keys, structure):
        self.tasks = tasks
        self.output_keys = output_keys
        self.structure = structure

    @property
    def names(self):
        return tuple(task.name for task in self.tasks)

    @property
    def weights(self):
        return tuple(task.weight for task in self.tasks)

    def __len__(self):
        return len(self.tasks)

    def __repr__(self):
        items = ", ".join(f"{t.name}={t.weight:g}" for t in self.tasks)
        return f"Tasks({items})"

    def check_scalar(self, y_pred):
        """Raises, naming the task, if a loss does not reduce to a scalar on
        symbolic outputs `y_pred` (with targets shaped like the outputs; a
        loss that cannot take such targets is checked at its first step)."""
        preds = self._by_output(y_pred, "outputs")
        for task in self.tasks:
            if task.loss is None:
                continue
            y = preds[task.output]
            try:
                spec = compute_output_spec(task.loss, y, y)
            except Exception:  # the targets' true shape is not known yet
                continue
            _check_scalar_shape(task, spec.shape)

    def values(self, y_true, y_pred, sample_weight, added_losses, aggregate_added_loss,
               stack=True):
        """The (K,) vector of unweighted task losses (a list of K scalars if
        `stack` is False).

        Args:
            y_true, y_pred, sample_weight: as Keras passes them to
                `compute_loss`.
            added_losses: the model's `losses` (from `add_loss` and
                regularisers) for this forward pass.
            aggregate_added_loss: turns one added loss into a scalar the way
                the backend's trainer does (it scales for distribution).
        """
        preds = self._by_output(y_pred, "outputs")
        targets = self._targets(y_true)
        weights = self._sample_weights(sample_weight)
        has_added_task = self.tasks[-1].name == ADDED_LOSS
        if added_losses and not has_added_task:
            raise ValueError(
                "The model added losses with add_loss (or has weight regularisers) "
                "that were not there when the tasks were resolved, so no "
                f"'{ADDED_LOSS}' task holds them. Build the model (call it once) "
                "before compile, or make the layer add its loss on every call."
            )
        values = []
        for task in self.tasks:
            if task.name == ADDED_LOSS:
                if added_losses:
                    value = sum(aggregate_added_loss(l) for l in added_losses)
                else:
                    value = ops.zeros((), "float32")
            else:
                if task.output not in targets:
                    raise ValueError(
                        f"No target for output {task.output!r} (task {task.name!r}); "
                        f"the targets given are for {sorted(targets)}."
                    )
                value = task.loss(
                    targets[task.output], preds[task.output], weights.get(task.output)
                )
            value = ops.cast(value, "float32")
            _check_scalar_shape(task, value.shape)
            values.append(value)
        return ops.stack(values) if stack else values

    def _by_output(self, structure, what):
        if self.structure == "dict":
            if isinstance(structure, dict):
                return dict(structure)
            if isinstance(structure, (list, tuple)):
                return self._zip(structure, what)
            return self._zip([structure], what)
        if self.structure == "list":
            if isinstance(structure, dict):
                unknown = sorted(set(structure) - set(self.output_keys))
                if unknown:
                    raise ValueError(
                        f"The {what} name {unknown}, which the model does not "
                        f"have; its outputs are {list(self.output_keys)}."
                    )
                return dict(structure)
            if isinstance(structure, (list, tuple)):
                return self._zip(structure, what)
            return self._zip([structure], what)
        if isinstance(structure, (list, tuple)) and len(structure) == 1:
            structure = structure[0]
        if isinstance(structure, dict) and len(structure) == 1:
            structure = next(iter(structure.values()))
        return {self.output_keys[0]: structure}

    def _zip(self, items, what):
        keys = self.output_keys
        if len(items) != len(keys):
            with_loss = [k for k in keys if any(t.output == k for t in self.tasks)]
            if len(items) == len(with_loss):
                keys = with_loss
            else:
                raise ValueError(
                    f"Got {len(items)} {what} for the model's {len(self.output_keys)} "
                    f"outputs {list(self.output_keys)}."
                )
        return dict(zip(keys, items))

    def _targets(self, y_true):
        if y_true is None:
            return {}
        return self._by_output(y_true, "targets")

    def _sample_weights(self, sample_weight):
        if sample_weight is None:
            return {}
        if isinstance(sample_weight, (dict, list, tuple)):
            return self._by_output(sample_weight, "sample weights")
        return {key: sample_weight for key in self.output_keys}


def _check_scalar_shape(task, shape):
    if len(shape) != 0:
        raise ValueError(
            f"The loss of task {task.name!r} returns shape {tuple(shape)}; each task "
            "loss must reduce to a scalar (a Loss with reduction='none' or a "
            "__call__ that skips the reduction does not)."
        )
