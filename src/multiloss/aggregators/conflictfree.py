"""`ConFIG`: conflict-free inverse gradients (Liu et al. 2024)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import Aggregator
from multiloss.aggregators.imtlg import cosine_setup
from multiloss.balancer import register

__all__ = ["ConFIG"]


@register("config")
class ConFIG(Aggregator):
    """ConFIG (Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training
    of Physics Informed Neural Networks", 2024, Eq. 2): the direction whose
    cosines with the task gradients are proportional to the preference
    weights `p` (1 each by default), rescaled to the sum of the gradients'
    projections on it:

        x = U^+ p,   U = [g_k / ||g_k||]_k   (unit rows),
        d = (sum_k g_k . x_hat) x_hat,    x_hat = x / ||x||.

    Since `U^+ p = U^T (U U^T)^+ p` and `U U^T` is the cosine matrix `C`,
    ConFIG is a weighting of the Gram matrix:
    `x = J^T (D^-1 C^+ p)` with `D = diag(||g_k||)`. The pseudo-inverse comes
    from an eigendecomposition (eigenvalues below `rcond` times the largest
    dropped), the same minimum-norm least-squares solution as the official
    `torch.linalg.lstsq` call. A task with a zero gradient is left out
    (weight 0; the official code's unit vector is 0 too). For two tasks the
    official closed form gives the same direction.

    Paper defaults: equal weights `p = 1`, the "projection length"
    (the sum above).

    Args:
        pref_vector: None (1 each) or K weights >= 0, not all 0.
        rcond: float in (0, 1) or None (default: 10 K float32 epsilons).

    Scale of the update: free: `||d||` is the sum of the projections of the
    task gradients on the direction.

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 0.0], [-0.5, 1.0]], "float32")
    d = multiloss.aggregators.ConFIG()(J)
    print(J @ np.asarray(d))  # equal cosines: both tasks improve
    ```
    """

    def __init__(self, pref_vector=None, rcond=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.pref_vector = C.check_pref_vector(pref_vector, "ConFIG")
        self.rcond = None if rcond is None else C.check_number(
            "rcond", rcond, 0.0, 1.0, low_open=True, high_open=True, owner="ConFIG"
        )

    def build(self, input_shape):
        C.check_pref_length(self.pref_vector, input_shape[0], "ConFIG")
        super().build(input_shape)

    def weighting(self, gram, losses=None, training=True):
        cos, inv_n, active, scaled = cosine_setup(gram)
        k = cos.shape[0]
        if self.pref_vector is None:
            pref = ops.ones((k,), "float32")
        else:
            pref = ops.convert_to_tensor(self.pref_vector, "float32")
        pref = pref * ops.cast(active, "float32")
        coeffs = C.psd_pinv_apply(cos, pref, self.rcond) * inv_n  # x = J^T coeffs
        sq = ops.sum(coeffs * ops.matmul(scaled, coeffs))  # ||x||^2
        proj = ops.sum(ops.matmul(scaled, coeffs))  # sum_k g_k . x
        ok = sq > C.TINY
        w = ops.where(ok, coeffs * proj / ops.where(ok, sq, 1.0), 0.0)
        return ops.where(ops.all(ops.isfinite(w)), w, ops.zeros_like(w))

    def get_config(self):
        return {
            **super().get_config(),
            "pref_vector": None if self.pref_vector is None else list(self.pref_vector),
            "rcond": self.rcond,
        }
