"""`CAGrad`: conflict-averse gradient descent (Liu et al. 2021)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import SolverAggregator
from multiloss.balancer import register

__all__ = ["CAGrad"]

# The QP's tolerance never goes below what float32 resolves on a Gram matrix
# scaled to a largest diagonal entry of 1.
_QP_TOL_FLOOR = 1e-7


@register("cagrad")
class CAGrad(SolverAggregator):
    """Conflict-averse gradient descent (Liu et al., "Conflict-Averse
    Gradient Descent for Multi-task Learning", NeurIPS 2021, Algorithm 1).

    With `g0` the mean gradient, the update maximises the worst task's
    improvement within a ball around `g0`:

        max_d min_i g_i . d   s.t.  ||d - g0|| <= c ||g0||,

    solved through its dual over the simplex,

        w = argmin_{w >= 0, sum w = 1}  g_w . g0 + c ||g0|| ||g_w||,   g_w = J^T w,
        d = (g0 + (c ||g0|| / ||g_w||) g_w) / rescale,

    i.e. weights `(1/K + (c ||g0|| / ||g_w||) w) / rescale`. With c >= 1, `d`
    conflicts with no task; c = 0 gives `Mean`.

    Solver (in-graph, instead of the official scipy SLSQP): majorize-minimize
    on the norm term (`||x|| <= (||x||^2 / t + t) / 2`), each step a
    simplex-constrained QP solved exactly by block principal pivoting and
    warm-started, with Aitken extrapolation of the fixed point
    `t = ||g_w(t)||`; it stops when the Frank-Wolfe duality gap (a bound on
    the distance to the optimal value) is below `tol`. Budgets: `max_iter`
    QPs, `max_inner` pivots each. Steps that did not converge
    are counted in the logged `cagrad_nonconverged` (the last iterate is
    used).

    Paper defaults: c = 0.5 (the official code's `alpha`), `rescale=1`
    (divide by 1 + c^2, the official code's default).

    Args:
        c: float in [0, 100] (default 0.5), the radius of the ball.
        rescale: 0 (none), 1 (divide by 1 + c^2, default) or 2 (by 1 + c).
        max_iter: int in [1, 1000] (default 60), QP solves.
        max_inner: int in [1, 10000] (default 100).
        tol: float in (0, 0.1] (default 1e-5), on the duality gap of the
            problem scaled to a largest gradient norm of 1.
        reg_eps: float in [0, 1] (default 1e-6), ridge on the Gram matrix
            scaled to a largest diagonal entry of 1.

    Scale of the update: free; the weights sum to `(1 + c ||g0|| / ||g_w||) /
    rescale` (1 for c = 0).

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 0.0], [-0.5, 1.0]], "float32")
    d = multiloss.aggregators.CAGrad(c=0.5)(J)
    print(np.asarray(d))
    ```
    """

    log_names = ("cagrad_nonconverged",)

    def __init__(self, c=0.5, rescale=1, max_iter=60, max_inner=100, tol=1e-5,
                 reg_eps=1e-6, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.c = C.check_number("c", c, 0.0, 100.0, owner="CAGrad")
        self.rescale = C.check_choice("rescale", rescale, (0, 1, 2), "CAGrad")
        self.max_iter = C.check_int("max_iter", max_iter, 1, 1000, "CAGrad")
        self.max_inner = C.check_int("max_inner", max_inner, 1, 10000, "CAGrad")
        self.tol = C.check_number("tol", tol, 0.0, 0.1, low_open=True, owner="CAGrad")
        self.reg_eps = C.check_number("reg_eps", reg_eps, 0.0, 1.0, owner="CAGrad")

    def solve(self, gram, losses=None):
        """(weights, converged) without touching any state."""
        gram, _ = C.max_diag_scale(C.prepare_gram(gram))
        k = gram.shape[0]
        mean = ops.full((k,), 1.0 / k, "float32")
        if self.c == 0.0:
            return mean, ops.convert_to_tensor(True)
        hessian = gram + self.reg_eps * ops.eye(k, dtype="float32")
        a = ops.matmul(hessian, mean)
        radius = self.c * ops.sqrt(ops.maximum(ops.sum(a * mean), 0.0))
        safe_radius = ops.maximum(radius, C.TINY)
        tol = self.tol

        def norm_of(w):
            return ops.sqrt(ops.maximum(ops.sum(w * ops.matmul(hessian, w)), 0.0))

        def objective(w):
            return ops.sum(a * w) + radius * norm_of(w)

        def gap(w):
            # Frank-Wolfe gap: an upper bound on objective(w) - optimum.
            grad = a + radius * ops.matmul(hessian, w) / ops.maximum(norm_of(w), C.TINY)
            return ops.sum(w * grad) - ops.min(grad)

        def cond(it, t_in, t0, t1, w_prev, w, support, done, ok):
            return ops.logical_not(done)

        def body(it, t_in, t0, t1, w_prev, w, support, done, ok):
            # One majorize-minimize step: argmin (t / radius) a.w + 0.5 w^T H w
            # on the simplex. Rounds of three: t1 = h(t0), t2 = h(t1), then
            # h at the Aitken extrapolation of t0, t1, t2 (the fixed point
            # t = h(t) = ||g_w(t)||), keeping the better of the last two.
            # The QP's multipliers are those of the problem times t / radius:
            # its tolerance follows, or a small t (conflicting tasks) would
            # leave a gap the outer test never accepts.
            qp_tol = ops.maximum(tol * (1.0 + radius) * t_in / safe_radius, _QP_TOL_FLOOR)
            w_q, ok_q, _, support = C.simplex_qp(
                hessian, a * t_in / safe_radius, self.max_inner, qp_tol, free0=support
            )
            t_q = norm_of(w_q)
            phase = ops.mod(it, 3)
            den = t_q - 2.0 * t1 + t0
            usable = ops.abs(den) > C.TINY
            t_acc = t0 - ops.square(t1 - t0) / ops.where(usable, den, 1.0)
            t_acc = ops.where(ops.logical_and(usable, t_acc > 0.0), t_acc, t_q)
            better = objective(w_q) <= objective(w_prev)
            w_best = ops.where(ops.logical_and(phase == 2, ops.logical_not(better)), w_prev, w_q)
            t_next = ops.where(phase == 1, t_acc, norm_of(w_best))
            new_t0 = ops.where(phase == 0, t_in, t0)
            new_t1 = ops.where(phase == 0, t_q, t1)
            stop = gap(w_best) <= tol * (1.0 + radius)
            return (it + 1, t_next, new_t0, new_t1, w_q, w_best, support, stop,
                    ops.logical_and(ok, ok_q))

        t_start = norm_of(mean)
        _, _, _, _, _, w, _, done, inner_ok = ops.while_loop(
            cond,
            body,
            (
                ops.convert_to_tensor(0, "int32"),
                t_start,
                t_start,
                t_start,
                mean,
                mean,
                ops.ones((k,), "bool"),
                ops.convert_to_tensor(False),
                ops.convert_to_tensor(True),
            ),
            maximum_iterations=self.max_iter,
        )
        done = ops.logical_and(done, inner_ok)
        t = norm_of(w)
        # Near a Pareto-stationary point ||g_w|| -> 0: bound the ratio.
        lam = radius / ops.maximum(t, 1e-6)
        weights = mean + lam * w
        if self.rescale == 1:
            weights = weights / (1.0 + self.c**2)
        elif self.rescale == 2:
            weights = weights / (1.0 + self.c)
        trivial = radius <= C.TINY  # no gradient at all
        weights = ops.where(trivial, mean, weights)
        finite = ops.all(ops.isfinite(weights))
        weights = ops.where(finite, weights, mean)
        return weights, ops.logical_or(trivial, ops.logical_and(done, finite))

    def get_config(self):
        return {
            **super().get_config(),
            "c": self.c,
            "rescale": self.rescale,
            "max_iter": self.max_iter,
            "max_inner": self.max_inner,
            "tol": self.tol,
            "reg_eps": self.reg_eps,
        }
