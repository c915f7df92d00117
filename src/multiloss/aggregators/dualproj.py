"""`DualProj`: the preference-weighted sum projected onto the dual cone
(Quinton & Rey 2024)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.upgrad import DualConeAggregator, dual_cone_setup
from multiloss.balancer import register

__all__ = ["DualProj"]


@register("dualproj")
class DualProj(DualConeAggregator):
    """DualProj (Quinton & Rey, "Jacobian Descent for Multi-Objective
    Optimization", 2024; the projection of Lopez-Paz & Ranzato's GEM, 2017,
    Eq. 11): the preference-weighted combination `J^T u` is projected onto
    the dual cone `{x : g_j . x >= 0 for all j}`:

        w = argmin_{v >= u} v^T G v,    d = J^T w.

    `d` conflicts with no task (`J d >= 0`, up to `-reg_eps tr(G) w` with the
    ridge below) and equals `J^T u` when that conflicts with none.

    Solver: one box-constrained QP, in-graph, by block principal pivoting
    (a few KxK solves; `max_iter` at most) on `G / trace(G) + reg_eps * I` as
    in torchjd. Steps that did not converge are counted in the logged
    `dualproj_nonconverged`.

    Paper defaults: `pref_vector` = 1/K each; torchjd's `reg_eps` = 1e-4.

    Args:
        pref_vector: None (1/K each) or K weights >= 0, not all 0.
        reg_eps: float in [0, 1] (default 1e-4).
        max_iter: int in [1, 10000] (default 200).
        tol: float in (0, 0.1] (default 1e-6).

    Scale of the update: the weights sum to at least `sum(pref_vector)`
    (1 by default).

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 0.0], [-2.0, 1.0]], "float32")  # the mean conflicts with task 0
    d = multiloss.aggregators.DualProj(reg_eps=0.0)(J)
    print(np.round(np.asarray(d), 4))  # [0.  0.5]: orthogonal to task 0
    ```
    """

    log_names = ("dualproj_nonconverged",)

    def solve(self, gram, losses=None):
        """(weights, converged) without touching any state."""
        hessian, u, top = dual_cone_setup(gram, self.pref_vector, self.reg_eps)
        k = hessian.shape[0]
        v, converged, _ = C.box_qp(
            hessian, ops.zeros((1, k), "float32"), u[None, :], self.max_iter, self.tol
        )
        return v[0] * top, converged
