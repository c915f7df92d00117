"""`IMTLG`: impartial multi-task learning, gradient part (Liu et al. 2021)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import Aggregator
from multiloss.balancer import register

__all__ = ["IMTLG"]


def cosine_setup(gram):
    """(cosine matrix, 1 / norms, active) from a Gram matrix: tasks whose
    squared gradient norm is below 1e-12 times the largest are inactive
    (zero rows and columns, zero inverse norm)."""
    scaled, _ = C.max_diag_scale(C.prepare_gram(gram))
    active = C.active_tasks(scaled)
    n = C.norms(scaled)
    inv_n = ops.where(active, 1.0 / ops.where(active, n, 1.0), 0.0)
    cos = scaled * inv_n[:, None] * inv_n[None, :]
    return cos, inv_n, active, scaled


@register("imtlg")
class IMTLG(Aggregator):
    """IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR
    2021): the weights make the update's projection on every task's unit
    gradient `u_k = g_k / ||g_k||` equal,

        u_k . d = const for all k,   d = J^T w,   sum w = 1,

    whose solution is `w ∝ D^-1 C^+ 1` with `D = diag(||g_k||)` and `C` the
    cosine matrix of the gradients (`G = D C D`). The paper's closed form,
    `alpha_{2:K} = g_1 U^T (D U^T)^-1` with `U` and `D` the differences of the
    unit and raw gradients to the first, is the same when `G` is
    invertible. Here `C^+` is a pseudo-inverse from an eigendecomposition
    (eigenvalues below `rcond` times the largest are dropped), so parallel or
    dependent gradients are handled and nothing singular is inverted (the
    peers invert `D U^T` as is). A task with a zero gradient gets weight 0;
    when `sum(D^-1 C^+ 1)` is 0 the weights are 0.

    The paper has no hyperparameter (IMTL's loss part, IMTL-L, is a
    loss-level method, not this one).

    Args:
        rcond: float in (0, 1) or None (default: 10 K float32 epsilons),
            the relative eigenvalue cut-off of the pseudo-inverse.

    Scale of the update: the weights sum to 1.

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[2.0, 0.0], [0.0, 1.0]], "float32")
    d = multiloss.aggregators.IMTLG()(J)
    print(np.round(np.asarray(d), 4))  # [0.6667 0.6667]: equal projections
    ```
    """

    def __init__(self, rcond=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.rcond = None if rcond is None else C.check_number(
            "rcond", rcond, 0.0, 1.0, low_open=True, high_open=True, owner="IMTLG"
        )

    def weighting(self, gram, losses=None, training=True):
        cos, inv_n, active, _ = cosine_setup(gram)
        ones = ops.cast(active, "float32")
        v = C.psd_pinv_apply(cos, ones, self.rcond) * inv_n
        total = ops.sum(v)
        ok = ops.abs(total) > 1e-20
        w = ops.where(ok, v / ops.where(ok, total, 1.0), 0.0)
        return ops.where(ops.all(ops.isfinite(w)), w, ops.zeros_like(w))

    def get_config(self):
        return {**super().get_config(), "rcond": self.rcond}
