"""`NashMTL`: multi-task learning as a bargaining game (Navon et al. 2022)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import SolverAggregator
from multiloss.aggregators.fairgrad import diagonal_start, masked_power_weights
from multiloss.balancer import register

__all__ = ["NashMTL"]


@register("nashmtl")
class NashMTL(SolverAggregator):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game",
    ICML 2022): the Nash bargaining solution over the tasks' improvements
    `g_i . d`, which for `d = J^T alpha` is

        G alpha = 1 / alpha,   alpha > 0,

    with `G` divided by its Frobenius norm (as in the official code), then
    `d` clipped to norm `max_norm`. The paper approximates the solution by a
    sequence of convex problems solved by cvxpy; here the equation is the
    stationarity condition of the strictly convex
    `0.5 a^T G a - sum_i log(a_i)` and is solved in-graph by damped Newton,
    warm-started from the previous step's alpha (state), `max_iter` steps at
    most; non-converged steps are counted in the logged
    `nashmtl_nonconverged` (no silent fallback to constant weights). With
    `update_weights_every=n` the weights are recomputed every n-th training
    step and reused in between, as in the paper's speed-up.

    A task with a zero gradient (squared norm below 1e-12 times the largest)
    gets weight 0. At the solution every task improves: `g_i . d > 0`.

    Paper defaults: `update_weights_every=1`, `max_norm=1.0` (the official
    code's; its cvxpy loop has `optim_niter=20`).

    Args:
        max_norm: float in [0, 1e6] (default 1.0); 0 disables the clipping.
        update_weights_every: int in [1, 100000] (default 1).
        max_iter: int in [1, 1000] (default 50) Newton steps.
        tol: float in (0, 0.1] (default 1e-6), on the backward error of the
            equation (residual relative to the size of its terms).
        reg_eps: float in [0, 1] (default 1e-6), ridge on the normalised Gram
            matrix.

    Scale of the update: free, far below `Sum`'s: `||d|| = sqrt(K ||G||_F)`
    before clipping (about `sqrt(K)` times a gradient norm), then at most
    `max_norm`.

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 0.0], [-0.5, 1.0]], "float32")
    d = multiloss.aggregators.NashMTL(max_norm=0.0)(J)
    print(J @ np.asarray(d))  # every task improves
    ```
    """

    log_names = ("nashmtl_nonconverged",)

    def __init__(self, max_norm=1.0, update_weights_every=1, max_iter=50, tol=1e-6,
                 reg_eps=1e-6, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.max_norm = C.check_number("max_norm", max_norm, 0.0, 1e6, owner="NashMTL")
        self.update_weights_every = C.check_int(
            "update_weights_every", update_weights_every, 1, 100000, "NashMTL"
        )
        self.max_iter = C.check_int("max_iter", max_iter, 1, 1000, "NashMTL")
        self.tol = C.check_number("tol", tol, 0.0, 0.1, low_open=True, owner="NashMTL")
        self.reg_eps = C.check_number("reg_eps", reg_eps, 0.0, 1.0, owner="NashMTL")

    def build(self, input_shape):
        super().build(input_shape)
        k = input_shape[0]
        self.previous_alpha = self.add_weight(
            shape=(k,), initializer="ones", trainable=False, name="previous_alpha"
        )
        self.step = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                    name="step")

    def reset(self):
        self.previous_alpha.assign(ops.ones(self.previous_alpha.shape))
        self.step.assign(0.0)
        super().reset()

    @staticmethod
    def _normalised(gram):
        """G / ||G||_F, computed without overflow; zeros for a zero G."""
        big = ops.max(ops.abs(gram))
        safe = ops.where(big > 0, big, 1.0)
        fro = safe * ops.sqrt(ops.sum(ops.square(gram / safe)))
        ok = fro > C.TINY
        return ops.where(ok, gram / ops.where(ok, fro, 1.0), ops.zeros_like(gram))

    def solve(self, gram, start=None):
        """(alpha before clipping, converged), warm-started at `start` (the
        diagonal solution when None)."""
        gram = C.prepare_gram(gram)
        normalised = self._normalised(gram)
        scaled, _ = C.max_diag_scale(normalised)
        active = C.active_tasks(scaled)
        cold = diagonal_start(normalised, active, 1.0)
        start = cold if start is None else ops.where(start > 0, start, cold)
        return masked_power_weights(
            normalised, active, 1.0, start, self.reg_eps, self.max_iter, self.tol
        )

    def clip(self, gram, alpha):
        if self.max_norm <= 0:
            return alpha
        norm = C.direction_norm(C.prepare_gram(gram), alpha)
        factor = ops.where(norm > self.max_norm, self.max_norm / ops.maximum(norm, C.TINY), 1.0)
        return alpha * factor

    def weighting(self, gram, losses=None, training=True):
        previous = C.read(self.previous_alpha)
        step = C.read(self.step)
        # The first step (or the first after reset()) starts cold.
        previous = ops.where(step > 0, previous, 0.0)
        if self.update_weights_every == 1:
            alpha, converged = self.solve(gram, previous)
        else:
            due = ops.equal(ops.mod(step, float(self.update_weights_every)), 0.0)
            alpha, converged = ops.cond(
                due,
                lambda: self.solve(gram, previous),
                lambda: (previous, ops.convert_to_tensor(True)),
            )
        if training:
            self.previous_alpha.assign(alpha)
            self.step.assign(step + 1.0)
            self.count_failure(converged, training)
        return self.clip(gram, alpha)

    def get_config(self):
        return {
            **super().get_config(),
            "max_norm": self.max_norm,
            "update_weights_every": self.update_weights_every,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "reg_eps": self.reg_eps,
        }
