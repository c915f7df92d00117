"""`AlignedMTL`: independent component alignment (Senushkin et al. 2023)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import Aggregator
from multiloss.balancer import register

__all__ = ["AlignedMTL"]

_SCALES = ("min", "median", "rmse")


@register("alignedmtl")
class AlignedMTL(Aggregator):
    """Aligned-MTL (Senushkin et al., "Independent Component Alignment for
    Multi-Task Learning", CVPR 2023, Algorithm 1): the task gradients are
    replaced by an orthogonal system of equal singular values, which makes
    the linear system of gradients well conditioned. With the
    eigendecomposition `G = V diag(lambda) V^T` restricted to its rank r
    (eigenvalues above `lambda_max * K * eps`):

        B = sqrt(lambda_s) V diag(lambda^-1/2) V^T,    w = B p,    d = J^T w,

    where `lambda_s` is the smallest kept eigenvalue ("min", the paper),
    their median or their mean ("rmse", as in torchjd's options) and `p`
    the task preferences (1 each, the official code's `B.sum(0)`).

    Rank 0 (all gradients zero) gives `B = I` instead of an error (the
    peers raise there) and `d = 0`.

    Paper defaults: `scale_mode="min"`, `p = 1`.

    Args:
        pref_vector: None (1 each) or K weights >= 0, not all 0.
        scale_mode: "min" (default), "median" or "rmse".

    Scale of the update: free (the aligned components have the norm of the
    smallest singular value of J).

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[3.0, 0.0], [0.0, 1.0]], "float32")
    d = multiloss.aggregators.AlignedMTL()(J)
    print(np.round(np.asarray(d), 4))  # [1. 1.]: both components at norm 1
    ```
    """

    def __init__(self, pref_vector=None, scale_mode="min", name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.pref_vector = C.check_pref_vector(pref_vector, "AlignedMTL")
        self.scale_mode = C.check_choice("scale_mode", scale_mode, _SCALES, "AlignedMTL")

    def build(self, input_shape):
        C.check_pref_length(self.pref_vector, input_shape[0], "AlignedMTL")
        super().build(input_shape)

    def weighting(self, gram, losses=None, training=True):
        scaled, _ = C.max_diag_scale(C.prepare_gram(gram))
        k = scaled.shape[0]
        if self.pref_vector is None:
            pref = ops.ones((k,), "float32")
        else:
            pref = ops.convert_to_tensor(self.pref_vector, "float32")
        lam, vecs = ops.eigh(scaled)
        top = ops.max(lam)
        keep = ops.logical_and(lam > top * k * C.EPS32, lam > C.TINY)
        rank = ops.sum(ops.cast(keep, "int32"))
        inv_sqrt = ops.where(keep, 1.0 / ops.sqrt(ops.where(keep, lam, 1.0)), 0.0)
        kept_float = ops.cast(keep, "float32")
        if self.scale_mode == "min":
            scale = ops.min(ops.where(keep, lam, top))
        elif self.scale_mode == "rmse":
            scale = ops.sum(lam * kept_float) / ops.maximum(ops.sum(kept_float), 1.0)
        else:
            # Lower median of the kept eigenvalues (torch.median's convention).
            desc = ops.flip(ops.sort(ops.where(keep, lam, -1.0)), axis=0)
            index = rank - 1 - (rank - 1) // 2
            scale = ops.take(desc, ops.maximum(index, 0))
        balance = ops.sqrt(ops.maximum(scale, 0.0)) * ops.matmul(
            vecs * inv_sqrt[None, :], ops.transpose(vecs)
        )
        balance = ops.where(rank > 0, balance, ops.eye(k, dtype="float32"))
        w = ops.matmul(balance, pref)
        return ops.where(ops.all(ops.isfinite(w)), w, ops.zeros_like(w))

    def get_config(self):
        return {
            **super().get_config(),
            "pref_vector": None if self.pref_vector is None else list(self.pref_vector),
            "scale_mode": self.scale_mode,
        }
