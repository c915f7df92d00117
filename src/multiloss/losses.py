"""`CombinedLoss`: several losses on one output."""

import math
import numbers

import keras
from keras import ops

from multiloss._keras import LossFunctionWrapper

__all__ = ["CombinedLoss", "get_loss", "check_weight"]


def check_weight(value, where):
    """Returns `value` as a float, or raises naming `where` if it is not a
    finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:
            value = float(value)  # numpy scalars, 0-d arrays
        except (TypeError, ValueError):
            raise ValueError(
                f"{where} must be a number, got {value!r} of type "
                f"{type(value).__name__}."
            ) from None
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{where} must be finite, got {value}.")
    if value < 0:
        raise ValueError(f"{where} must be >= 0, got {value}.")
    return value


def get_loss(identifier, where):
    """Resolves a loss identifier (name, function or `Loss`) to a `Loss`
    that reduces to a scalar, or raises naming `where`."""
    if isinstance(identifier, keras.losses.Loss):
        loss = identifier
    elif isinstance(identifier, str) or callable(identifier):
        if isinstance(identifier, str) and identifier.lower() in ("crossentropy", "ce"):
            raise ValueError(
                f"{where}: '{identifier}' is ambiguous here; name the loss: "
                "'binary_crossentropy', 'categorical_crossentropy' or "
                "'sparse_categorical_crossentropy'."
            )
        try:
            fn = keras.losses.get(identifier)
        except ValueError as e:
            raise ValueError(f"{where}: unknown loss {identifier!r} ({e}).") from None
        if isinstance(fn, keras.losses.Loss):
            loss = fn
        else:
            name = identifier if isinstance(identifier, str) else getattr(
                fn, "__name__", "loss"
            )
            loss = LossFunctionWrapper(fn, name=name)
    else:
        raise ValueError(
            f"{where} must be a loss name, a function (y_true, y_pred) or a "
            f"keras.losses.Loss, got {identifier!r}."
        )
    reduction = getattr(loss, "reduction", "sum_over_batch_size")
    if reduction in (None, "none"):
        raise ValueError(
            f"{where}: the loss {loss.name!r} has reduction={reduction!r}, so it "
            "returns one value per sample; each task needs a scalar. Use a "
            "reducing loss (Keras's default reduction='sum_over_batch_size')."
        )
    return loss


@keras.saving.register_keras_serializable(package="multiloss")
class CombinedLoss(keras.losses.Loss):
    """Several losses on one output, as one weighted sum.

    In a plain `keras.Model` this is an ordinary loss whose value is
    `sum_i weights[i] * losses[i](y_true, y_pred, sample_weight)`, each
    component reduced as it would be alone. In a `multiloss.MultiLossModel`
    each component becomes its own task: logged as `<task>_loss`, weighted,
    and balanced like any other task. The task is named after the component
    in a single-output model, and `<output>_<component>` otherwise.

    Args:
        losses: dict from component name to a loss (name, function or
            `keras.losses.Loss`).
        weights: optional dict from component name to a finite, non-negative
            weight; missing components weigh 1.
        name: the loss's name.

    Example:

    ```python
    import keras, multiloss
    loss = multiloss.CombinedLoss(
        {"ce": "categorical_crossentropy",
         "focal": keras.losses.CategoricalFocalCrossentropy()},
        weights={"focal": 0.5},
    )
    y_true = keras.ops.one_hot(keras.ops.array([0, 1]), 3)
    y_pred = keras.ops.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])
    print(float(loss(y_true, y_pred)))  # ce + 0.5 * focal
    ```
    """

    def __init__(self, losses, weights=None, name="combined_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(losses, dict) or not losses:
            raise ValueError(
                "CombinedLoss needs a non-empty dict {component name: loss}, "
                f"got {losses!r}."
            )
        for key in losses:
            if not isinstance(key, str) or not key:
                raise ValueError(
                    f"CombinedLoss component names must be non-empty strings, got {key!r}."
                )
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(losses))
        if unknown:
            raise ValueError(
                f"CombinedLoss(weights=...) names unknown component(s) {unknown}; "
                f"the components are {sorted(losses)}."
            )
        self._identifiers = dict(losses)
        self.losses = {
            key: get_loss(value, f"CombinedLoss component {key!r}")
            for key, value in losses.items()
        }
        self.weights = {
            key: check_weight(weights.get(key, 1.0), f"CombinedLoss weight for {key!r}")
            for key in losses
        }

    def __call__(self, y_true, y_pred, sample_weight=None):
        total = None
        for key, loss in self.losses.items():
            value = ops.multiply(
                ops.cast(loss(y_true, y_pred, sample_weight), "float32"),
                self.weights[key],
            )
            total = value if total is None else ops.add(total, value)
        return total

    def call(self, y_true, y_pred):
        # Reached only if a caller bypasses `__call__`: the unreduced
        # weighted sum of the components' unreduced values.
        total = None
        for key, loss in self.losses.items():
            value = ops.multiply(loss.call(y_true, y_pred), self.weights[key])
            total = value if total is None else ops.add(total, value)
        return total

    def get_config(self):
        config = super().get_config()
        # A name stays a name; anything else is saved as the Loss it became.
        losses = {}
        for key, loss in self.losses.items():
            identifier = self._identifiers[key]
            losses[key] = identifier if isinstance(identifier, str) else keras.losses.serialize(loss)
        config.update(losses=losses, weights=dict(self.weights))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["losses"] = {
            key: keras.losses.deserialize(value) if isinstance(value, dict) else value
            for key, value in config["losses"].items()
        }
        return cls(**config)
