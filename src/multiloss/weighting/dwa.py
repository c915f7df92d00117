"""`DWA`: dynamic weight average (Liu, Johns & Davison 2019)."""

import numpy as np
from keras import ops

from multiloss.balancer import register
from multiloss.engine import ops as step_ops
from multiloss.weighting._common import add_state, check_float, check_kwargs
from multiloss.weighting.base import Weighting

__all__ = ["DWA"]


@register("dwa")
class DWA(Weighting):
    """Dynamic weight average: more weight to the tasks whose loss falls slower.

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019.

    With `Lbar_k(t)` the average over the training steps of epoch `t` of
    task k's unweighted loss, the weights for epoch `t` are

        r_k = Lbar_k(t-1) / (Lbar_k(t-2) + epsilon)
        lambda_k(t) = K exp(r_k / T) / sum_j exp(r_j / T)

    and `lambda_k = 1` for the first two epochs. The total is
    `sum_k c_k lambda_k L_k`, `c_k` the fixed task weights; the weights in
    force are `c_k lambda_k`. A task whose loss fell less (ratio nearer 1,
    or above 1) gets more weight.

    Paper defaults: temperature `T = 2`, epoch averages of the training
    loss. Scale of the update: the `lambda_k` sum to K (as static weights of
    1 do), so the effective learning rate is unchanged.

    State: the running sum of this epoch's losses, the last two epoch
    averages and the current `lambda`, all Variables (saved, resumed by
    `BackupAndRestore`). The average is gathered in the training step (not
    in `evaluate`); the weights change in `on_epoch_end`, which `fit` calls.
    In a custom loop, call `balancer.on_epoch_end(epoch)` after each epoch.

    Args:
        temperature: `T` (> 0); larger is smoother (T -> inf: equal weights).
        epsilon: added to the denominator of the loss ratio.

    Example:

    ```python
    import keras, multiloss
    balancer = multiloss.weighting.DWA()
    balancer.build((2,))
    for epoch, losses in enumerate([[1.0, 1.0], [0.5, 0.9]]):
        balancer.combine(keras.ops.array(losses))  # one training step per epoch
        balancer.on_epoch_end(epoch)
    _, weights = balancer.combine(keras.ops.array([0.4, 0.8]), training=False)
    print(keras.ops.convert_to_numpy(weights))  # about [0.9, 1.1]: task 2 fell slower
    ```
    """

    def __init__(self, temperature=2.0, epsilon=1e-8, name=None, **kwargs):
        check_kwargs("DWA", kwargs, ("temperature", "epsilon"))
        temperature = check_float("DWA", "temperature", temperature, low=0.0, low_open=True)
        epsilon = check_float("DWA", "epsilon", epsilon, low=0.0)
        super().__init__(name=name, **kwargs)
        self.temperature = temperature
        self.epsilon = epsilon

    def build(self, input_shape):
        super().build(input_shape)
        k = input_shape[0]
        self.epoch_loss_sum = add_state(self, "epoch_loss_sum", 0.0, (k,))
        self.epoch_steps = add_state(self, "epoch_steps", 0.0, ())
        # Row 0: the average of epoch t-2, row 1: of epoch t-1.
        self.epoch_averages = add_state(self, "epoch_averages", 0.0, (2, k))
        self.epochs_seen = add_state(self, "epochs_seen", 0, (), dtype="int32")
        self.dwa_weights = add_state(self, "dwa_weights", 1.0, (k,))

    def step_variables(self):
        return [self.epoch_loss_sum, self.epoch_steps]  # the rest changes between epochs

    def combine(self, losses, training=True):
        if training:
            # The unweighted losses: a change of the fixed weights between
            # epochs must not read as a change of the loss.
            self._observe(losses)
        return super().combine(losses, training=training)

    def _observe(self, losses):
        step_ops.assign_add(self.epoch_loss_sum, step_ops.stop_gradient(losses))
        step_ops.assign_add(self.epoch_steps, 1.0)

    def balance(self, losses, training=True):
        weights = self.dwa_weights.value
        return step_ops.sum(weights * losses), weights

    def on_epoch_end(self, epoch, logs=None):
        self._sync_state()
        steps = float(ops.convert_to_numpy(self.epoch_steps))
        if steps == 0.0:
            return  # no training step this epoch: nothing to average
        average = ops.convert_to_numpy(self.epoch_loss_sum).astype("float64") / steps
        previous = ops.convert_to_numpy(self.epoch_averages)[1].astype("float64")
        seen = int(ops.convert_to_numpy(self.epochs_seen)) + 1
        self.epoch_averages.assign(np.stack([previous, average]).astype("float32"))
        self.epochs_seen.assign(seen)
        if seen >= 2:
            self.dwa_weights.assign(self.weights_from(previous, average).astype("float32"))
        self._reset_epoch()

    def weights_from(self, before, last):
        """The `lambda` (numpy) from two epoch averages: `before` = t-2,
        `last` = t-1."""
        ratio = np.asarray(last, "float64") / (np.asarray(before, "float64") + self.epsilon)
        logits = ratio / self.temperature
        logits = logits - np.max(logits)
        e = np.exp(logits)
        return len(e) * e / np.sum(e)

    def _reset_epoch(self):
        self.epoch_loss_sum.assign(np.zeros(self.epoch_loss_sum.shape, "float32"))
        self.epoch_steps.assign(0.0)

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "epsilon": self.epsilon,
        }
