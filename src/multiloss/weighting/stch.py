"""`STCH`: smooth Tchebycheff scalarisation (Lin et al. 2024)."""

import numpy as np
from keras import ops

from multiloss.balancer import register
from multiloss.engine import ops as step_ops
from multiloss.weighting._common import (
    add_state,
    check_float,
    check_int,
    check_kwargs,
    check_per_task,
    constant,
    per_task_tensor,
    positive_part,
)
from multiloss.weighting.base import Weighting

__all__ = ["STCH"]

# The smallest nadir level: D / n stays finite, and so does the gradient of
# log(D / n + eps) at D = 0, 1 / (n eps), for eps down to 1e-24.
_MIN_NADIR = 1e-12


@register("stch")
class STCH(Weighting):
    """Smooth Tchebycheff scalarisation: a smooth maximum of the log losses,
    each relative to its level after a warm-up (the nadir point).

    Lin, Zhang, Liu, Liu, Zhang & Zhang, "Smooth Tchebycheff Scalarization
    for Multi-Objective Optimization", ICML 2024 (official multi-task code:
    github.com/Xi-L/STCH, STCH_MTL, as in LibMTL).

    With `D_k = max(L_k - min_losses_k, 0)` and `c_k` the fixed task weights
    (the paper's preference vector; 1 by default):

    - the first `warmup_epochs` epochs: `total = sum_k c_k log(D_k + eps)`;
    - the next epoch: the same, and each step's `D` is averaged into the
      nadir point `n_k`;
    - from the epoch after on:

          l_k = log(D_k / (n_k + eps) + eps)
          total = mu K log sum_k exp(c_k l_k / mu)

      computed stably (the maximum is taken out before the exponentials);
      `n_k` is at least 1e-12 (a task at its floor through the whole nadir
      epoch would otherwise divide by zero).

    The gradient is `sum_k w_k grad L_k` with the weights in force
    `w_k = K c_k p_k / (D_k + eps (n_k + eps))`, `p = softmax(c l / mu)`:
    the task furthest above its nadir level gets the most weight, smoothly
    (mu -> 0 gives the Tchebycheff max; large mu, the sum of logs). In the
    warm-up, `w_k = c_k / (D_k + eps)`.

    Paper defaults: `mu = 1`, `warmup_epochs = 4`, `eps = 1e-20` (the
    official code). Scale of the update: free (the `p_k` sum to 1 in log
    space, times K; each weight is in units of 1/loss).

    The balancer counts the training epochs itself, in `on_epoch_end`,
    which `fit` calls (so a second `fit` continues where the first ended);
    in a custom loop call `balancer.on_epoch_end(epoch)` after each epoch
    (without it, the warm-up never ends); the phase and the nadir scale the
    steps use are set there too. The epoch count, the nadir sum, its step
    count, the phase and the scale are Variables: saved, and resumed by
    `BackupAndRestore`.
    `evaluate` uses the current phase and changes nothing.

    Bad input: a loss at or below its floor `min_losses_k` (0 by default) is
    clamped to it and gets weight 0; a loss that can be negative needs its
    lower bound as `min_losses`.

    Args:
        mu: smoothing (> 0).
        warmup_epochs: epochs of warm-up before the nadir epoch (>= 0).
        min_losses: a float or one per task: the floor of each loss.
        epsilon: `eps` above (> 0).

    Example:

    ```python
    import keras, multiloss
    balancer = multiloss.weighting.STCH(warmup_epochs=0)
    balancer.build((2,))
    balancer.combine(keras.ops.array([1.0, 4.0]))  # epoch 0: the nadir epoch
    balancer.on_epoch_end(0)  # STCH from now on, nadir [1, 4]
    total, weights = balancer.combine(keras.ops.array([0.5, 4.0]))
    print(keras.ops.convert_to_numpy(weights))  # [4/3, 1/3]
    # = K p / L with p = [1/3, 2/3]: task 2, still at its nadir level, leads in log space

    ```
    """

    def __init__(
        self, mu=1.0, warmup_epochs=4, min_losses=0.0, epsilon=1e-20, name=None, **kwargs
    ):
        owner = "STCH"
        check_kwargs(owner, kwargs, ("mu", "warmup_epochs", "min_losses", "epsilon"))
        mu = check_float(owner, "mu", mu, low=0.0, low_open=True)
        warmup_epochs = check_int(owner, "warmup_epochs", warmup_epochs, low=0)
        min_losses = check_per_task(owner, "min_losses", min_losses)
        epsilon = check_float(owner, "epsilon", epsilon, low=0.0, low_open=True)
        super().__init__(name=name, **kwargs)
        self.mu = mu
        self.warmup_epochs = warmup_epochs
        self.min_losses = min_losses
        self.epsilon = epsilon

    def build(self, input_shape):
        super().build(input_shape)
        k = input_shape[0]
        self._floor = per_task_tensor("STCH", "min_losses", self.min_losses, k)
        self.epochs_done = add_state(self, "epochs_done", 0, (), dtype="int32")
        # Rows: the sum of each task's shifted loss over the nadir epoch's
        # steps, and the count of those steps (the same in every column): one
        # Variable, one assignment per step.
        self.nadir_sums = add_state(self, "nadir_sums", 0.0, (2, k))
        # shifted ** [[1], [0]] is [shifted; 1] in one operation.
        self._sum_powers = constant([[1.0], [0.0]])
        self._epsilon = constant(self.epsilon)
        # What the epoch count and the nadir imply for the steps of the
        # current epoch, set between epochs (fewer ops in every step):
        # `phase` = [gathering the nadir (0/1), K stch, 1 - stch, mu K stch]
        # with stch = 1 in the STCH phase, else 0; `scale` = 1 / (nadir +
        # eps), 1 before the nadir exists (see `_rule`).
        self.phase = add_state(self, "phase", self._phase(k, gather=self.warmup_epochs == 0, stch=False))
        self.scale = add_state(self, "scale", 1.0, (k,))

    def _phase(self, k, gather, stch):
        return [float(gather), k * float(stch), 1.0 - float(stch), self.mu * k * float(stch)]

    def step_variables(self):
        return [self.nadir_sums]  # the rest changes between epochs

    @property
    def nadir_sum(self):
        """Each task's shifted loss summed over the nadir epoch so far."""
        return ops.convert_to_tensor(self.nadir_sums)[0]

    @property
    def nadir_steps(self):
        """The number of steps summed in `nadir_sum` (a float32 scalar)."""
        return ops.convert_to_tensor(self.nadir_sums)[1, 0]

    def on_epoch_end(self, epoch, logs=None):
        self._sync_state()
        epochs_done = int(ops.convert_to_numpy(self.epochs_done)) + 1
        self.epochs_done.assign(epochs_done)
        steps = float(ops.convert_to_numpy(self.nadir_steps))
        stch = epochs_done > self.warmup_epochs and steps > 0
        self.phase.assign(self._phase(self.num_tasks, gather=epochs_done == self.warmup_epochs, stch=stch))
        if stch:
            nadir = ops.convert_to_numpy(self.nadir_sum).astype("float64") / steps
            self.scale.assign((1.0 / (np.maximum(nadir, _MIN_NADIR) + self.epsilon)).astype("float32"))

    def combine(self, losses, training=True):
        return self._rule(losses, self.task_weights.value, training)

    def balance(self, losses, training=True):
        return self._rule(losses, ops.ones_like(losses), training)

    # Arithmetic uses Python operators on backend tensors rather than
    # `ops.add` & co.: the same backend operation without Keras's argument
    # conversion, which costs more than the operation itself on K numbers in
    # an eager (torch) step.

    def _rule(self, losses, fixed, training):
        # The weights are the total's exact partial derivatives in either
        # phase: computed on the values, they weigh one sum whose gradient
        # is theirs (`losses - values` is 0 with the losses' gradient).
        values = step_ops.stop_gradient(losses)
        shifted = positive_part(values, self._floor)
        # `.value`: the tensor (or a JAX step's stateless value) without a
        # conversion call.
        phase = self.phase.value
        if training:
            gather = phase[0]
            step_ops.assign_add(self.nadir_sums, gather * shifted ** self._sum_powers)
        # One formula for both phases, selected by products with the phase
        # entries (not ops.where or ops.cond: a few cheap ops in every
        # backend, eager or compiled): the scale is 1 until the STCH phase,
        # so that log(D scale + eps) is then the warm-up's log(D + eps).
        scale = self.scale.value
        ratio = shifted * scale + self._epsilon
        scaled = fixed * step_ops.log(ratio)
        smooth = scaled / self.mu if self.mu != 1.0 else scaled
        warm = phase[2]
        log_p = step_ops.log_softmax(smooth)
        p = step_ops.exp(log_p)
        share = phase[1] * p + warm
        # d/dD log(D scale + eps) = scale / ratio. A clamped task (at or
        # below its floor) gets weight 0, masked in the numerator (no
        # inf * 0).
        weights = fixed * share * step_ops.sign(shifted) * scale / ratio
        # logsumexp(smooth) = smooth_k - log p_k for every k; their average
        # under p (exact where p is large, no cancellation where it is
        # small) saves a logsumexp, which costs as much as the rest of the
        # rule in an eager step.
        return step_ops.sum(
            phase[3] * p * (smooth - log_p) + warm * scaled + weights * (losses - values)
        ), weights

    def get_config(self):
        return {
            **super().get_config(),
            "mu": self.mu,
            "warmup_epochs": self.warmup_epochs,
            "min_losses": self.min_losses,
            "epsilon": self.epsilon,
        }
