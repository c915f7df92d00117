"""`GradVac`: gradient vaccine (Wang et al. 2021)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import Aggregator
from multiloss.aggregators.pcgrad import _Seeded, random_orders
from multiloss.balancer import register

__all__ = ["GradVac"]


@register("gradvac")
class GradVac(_Seeded, Aggregator):
    """Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine:
    Investigating and Improving Multi-task Optimization in Massively
    Multilingual Models", ICLR 2021, Algorithm 1): PCGrad generalised to
    adaptive similarity targets. For each task i, visiting the other tasks j
    in a random order, with `phi_ij` the cosine between the current `g_i'`
    and `g_j`, and `phi_hat_ij` an exponential moving average of it (state,
    0 at the start):

        if phi_ij < phi_hat_ij:
            g_i' += g_j ||g_i'|| (phi_hat_ij sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi_hat_ij^2))
                        / (||g_j|| sqrt(1 - phi_hat_ij^2))
        phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij

    and `d = sum_i g_i'`. With `phi_hat = 0` it is PCGrad. Everything is
    computed from the Gram matrix (`g_i' = c_i J`), so GradVac is a weighting
    of it, on the whole shared parameter set (LibMTL's `group_type=0`; the
    paper's per-layer targets would need one Gram matrix per layer). The
    random orders come from a seeded `keras.random.SeedGenerator`; `reset()`
    restores the targets to 0 and the generator. The targets change only in
    training steps.

    Paper defaults: beta is a hyperparameter of the paper; 0.5 is LibMTL's
    and torchjd's default.

    Args:
        beta: float in [0, 1] (default 0.5), the EMA rate.
        eps: float in [0, 1] (default 1e-8), added to the norm products
            (relative to the largest gradient norm).
        seed: int in [0, 2**31 - 1] or None.

    Scale of the update: free; like PCGrad's, the weights sum to >= K when
    the corrections add positive multiples.

    Example:

    ```python
    import numpy as np, multiloss
    gradvac = multiloss.aggregators.GradVac(seed=0)
    J = np.array([[1.0, 0.0], [-0.5, 1.0]], "float32")
    print(np.asarray(gradvac(J)))  # first step: PCGrad's result
    print(np.asarray(gradvac.targets))  # the EMA of the cosines
    ```
    """

    def __init__(self, beta=0.5, eps=1e-8, seed=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.beta = C.check_number("beta", beta, 0.0, 1.0, owner="GradVac")
        self.eps = C.check_number("eps", eps, 0.0, 1.0, owner="GradVac")
        self.seed = C.check_seed(seed, "GradVac")

    def build(self, input_shape):
        super().build(input_shape)
        k = input_shape[0]
        self.targets = self.add_weight(
            shape=(k, k), initializer="zeros", trainable=False, name="targets"
        )
        self._build_seed()

    def reset(self):
        self.targets.assign(ops.zeros(self.targets.shape))
        self._reset_seed()

    def weighting(self, gram, losses=None, training=True):
        gram, _ = C.max_diag_scale(C.prepare_gram(gram))
        k = gram.shape[0]
        perm = random_orders(k, self.seed_generator, training)
        targets = C.read(self.targets)
        sq = ops.diagonal(gram)
        n = ops.sqrt(ops.maximum(sq, 0.0))
        rows = ops.arange(k, dtype="int32")
        beta, eps = self.beta, self.eps

        # g_i' = sum_k C[i, k] g_k is tracked through R = C G (R[i, j] =
        # g_i' . g_j), its squared norm, and the column sums of C (the
        # weights); adding c_i g_j to g_i' adds c_i G[j] to R[i].
        def body(t, state):
            r, sq_i, w, new_targets = state
            j = ops.take(perm, t, axis=1)
            inner = ops.take_along_axis(r, j[:, None], axis=1)[:, 0]  # g_i' . g_j
            norm_i = ops.sqrt(ops.maximum(sq_i, 0.0))
            norm_j = ops.take(n, j)
            phi = ops.clip(inner / (norm_i * norm_j + eps), -1.0, 1.0)
            target = ops.take_along_axis(targets, j[:, None], axis=1)[:, 0]  # phi_hat[i, j_i]
            other = ops.not_equal(j, rows)
            fire = ops.logical_and(ops.logical_and(phi < target, other), norm_j > 0.0)
            root_t = ops.sqrt(ops.maximum(1.0 - target * target, 0.0))
            root_p = ops.sqrt(ops.maximum(1.0 - phi * phi, 0.0))
            coef = norm_i * (target * root_p - phi * root_t) / (norm_j * root_t + eps)
            coef = ops.where(fire, coef, 0.0)
            r = r + coef[:, None] * ops.take(gram, j, axis=0)
            sq_i = sq_i + 2.0 * coef * inner + coef * coef * ops.take(sq, j)
            onehot = ops.one_hot(j, k)
            w = w + ops.matmul(coef[None, :], onehot)[0]
            ema = (1.0 - beta) * target + beta * phi
            update = ops.where(other, ema, target)
            new_targets = new_targets + (update - target)[:, None] * onehot
            return r, sq_i, w, new_targets

        _, _, w, new_targets = ops.fori_loop(
            0, k, body, (gram, sq, ops.ones((k,), "float32"), targets)
        )
        if training:
            self.targets.assign(new_targets)
        return w

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "eps": self.eps, "seed": self.seed}
