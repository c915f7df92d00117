"""`PCGrad`: projecting conflicting gradients (Yu et al. 2020)."""

import random

import keras
from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import Aggregator
from multiloss.balancer import register

__all__ = ["PCGrad"]


def random_orders(num_tasks, seed_generator, training):
    """(K, K) int: row i is the order in which task i visits the tasks (a
    fresh random permutation per row from the seed generator when training;
    the identity order otherwise, which leaves the generator untouched)."""
    if training:
        u = keras.random.uniform((num_tasks, num_tasks), seed=seed_generator)
        return ops.cast(ops.argsort(u, axis=1), "int32")
    return ops.tile(ops.arange(num_tasks, dtype="int32")[None, :], (num_tasks, 1))


class _Seeded:
    """Mixin: a seeded `keras.random.SeedGenerator` created in `build`,
    restored by `reset`."""

    def _build_seed(self):
        seed = self.seed if self.seed is not None else random.randint(1, 10**9)
        self._initial_seed = int(seed)
        self.seed_generator = keras.random.SeedGenerator(self._initial_seed)

    def _reset_seed(self):
        state = self.seed_generator.state
        state.assign(ops.convert_to_tensor([self._initial_seed, 0], dtype=state.dtype))


@register("pcgrad")
class PCGrad(_Seeded, Aggregator):
    """Projecting conflicting gradients (Yu et al., "Gradient Surgery for
    Multi-Task Learning", NeurIPS 2020, Algorithm 1).

    For each task i, starting from `g_i^PC = g_i`, visit the other tasks j in
    a random order and remove the conflicting component:

        if g_i^PC . g_j < 0:   g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j

    then `d = sum_i g_i^PC`. Every `g_i^PC` is a combination of the rows,
    so PCGrad is a weighting of the Gram matrix: the coefficients are
    tracked from `G` alone (`g_i^PC . g_j = (c_i G)_j`). A fresh random order
    per task and step comes from a `keras.random.SeedGenerator` (state kept
    with the model; `reset()` restores it); with `training=False` the order is
    the task order and the generator is not advanced. For K = 2 the order
    does not matter.

    The paper has no hyperparameter.

    Args:
        seed: int in [0, 2**31 - 1] or None (a random seed from Python's
            `random`, which `keras.utils.set_random_seed` seeds).

    Scale of the update: the weights are free; each task keeps its own
    weight 1 and conflicts add positive multiples of other rows, so their
    sum is >= K and equals K when no pair conflicts (then `d` is `Sum`'s).

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 0.0], [-1.0, 1.0]], "float32")  # conflicting
    d = multiloss.aggregators.PCGrad(seed=0)(J)
    print(np.asarray(d))  # [0.5 1.5]
    ```
    """

    def __init__(self, seed=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.seed = C.check_seed(seed, "PCGrad")

    def build(self, input_shape):
        super().build(input_shape)
        self._build_seed()

    def reset(self):
        self._reset_seed()

    def weighting(self, gram, losses=None, training=True):
        gram, _ = C.max_diag_scale(C.prepare_gram(gram))
        k = gram.shape[0]
        perm = random_orders(k, self.seed_generator, training)
        sq = ops.diagonal(gram)
        rows = ops.arange(k, dtype="int32")

        # g_i^PC = sum_k C[i, k] g_k is tracked through R = C G (R[i, j] =
        # g_i^PC . g_j) and the column sums of C (the weights): removing
        # s_i g_j from g_i^PC subtracts s_i G[j] from R[i] and s_i from w_j.
        def body(t, state):
            r, w = state
            j = ops.take(perm, t, axis=1)  # the task each row visits at step t
            inner = ops.take_along_axis(r, j[:, None], axis=1)[:, 0]  # g_i^PC . g_j
            sq_j = ops.take(sq, j)
            conflict = ops.logical_and(inner < 0.0, ops.not_equal(j, rows))
            conflict = ops.logical_and(conflict, sq_j > C.TINY)
            step = ops.where(conflict, inner / ops.where(conflict, sq_j, 1.0), 0.0)
            r = r - step[:, None] * ops.take(gram, j, axis=0)
            w = w - ops.matmul(step[None, :], ops.one_hot(j, k))[0]
            return r, w

        _, w = ops.fori_loop(0, k, body, (gram, ops.ones((k,), "float32")))
        return w

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
