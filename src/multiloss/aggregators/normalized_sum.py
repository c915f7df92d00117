"""`NormalizedSum`: every task gradient rescaled to the same norm, then
summed."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import Aggregator
from multiloss.balancer import register

__all__ = ["NormalizedSum"]

_TARGETS = ("mean", "max", "min", "unit")


@register("normalizedsum")
class NormalizedSum(Aggregator):
    """Each task gradient rescaled to a common norm before adding:

        d = sum_k (r / ||g_k||) g_k,    w_k = r / ||g_k||,

    with `r` the mean (default), largest or smallest of the task gradient
    norms, or 1 (`target="unit"`). It removes the domination of one task by
    gradient magnitude while keeping every direction; the usual hand-made
    fix in a `GradientTape` loop (no paper of its own; the gradient
    normalisation of GradNorm and DB-MTL without their rules).

    A task whose gradient is zero (squared norm <= 1e-30) gets weight 0 and
    does not count in `r`.

    Args:
        target: "mean" (default), "max", "min" or "unit": the common norm.

    Scale of the update: `||d|| <= K r`; with `target="mean"` the update has
    the size of a sum of K gradients of average norm (like `Sum`).

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[10.0, 0.0], [0.0, 0.1]], "float32")  # norms 10 and 0.1
    d = multiloss.aggregators.NormalizedSum()(J)
    print(np.asarray(d))  # both rescaled to the mean norm 5.05: [5.05 5.05]
    ```
    """

    def __init__(self, target="mean", name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.target = C.check_choice("target", target, _TARGETS, "NormalizedSum")

    def weighting(self, gram, losses=None, training=True):
        gram = C.prepare_gram(gram)
        sq = ops.diagonal(gram)
        active = sq > C.TINY
        n = ops.sqrt(ops.where(active, sq, 1.0))
        act = ops.cast(active, "float32")
        count = ops.maximum(ops.sum(act), 1.0)
        if self.target == "mean":
            r = ops.sum(n * act) / count
        elif self.target == "max":
            r = ops.max(n * act)
        elif self.target == "min":
            r = ops.min(ops.where(active, n, ops.max(n)))
        else:
            r = ops.convert_to_tensor(1.0, "float32")
        return ops.where(active, r / n, 0.0)

    def get_config(self):
        return {**super().get_config(), "target": self.target}
