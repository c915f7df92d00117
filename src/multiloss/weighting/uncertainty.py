"""`Uncertainty`: homoscedastic uncertainty weighting (Kendall et al. 2018)."""

from keras import ops

from multiloss.balancer import register
from multiloss.engine import ops as step_ops
from multiloss.weighting._common import (
    add_state,
    check_choice,
    check_float,
    check_kwargs,
)
from multiloss.weighting.base import Weighting

__all__ = ["Uncertainty"]


@register("uncertainty")
class Uncertainty(Weighting):
    """Learned homoscedastic-uncertainty weights.

    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics", CVPR 2018.

    Each task gets a learned log-variance `s_k = log sigma_k^2` (a trainable
    weight of the balancer, so the model's optimizer trains it inside `fit`
    on every backend), and the total is

        variant="standard":    total = sum_k c_k (exp(-s_k) L_k + s_k)
        variant="regression":  total = sum_k c_k (exp(-s_k) L_k + s_k) / 2

    where `c_k` are the fixed task weights (1 by default; 0 removes a task).
    The regression variant is the paper's Gaussian likelihood,
    `L / (2 sigma^2) + log sigma`; the standard one is twice that, the form
    most implementations use. Both have the same minimiser,
    `s_k = log L_k`, so the weights in force, `c_k exp(-s_k)` (halved in the
    regression variant), tend to `c_k / L_k`: a task's weight is inversely
    proportional to its loss (its noise variance, for a regression).

    The `+ s_k` term is the regulariser that keeps the weights from
    collapsing to zero; never drop it. Paper defaults: `s_k = 0` at the
    start (weights 1, plain training), trained with the network's
    optimizer. Scale of the update: free; at equilibrium each weighted loss
    is about 1 (1/2), so the total gradient is `sum_k c_k grad log L_k`.

    Notes: the `s_k` are trainable variables named `log_variance`; an
    optimizer with weight decay (AdamW) decays them toward 0 too, which
    biases the weights toward 1; exclude them with
    `optimizer.exclude_from_weight_decay(var_names=["log_variance"])`.
    A task whose loss reaches 0 drives its `s_k` down without bound.

    Args:
        variant: `"standard"` or `"regression"` (see above).
        initial_log_variance: the starting `s_k` (0: weights start at 1).

    Example:

    ```python
    import keras, multiloss
    balancer = multiloss.weighting.Uncertainty()
    balancer.build((2,))
    total, weights = balancer.combine(keras.ops.array([2.0, 4.0]))
    print(keras.ops.convert_to_numpy(total))  # exp(0) * 2 + 0 + exp(0) * 4 + 0 = 6.0
    # In a model: model.compile("adam", loss={...}, balancer="uncertainty")
    ```
    """

    VARIANTS = ("standard", "regression")

    def __init__(self, variant="standard", initial_log_variance=0.0, name=None, **kwargs):
        check_kwargs("Uncertainty", kwargs, ("variant", "initial_log_variance"))
        variant = check_choice("Uncertainty", "variant", variant, self.VARIANTS)
        initial = check_float("Uncertainty", "initial_log_variance", initial_log_variance)
        super().__init__(name=name, **kwargs)
        self.variant = variant
        self.initial_log_variance = initial

    def build(self, input_shape):
        super().build(input_shape)
        self.log_variance = add_state(
            self, "log_variance", self.initial_log_variance, (input_shape[0],), trainable=True
        )

    def combine(self, losses, training=True):
        return self._rule(losses, self.task_weights.value)

    def balance(self, losses, training=True):
        return self._rule(losses, ops.ones_like(losses))

    def _rule(self, losses, fixed):
        s = self.log_variance.value
        precision = step_ops.exp(-s)
        terms = precision * losses + s
        # The regression variant halves every term (an exact scaling).
        weighted = fixed * 0.5 if self.variant == "regression" else fixed
        return step_ops.sum(weighted * terms), weighted * precision

    def get_config(self):
        return {
            **super().get_config(),
            "variant": self.variant,
            "initial_log_variance": self.initial_log_variance,
        }
