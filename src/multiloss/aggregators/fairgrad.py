"""`FairGrad`: alpha-fair resource allocation over the task gradients
(Ban & Ji 2024)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import SolverAggregator
from multiloss.balancer import register

__all__ = ["FairGrad"]


def diagonal_start(scaled, active, power):
    """The solution for a diagonal G, `x_i = G_ii^(-1 / (1 + p))`: a start
    at the right scale when gradient norms differ by orders of magnitude."""
    d = ops.where(active, ops.diagonal(scaled), 1.0)
    return ops.exp(-ops.log(d) / (1.0 + power))


def masked_power_weights(scaled, active, power, x0, reg_eps, max_iter, tol):
    """Solves `(G + reg I) x = x^-p` over the active tasks (the others are
    decoupled by identity rows and get weight 0)."""
    k = scaled.shape[0]
    act = ops.cast(active, "float32")
    eye = ops.eye(k, dtype="float32")
    hessian = scaled * act[:, None] * act[None, :] + eye * (1.0 - act)[None, :]
    hessian = hessian + reg_eps * eye * act[None, :]
    x0 = ops.where(active, x0, 1.0)
    x, converged, _ = C.power_system(hessian, power, x0, max_iter, tol)
    return ops.where(active, x, 0.0), converged


@register("fairgrad")
class FairGrad(SolverAggregator):
    """FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task
    Learning", ICML 2024): the update maximises the alpha-fair utility of
    the tasks' improvements `g_i . d`; for `d = J^T w` its optimality
    condition is

        G w = w^(-1/alpha),   w > 0.

    alpha = 1 is proportional fairness (Nash-MTL's bargaining equation),
    alpha -> infinity approaches max-min fairness. The system is the
    stationarity condition of the strictly convex
    `0.5 w^T G w - sum_i h(w_i)`, `h' = w^(-1/alpha)`, and is solved in-graph
    by damped Newton (`max_iter` steps at most; the official code calls
    scipy's `least_squares`) on `G` scaled to a largest diagonal entry of 1
    plus `reg_eps * I`; the exact rescaling `w = s^(-alpha / (1 + alpha)) w_s`
    restores the units. Non-converged steps are counted in the logged
    `fairgrad_nonconverged`.

    A task with a zero gradient (squared norm below 1e-12 times the
    largest) gets weight 0; the official code gives it a large weight
    (~578 in LibMTL) that multiplies nothing. At the solution every task
    improves: `g_i . d = w_i^(-1/alpha) > 0`.

    Paper defaults: alpha = 1 (the official code's default; its QM9 runs
    use 2).

    Args:
        alpha: float in (0, 100] (default 1.0).
        max_iter: int in [1, 1000] (default 50).
        tol: float in (0, 0.1] (default 1e-6), on the backward error of the
            equation (residual relative to the size of its terms).
        reg_eps: float in [0, 1] (default 1e-6).

    Scale of the update: free: `||d||^2 = sum_i w_i^(1 - 1/alpha)`; the
    weights scale as `||g||^(-2 alpha / (1 + alpha))`.

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 0.0], [-0.5, 1.0]], "float32")
    d = multiloss.aggregators.FairGrad(alpha=1.0)(J)
    print(J @ np.asarray(d))  # every task improves
    ```
    """

    log_names = ("fairgrad_nonconverged",)

    def __init__(self, alpha=1.0, max_iter=50, tol=1e-6, reg_eps=1e-6, name=None,
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = C.check_number("alpha", alpha, 0.0, 100.0, low_open=True,
                                    owner="FairGrad")
        self.max_iter = C.check_int("max_iter", max_iter, 1, 1000, "FairGrad")
        self.tol = C.check_number("tol", tol, 0.0, 0.1, low_open=True, owner="FairGrad")
        self.reg_eps = C.check_number("reg_eps", reg_eps, 0.0, 1.0, owner="FairGrad")

    def solve(self, gram, losses=None):
        """(weights, converged) without touching any state."""
        gram = C.prepare_gram(gram)
        scaled, s = C.max_diag_scale(gram)
        active = C.active_tasks(scaled)
        power = 1.0 / self.alpha
        w, converged = masked_power_weights(
            scaled, active, power, diagonal_start(scaled, active, power), self.reg_eps,
            self.max_iter, self.tol,
        )
        factor = ops.exp(-self.alpha / (1.0 + self.alpha) * ops.log(s))
        return w * factor, converged

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "reg_eps": self.reg_eps,
        }
