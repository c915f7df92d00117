"""The few private Keras APIs multiloss relies on, gathered in one place.

Keras keeps these under `keras.src`; if a Keras release moves one, this is
the only module to change. Each is used the way Keras's own trainers use it.
"""

from keras.src.backend import compute_output_spec
from keras.src.backend.common.stateless_scope import in_stateless_scope
from keras.src.losses.loss import unscale_loss_for_distribution
from keras.src.losses.losses import LossFunctionWrapper
from keras.src.models import model as _model_module
from keras.src.models.functional import Functional
from keras.src.models.model import functional_init_arguments

__all__ = [
    "Functional",
    "functional_init_arguments",
    "init_functional",
    "compute_output_spec",
    "in_stateless_scope",
    "LossFunctionWrapper",
    "unscale_loss_for_distribution",
    "first_batch",
    "replace_tracked_attribute",
]


def first_batch(iterator):
    """The first batch of a Keras epoch iterator, as `Trainer._symbolic_build`
    reads it (keras 3.12 to 3.15: the iterator yields `(begin, end, data)`,
    where `data` is a list of batches or an iterator over them)."""
    for _, _, data in iterator:
        if isinstance(data, (list, tuple)):
            return data[0]
        return next(data)
    raise ValueError("The training data is empty: there is no batch to build from.")


def replace_tracked_attribute(layer, name, value):
    """Sets `layer.<name> = value`, untracking the previous value.

    A subclassed model locks its tracker once built, and Keras's
    `__delattr__` untracks variables but not layers or metrics; recompiling
    must replace the balancer and the loggers without leaving the old ones
    in `model.layers` or `model.metrics`.
    """
    tracker = layer._tracker
    was_locked = tracker.locked
    tracker.unlock()
    try:
        old = layer.__dict__.get(name)
        if old is not None:
            tracker.untrack(old)
            object.__delattr__(layer, name)
        if value is not None:
            setattr(layer, name, value)
    finally:
        if was_locked:
            tracker.lock()


def init_functional(model, args, kwargs):
    """What `keras.Model.__init__` does with functional arguments (inputs,
    outputs), minus its rewriting of the class hierarchy: Keras injects
    `Functional` into the bases of the instance's class and of every class
    up to `Model`, for good, which would turn `MultiLossModel` itself
    functional and break its subclass-style use in the same process."""
    _model_module.Trainer.__init__(model)
    Functional.__init__(model, *args, **kwargs)
