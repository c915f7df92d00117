"""What the weighting balancers share: option checks and state helpers.

Every check raises a `ValueError` at construction that names the class, the
option and what it accepts.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from multiloss.engine import ops as step_ops

__all__ = [
    "LAYER_OPTIONS",
    "check_kwargs",
    "check_float",
    "check_int",
    "check_choice",
    "check_per_task",
    "per_task_tensor",
    "positive_part",
    "add_state",
]

# What `keras.layers.Layer.get_config` writes besides our own options; a
# balancer rebuilt from its config gets them back as keyword arguments.
LAYER_OPTIONS = ("trainable", "dtype")


def check_kwargs(owner, kwargs, options):
    """Raises if `kwargs` holds anything but the Layer's own arguments."""
    unknown = sorted(set(kwargs) - set(LAYER_OPTIONS))
    if unknown:
        raise ValueError(
            f"{owner}() got unknown option(s) {unknown}; valid options: "
            f"{sorted(set(options) | {'name'})}."
        )


def _real(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{owner}({name}={value!r}): {name} must be a number, got "
            f"{type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}({name}={value!r}): {name} must be finite.")
    return value


def check_float(owner, name, value, low=None, high=None, low_open=False, high_open=False):
    """`value` as a float in [low, high] (open ends where asked)."""
    value = _real(owner, name, value)
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{owner}({name}={value!r}): {name} must be {bound}.")
    if high is not None and (value > high or (high_open and value == high)):
        bound = f"< {high}" if high_open else f"<= {high}"
        raise ValueError(f"{owner}({name}={value!r}): {name} must be {bound}.")
    return value


def check_int(owner, name, value, low=0, high=None):
    """`value` as an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{owner}({name}={value!r}): {name} must be an integer, got "
            f"{type(value).__name__}."
        )
    value = int(value)
    if value < low:
        raise ValueError(f"{owner}({name}={value!r}): {name} must be >= {low}.")
    if high is not None and value > high:
        raise ValueError(f"{owner}({name}={value!r}): {name} must be <= {high}.")
    return value


def check_choice(owner, name, value, choices):
    if value not in choices:
        raise ValueError(
            f"{owner}({name}={value!r}): unknown {name}; valid choices: {list(choices)}."
        )
    return value


def check_per_task(owner, name, value):
    """A float or a sequence of floats (one per task), all finite; returned
    as a float or a list (the length is checked at build)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return _real(owner, name, value)
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(
            f"{owner}({name}={value!r}): {name} must be a number or a sequence "
            "of numbers, one per task."
        ) from None
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"{owner}({name}={value!r}): every entry must be finite.")
    return values


def per_task_tensor(owner, name, value, num_tasks):
    """A per-task option checked against K: a float stays a float (one
    fewer conversion per step), a list becomes a (K,) float32 tensor."""
    if isinstance(value, list):
        if len(value) != num_tasks:
            raise ValueError(
                f"{owner}({name}=...) has {len(value)} entries for {num_tasks} tasks."
            )
        return constant(np.asarray(value, "float32"))
    return float(value)


def constant(value):
    """A float32 tensor for a constant a rule uses at every step: an eager
    backend would wrap a Python float in a new tensor at each operation."""
    return ops.convert_to_tensor(value, "float32")


def positive_part(losses, floor):
    """`max(L - floor, 0)`: the shift and clamp of the log-based methods.

    A loss at or below its floor contributes a constant (no gradient)."""
    if isinstance(floor, float) and floor == 0.0:
        return step_ops.relu(losses)
    return step_ops.relu(losses - floor)


def add_state(layer, name, value, shape=None, dtype="float32", trainable=False):
    """A Variable of `layer`, tracked (so saved, and passed through JAX's
    stateless step), initialised to `value` (a scalar or an array)."""
    value = np.asarray(value, dtype)
    if shape is None:
        shape = value.shape
    value = np.broadcast_to(value, shape).copy()
    return layer.add_weight(
        shape=shape,
        # A callable initializer: the value is right from creation, also when
        # the first trace of a compiled step creates the state.
        initializer=lambda shape, dtype: keras.ops.convert_to_tensor(value, dtype),
        dtype=dtype,
        trainable=trainable,
        name=name,
    )
