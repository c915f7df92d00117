"""`ScaleNormalized`: each loss divided by a running mean of its own value."""

from keras import ops

from multiloss.balancer import register
from multiloss.engine import ops as step_ops
from multiloss.weighting._common import (
    add_state,
    check_float,
    check_int,
    check_kwargs,
    constant,
)
from multiloss.weighting.base import Weighting

__all__ = ["ScaleNormalized"]

# The step count is a float32 (no cast at each step): exact up to 2^24,
# where it stops; the warm-up must end before.
_MAX_WARMUP_STEPS = 2**24 - 1


@register("scale_normalized")
class ScaleNormalized(Weighting):
    """Divides each task loss by a running mean of its own value.

    The "normalise the losses to a similar range" recipe, done for you: a
    loss of 1000 and a loss of 0.01 both contribute about 1. At training
    step `t` (counted from 1), with `L_k` task k's unweighted loss:

        m_k <- m_k + a_t (L_k - m_k),  a_t = 1 / t         for t <= warmup_steps
                                       a_t = 1 - decay     afterwards
        lambda_k = 1 / (|m_k| + epsilon)
        total = sum_k c_k lambda_k L_k

    `c_k` are the fixed task weights, which keep their meaning: the
    normalised losses are weighed by them. The mean includes the current
    step and carries no gradient (it is a constant of the step). A loss
    that can be negative is normalised by the magnitude of its mean, so its
    weight stays positive.

    Warm-up: for the first `warmup_steps` steps `m_k` is the plain average
    of all the losses seen so far (an exponential average would start from
    zero, or lean on the first batch); afterwards it is an exponential moving
    average, which follows the losses as they fall. Normalisation is applied
    from the first step (at step 1 every normalised loss is exactly 1).
    `evaluate` uses the mean as it stands (before any training step, the
    current losses themselves) and never updates it.

    Defaults: `decay=0.99` (about the last 100 steps), `warmup_steps=100`.
    Scale of the update: each normalised loss is about 1, so the total is
    about `sum_k c_k`; the weights themselves are free (in units of 1/loss).

    Args:
        decay: of the moving average, in [0, 1).
        warmup_steps: steps of plain averaging (>= 0, < 2^24).
        epsilon: added to the mean before dividing (> 0).

    Example:

    ```python
    import keras, multiloss
    balancer = multiloss.weighting.ScaleNormalized()
    balancer.build((2,))
    total, weights = balancer.combine(keras.ops.array([1000.0, 0.01]))
    print(float(total))  # 1000/1000 + 0.01/0.01 = 2.0
    ```
    """

    def __init__(self, decay=0.99, warmup_steps=100, epsilon=1e-8, name=None, **kwargs):
        owner = "ScaleNormalized"
        check_kwargs(owner, kwargs, ("decay", "warmup_steps", "epsilon"))
        decay = check_float(owner, "decay", decay, low=0.0, high=1.0, high_open=True)
        warmup_steps = check_int(
            owner, "warmup_steps", warmup_steps, low=0, high=_MAX_WARMUP_STEPS
        )
        epsilon = check_float(owner, "epsilon", epsilon, low=0.0, low_open=True)
        super().__init__(name=name, **kwargs)
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.epsilon = epsilon

    def build(self, input_shape):
        super().build(input_shape)
        self.running_mean = add_state(self, "running_mean", 0.0, (input_shape[0],))
        # The training steps taken (exact to 2^24 steps, where it stays).
        self.steps = add_state(self, "steps", 0.0, ())
        self._ema_rate = constant(1.0 - self.decay)

    def combine(self, losses, training=True):
        return self._rule(losses, self.task_weights.value, training)

    def balance(self, losses, training=True):
        return self._rule(losses, ops.ones_like(losses), training)

    def _rule(self, losses, fixed, training):
        # `.value` and Python operators: no conversion call per operation
        # (what an eager step pays for most on K numbers).
        observed = step_ops.stop_gradient(losses)
        steps = self.steps.value
        mean = self.running_mean.value
        if training:
            steps = steps + 1.0
            rate = step_ops.where(steps <= self.warmup_steps, 1.0 / steps, self._ema_rate)
            mean = mean + rate * (observed - mean)
            step_ops.assign(self.running_mean, mean)
            step_ops.assign(self.steps, steps)
        else:
            mean = step_ops.where(steps > 0, mean, observed)
        weights = fixed / (step_ops.abs(mean) + self.epsilon)
        return step_ops.sum(weights * losses), weights

    def get_config(self):
        return {
            **super().get_config(),
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
            "epsilon": self.epsilon,
        }
