"""`IMTLL`: the loss-level half of IMTL (Liu et al. 2021)."""

from keras import ops

from multiloss.balancer import register
from multiloss.engine import ops as step_ops
from multiloss.weighting._common import add_state, check_float, check_kwargs
from multiloss.weighting.base import Weighting

__all__ = ["IMTLL"]


@register("imtl_l")
class IMTLL(Weighting):
    """Learned loss scales that make the scaled losses equal (IMTL-L).

    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial
    Multi-task Learning", ICLR 2021 (the loss-balance part, IMTL-L).

    Each task gets a learned log-scale `s_k` (a trainable weight of the
    balancer, trained by the model's optimizer inside `fit` on every
    backend):

        total = sum_k c_k (exp(s_k) L_k - s_k)

    with `c_k` the fixed task weights (1 by default; 0 removes a task). The
    minimiser in `s_k` is `exp(s_k) = 1 / L_k`: every scaled loss
    `exp(s_k) L_k` is driven to 1, so no task dominates by its scale. The
    `- s_k` term is what stops the scales from collapsing to zero. The
    weights in force are `c_k exp(s_k)`.

    Paper defaults: `s_k = 0` at the start (weights 1), trained with the
    network's optimizer. Scale of the update: free; at equilibrium each
    scaled loss is 1 and the total gradient is `sum_k c_k grad log L_k`.

    Notes: the `s_k` are trainable variables named `log_scale`; exclude them
    from an optimizer's weight decay
    (`optimizer.exclude_from_weight_decay(var_names=["log_scale"])`). IMTL-L
    is Uncertainty with the sign of `s` flipped and without its 1/2 factors.

    Args:
        initial_log_scale: the starting `s_k` (0: weights start at 1).

    Example:

    ```python
    import keras, multiloss
    balancer = multiloss.weighting.IMTLL()
    balancer.build((2,))
    total, weights = balancer.combine(keras.ops.array([2.0, 4.0]))
    print(keras.ops.convert_to_numpy(total))  # exp(0) * 2 - 0 + exp(0) * 4 - 0 = 6.0
    # In a model: model.compile("adam", loss={...}, balancer="imtl_l")
    ```
    """

    def __init__(self, initial_log_scale=0.0, name=None, **kwargs):
        check_kwargs("IMTLL", kwargs, ("initial_log_scale",))
        initial = check_float("IMTLL", "initial_log_scale", initial_log_scale)
        super().__init__(name=name, **kwargs)
        self.initial_log_scale = initial

    def build(self, input_shape):
        super().build(input_shape)
        self.log_scale = add_state(
            self, "log_scale", self.initial_log_scale, (input_shape[0],), trainable=True
        )

    def combine(self, losses, training=True):
        return self._rule(losses, self.task_weights.value)

    def balance(self, losses, training=True):
        return self._rule(losses, ops.ones_like(losses))

    def _rule(self, losses, fixed):
        s = self.log_scale.value
        scale = step_ops.exp(s)
        return step_ops.sum(fixed * (scale * losses - s)), fixed * scale

    def get_config(self):
        return {**super().get_config(), "initial_log_scale": self.initial_log_scale}
