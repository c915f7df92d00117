"""The engine: the only place with TensorFlow, JAX or torch code.

One module per backend (`engine/tensorflow.py`, `engine/jax.py`,
`engine/torch.py`); this module picks the one for `keras.backend.backend()`
and imports only that one.
"""

import importlib

import keras

__all__ = ["backend_module", "jit"]


def backend_module():
    """The engine module of the active Keras backend."""
    name = keras.backend.backend()
    if name not in ("tensorflow", "jax", "torch"):
        raise ValueError(
            f"multiloss runs on the tensorflow, jax and torch backends, not {name!r}."
        )
    return importlib.import_module(f"multiloss.engine.{name}")


def jit(fn, xla=False):
    """`fn` compiled the backend's way (tf.function, jax.jit; torch runs it
    eagerly). For pure functions of tensors: no Variable assignment.

    `xla=True` also compiles with XLA on TensorFlow (JAX always does): much
    faster for long loops of small operations, slower to compile."""
    return backend_module().jit(fn, xla=xla)
