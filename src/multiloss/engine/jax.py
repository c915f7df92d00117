"""JAX engine."""

import jax


def jit(fn):
    return jax.jit(fn)
