"""`Mean`: the mean of the task gradients."""

from keras import ops

from multiloss.aggregators.base import Aggregator
from multiloss.balancer import register

__all__ = ["Mean"]


@register("mean")
class Mean(Aggregator):
    """The mean of the task gradients: `d = (1/K) sum_k g_k`, weights `1/K`.

    Same direction as `Sum`, K times shorter. No hyperparameters.

    Scale of the update: the weights sum to 1.

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    print(np.asarray(multiloss.aggregators.Mean()(J)))  # [0.5 0.5]
    ```
    """

    def weighting(self, gram, losses=None, training=True):
        k = gram.shape[0]
        return ops.full((k,), 1.0 / k, "float32")
