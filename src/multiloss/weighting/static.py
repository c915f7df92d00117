"""`Static`: fixed task weights."""

from keras import ops

from multiloss.balancer import register
from multiloss.engine import ops as step_ops
from multiloss.weighting.base import Weighting

__all__ = ["Static"]


@register("static")
class Static(Weighting):
    """Fixed weights: `total = sum_k w_k L_k`, Keras's own weighted sum.

    The weights come from `compile(loss_weights=...)` and `CombinedLoss`
    weights (1 by default) and change only when set, with
    `model.balancer.assign({...})` or `multiloss.callbacks.WeightSchedule`.
    Scale of the update: the weights are used as given (their sum is free).

    Example:

    ```python
    import keras, multiloss
    balancer = multiloss.weighting.Static()
    balancer.build((2,))
    balancer.assign([1.0, 0.5])
    total, weights = balancer.combine(keras.ops.array([2.0, 4.0]))
    print(float(total))  # 1.0 * 2.0 + 0.5 * 4.0 = 4.0
    ```
    """

    def combine(self, losses, training=True):
        fixed = self.task_weights.value
        # `+ 0.0`: a tensor of its own, not torch's Variable storage, which a
        # later `assign` would change under the caller.
        return step_ops.sum(losses * fixed), fixed + 0.0

    def balance(self, losses, training=True):
        return step_ops.sum(losses), ops.ones_like(losses)
