"""`UPGrad`: unconflicting projection of gradients (Quinton & Rey 2024)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import SolverAggregator
from multiloss.balancer import register

__all__ = ["UPGrad"]


def dual_cone_setup(gram, pref, reg_eps):
    """The scaled, regularised Gram matrix and the (K,) preference vector
    scaled to a largest entry of 1, with that scale."""
    gram = C.prepare_gram(gram)
    k = gram.shape[0]
    scaled, _ = C.trace_scale(gram)
    hessian = scaled + reg_eps * ops.eye(k, dtype="float32")
    if pref is None:
        u = ops.full((k,), 1.0 / k, "float32")
    else:
        u = ops.convert_to_tensor(pref, "float32")
    top = ops.max(u)
    return hessian, u / top, top


class DualConeAggregator(SolverAggregator):
    """Shared options of the aggregators that project onto the dual cone of
    the task gradients (UPGrad, DualProj): a preference vector, a ridge on
    the normalised Gram matrix, and the box QP's budget and tolerance."""

    def __init__(self, pref_vector=None, reg_eps=1e-4, max_iter=200, tol=1e-6,
                 name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        self.pref_vector = C.check_pref_vector(pref_vector, owner)
        self.reg_eps = C.check_number("reg_eps", reg_eps, 0.0, 1.0, owner=owner)
        self.max_iter = C.check_int("max_iter", max_iter, 1, 10000, owner)
        self.tol = C.check_number("tol", tol, 0.0, 0.1, low_open=True, owner=owner)

    def build(self, input_shape):
        C.check_pref_length(self.pref_vector, input_shape[0], type(self).__name__)
        super().build(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "pref_vector": None if self.pref_vector is None else list(self.pref_vector),
            "reg_eps": self.reg_eps,
            "max_iter": self.max_iter,
            "tol": self.tol,
        }


@register("upgrad")
class UPGrad(DualConeAggregator):
    """UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective
    Optimization", 2024): each task gradient is projected onto the dual cone
    of all of them, `{x : g_j . x >= 0 for all j}`, and the projections are
    combined with the preference weights `u`:

        d = sum_i u_i pi(g_i),    pi(g_i) = J^T v_i,
        v_i = argmin_{v >= u_i e_i} v^T G v        (Proposition 1 of the paper),
        w = sum_i u_i-scaled v_i.

    `d` conflicts with no task (`J d >= 0`), is linear under a positive
    scaling of the rows, and reduces to `Mean` when no pair conflicts. The
    ridge below loosens the first two by at most its size:
    `J d >= -reg_eps tr(G) w`; `reg_eps=0` is exact when `G` is definite.

    Solver: the K box-constrained QPs are solved together, in-graph, by block
    principal pivoting (a few batched KxK solves; `max_iter` at most), on
    `G / trace(G) + reg_eps * I` as in the authors' implementation (torchjd).
    Steps that did not converge are counted in the logged
    `upgrad_nonconverged` (the feasible last iterate is used).

    Paper defaults: `pref_vector` = 1/K each; torchjd's `reg_eps` = 1e-4.

    Args:
        pref_vector: None (1/K each) or K weights >= 0, not all 0.
        reg_eps: float in [0, 1] (default 1e-4), ridge on the normalised
            Gram matrix (0 solves the exact problem when `G` is definite).
        max_iter: int in [1, 10000] (default 200).
        tol: float in (0, 0.1] (default 1e-6), KKT tolerance on the scaled
            problem.

    Scale of the update: the weights sum to at least `sum(pref_vector)`
    (1 by default), exactly that when no pair of tasks conflicts.

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 0.0], [-1.0, 1.0]], "float32")
    d = multiloss.aggregators.UPGrad(reg_eps=0.0)(J)
    print(np.round(np.asarray(d), 4))  # [0.25 0.75]: PCGrad's / 2 for K = 2
    ```
    """

    log_names = ("upgrad_nonconverged",)

    def projections(self, gram):
        """(V, converged): row i of V holds the weights of the projection of
        `u_i g_i` onto the dual cone, `argmin_{v >= u_i e_i} v^T H v` with `H`
        the normalised, regularised Gram matrix."""
        hessian, u, top = dual_cone_setup(gram, self.pref_vector, self.reg_eps)
        k = hessian.shape[0]
        lower = ops.eye(k, dtype="float32") * u[:, None]
        v, converged, _ = C.box_qp(
            hessian, ops.zeros((k, k), "float32"), lower, self.max_iter, self.tol
        )
        return v * top, converged

    def solve(self, gram, losses=None):
        """(weights, converged) without touching any state."""
        v, converged = self.projections(gram)
        return ops.sum(v, axis=0), converged
