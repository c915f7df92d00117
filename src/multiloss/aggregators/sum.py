"""`Sum`: the plain sum of the task gradients."""

from keras import ops

from multiloss.aggregators.base import Aggregator
from multiloss.balancer import register

__all__ = ["Sum"]


@register("sum")
class Sum(Aggregator):
    """The sum of the task gradients: `d = sum_k g_k`, weights `w_k = 1`.

    The same update as one backward pass of the summed loss (the default of
    `keras.Model.compile` with several losses); the baseline every other
    aggregator is compared with. No hyperparameters.

    Scale of the update: the weights sum to K.

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 0.0], [-0.5, 1.0]], "float32")
    d = multiloss.aggregators.Sum()(J)
    print(np.asarray(d))  # [0.5 1. ]
    ```
    """

    def weighting(self, gram, losses=None, training=True):
        return ops.ones((gram.shape[0],), "float32")
