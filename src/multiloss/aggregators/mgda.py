"""`MGDA`: the min-norm point of the convex hull of the task gradients
(Sener & Koltun 2018)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import SolverAggregator
from multiloss.balancer import register

__all__ = ["MGDA"]

_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@register("mgda")
class MGDA(SolverAggregator):
    """Multiple-gradient descent (Désidéri 2012) as used for multi-task
    learning by Sener & Koltun, "Multi-Task Learning as Multi-Objective
    Optimization", NeurIPS 2018:

        w = argmin_{w >= 0, sum w = 1} || sum_k w_k g_k ||^2 = argmin w^T G w,
        d = sum_k w_k g_k.

    `d` is the min-norm point of the convex hull of the gradients: it
    decreases every loss (`g_k . d >= ||d||^2 >= 0`), and is zero exactly at
    a Pareto-stationary point.

    Solver: the paper's Algorithm 2 is Frank-Wolfe; here the same QP is
    solved exactly by a primal-dual active set method (a few KxK solves,
    in-graph, `max_iter` at most), on `G` scaled to a largest diagonal entry
    of 1 plus `reg_eps * I` (so that a singular `G` stays solvable). Steps
    where it did not converge within `max_iter` are counted in the logged
    `mgda_nonconverged` (the feasible last iterate is used).

    Gradient normalisation (the official code's `normalization_type`, not in
    the paper): the QP is solved on `g_k / n_k` with `n_k` = 1 ("none"),
    `||g_k||` ("l2"), `L_k` ("loss") or `L_k ||g_k||` ("loss+"), and its
    solution weighs the raw gradients, as in the official code. Only "none"
    guarantees the non-conflicting property above.

    Paper defaults: no hyperparameters ("none" normalisation as in LibMTL
    and torchjd; the official code's experiments use "loss+").

    Args:
        normalization: "none" (default), "l2", "loss" or "loss+".
        max_iter: int in [1, 10000], active set iterations (default 100).
        tol: float in (0, 0.1], tolerance of the KKT conditions on the
            scaled problem (default 1e-6).
        reg_eps: float in [0, 1], ridge added to the scaled Gram matrix
            (default 1e-6).

    Scale of the update: the weights sum to 1.

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    d = multiloss.aggregators.MGDA()(J)
    print(np.round(np.asarray(d), 3))  # min-norm point: [0.8 0.4]
    ```
    """

    log_names = ("mgda_nonconverged",)

    def __init__(self, normalization="none", max_iter=100, tol=1e-6, reg_eps=1e-6,
                 name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.normalization = C.check_choice(
            "normalization", normalization, _NORMALIZATIONS, "MGDA"
        )
        self.max_iter = C.check_int("max_iter", max_iter, 1, 10000, "MGDA")
        self.tol = C.check_number("tol", tol, 0.0, 0.1, low_open=True, owner="MGDA")
        self.reg_eps = C.check_number("reg_eps", reg_eps, 0.0, 1.0, owner="MGDA")

    def solve(self, gram, losses=None):
        """(weights, converged) without touching any state."""
        gram = C.prepare_gram(gram)
        k = gram.shape[0]
        if self.normalization != "none":
            if self.normalization in ("loss", "loss+") and losses is None:
                raise ValueError(
                    f"MGDA(normalization={self.normalization!r}) needs the task losses."
                )
            if self.normalization == "l2":
                scale = C.norms(gram)
            elif self.normalization == "loss":
                scale = ops.cast(losses, "float32")
            else:
                scale = ops.cast(losses, "float32") * C.norms(gram)
            inv = C.safe_div(ops.ones_like(scale), scale)
            gram = gram * inv[:, None] * inv[None, :]
        gram, _ = C.max_diag_scale(gram)
        hessian = gram + self.reg_eps * ops.eye(k, dtype="float32")
        w, converged, _, _ = C.simplex_qp(
            hessian, ops.zeros((k,), "float32"), self.max_iter, self.tol
        )
        return w, converged

    def get_config(self):
        return {
            **super().get_config(),
            "normalization": self.normalization,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "reg_eps": self.reg_eps,
        }
