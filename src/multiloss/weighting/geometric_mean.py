"""`GeometricMean`: the geometric loss strategy (GLS, Chennupati et al. 2019)."""

from keras import ops

from multiloss.balancer import register
from multiloss.engine import ops as step_ops
from multiloss.weighting._common import (
    check_float,
    check_kwargs,
    check_per_task,
    per_task_tensor,
    positive_part,
)
from multiloss.weighting.base import Weighting

__all__ = ["GeometricMean"]


@register("geometric_mean")
class GeometricMean(Weighting):
    """The geometric mean of the task losses (GLS).

    Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream
    Feature Aggregation and Geometric Loss Strategy for Multi-Task
    Learning", CVPR Workshops 2019.

        D_k = max(L_k - min_losses_k, 0) + epsilon
        total = exp( sum_k c_k log D_k / sum_k c_k )

    which, with the fixed task weights `c_k` all 1, is `(prod_k D_k)^(1/K)`.
    The fixed weights are exponents (a weighted geometric mean; 0 removes a
    task). Computed as the exponential of a mean of logs, never as a
    product: finite for K = 100 and losses from 1e-30 to 1e30, where the
    product under- or overflows.

    The gradient is `sum_k w_k grad L_k` with the weights in force
    `w_k = total c_k / (sum_j c_j D_k)`: a task's weight is inversely
    proportional to its loss, so the total is invariant to each loss's scale
    (multiplying one loss by 1000 multiplies the total, and every weight's
    effect, by 1000^(c_k / sum c)).

    Bad input: a log needs a positive argument. A loss at or below its
    floor `min_losses_k` (0 by default) is clamped to it (`D_k = epsilon`),
    gets weight 0 and contributes a constant; so a loss that can be negative
    (a log-likelihood of a density, a cosine similarity) needs its lower
    bound as `min_losses`, which shifts it.

    Paper defaults: no hyperparameters. Scale of the update: free;
    `sum_k w_k D_k = total` (the weights are in units of total/loss).

    Args:
        min_losses: a float or one per task: the floor subtracted from each
            loss before its log.
        epsilon: added to each shifted loss (> 0).

    Example:

    ```python
    import keras, multiloss
    balancer = multiloss.weighting.GeometricMean()
    balancer.build((2,))
    total, weights = balancer.combine(keras.ops.array([2.0, 8.0]))
    print(float(total))  # sqrt(2 * 8) = 4.0; weights [1.0, 0.25]
    ```
    """

    def __init__(self, min_losses=0.0, epsilon=1e-8, name=None, **kwargs):
        owner = "GeometricMean"
        check_kwargs(owner, kwargs, ("min_losses", "epsilon"))
        min_losses = check_per_task(owner, "min_losses", min_losses)
        epsilon = check_float(owner, "epsilon", epsilon, low=0.0, low_open=True)
        super().__init__(name=name, **kwargs)
        self.min_losses = min_losses
        self.epsilon = epsilon

    def build(self, input_shape):
        super().build(input_shape)
        self._floor = per_task_tensor(
            "GeometricMean", "min_losses", self.min_losses, input_shape[0]
        )

    def combine(self, losses, training=True):
        return self._rule(losses, self.task_weights.value)

    def balance(self, losses, training=True):
        return self._rule(losses, ops.ones_like(losses))

    def _rule(self, losses, fixed):
        shifted = positive_part(losses, self._floor)
        d = shifted + self.epsilon
        # sum(c) > 0 unless every fixed weight is 0; the tiny term keeps 0/0
        # out. The exponents c / sum(c) come first: a product of the tiny
        # norm with a small D (1e-30 * 1e-12) is a denormal, which compiled
        # code flushes to 0 (then 0 / 0 where every c is 0).
        exponents = fixed / (step_ops.sum(fixed) + 1e-30)
        total = step_ops.exp(step_ops.sum(exponents * step_ops.log(d)))
        weights = step_ops.stop_gradient(total) * exponents / d
        # sign(shifted) is 1 for an active task, 0 for a clamped one.
        return total, step_ops.stop_gradient(weights * step_ops.sign(shifted))

    def get_config(self):
        return {
            **super().get_config(),
            "min_losses": self.min_losses,
            "epsilon": self.epsilon,
        }
