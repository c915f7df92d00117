"""`FAMO`: fast adaptive multitask optimisation (Liu et al. 2023)."""

import numpy as np
from keras import ops

from multiloss.balancer import register
from multiloss.engine import ops as step_ops
from multiloss.weighting._common import (
    add_state,
    check_float,
    check_kwargs,
    check_per_task,
    constant,
    per_task_tensor,
    positive_part,
)
from multiloss.weighting.base import Weighting, linearized_total

__all__ = ["FAMO"]

# torch.optim.Adam's defaults, which the paper's code uses for the logits.
_BETA_1, _BETA_2, _ADAM_EPSILON = 0.9, 0.999, 1e-8
_TINY = 1e-30
# The normalisers' value before the first step: small enough to vanish
# from the first update's sums (1e-20 * 0.9 + 40 is 40 in float32), large
# enough that its product with Adam's epsilon (1e-28) stays a normal float:
# XLA may rewrite `(m / n) / (sqrt(v) + eps)` as `m / (n * (sqrt(v) + eps))`,
# where a denormal product flushed to 0 would make the first step's 0 / 0.
_NORMALIZER_BEFORE_FIRST_STEP = 1e-20


@register("famo")
class FAMO(Weighting):
    """Fast adaptive multitask optimisation: balances the tasks' rates of
    improvement, at the cost of one backward pass.

    Liu, Liu, Jin, Stone & Liu, "FAMO: Fast Adaptive Multitask
    Optimization", NeurIPS 2023 (official code: github.com/Cranial-XIX/FAMO).

    Task logits `xi` (K, start at 0), `z = softmax(xi)`, and with
    `D_k = max(L_k - min_losses_k, 0) + epsilon`:

        total = sum_k c_k z_k log D_k / C,   C = sum_k c_k z_k / D_k (a constant)

    whose gradient is `sum_k w_k grad L_k` with the weights in force
    `w_k = c_k z_k / (C D_k)`, which sum to 1 (`c_k`: the fixed task weights,
    1 by default; 0 removes a task). After each update of the network, the
    logits take one Adam step (learning rate `w_lr`, L2 weight decay
    `gamma`, betas 0.9/0.999, eps 1e-8, as `torch.optim.Adam`) along

        g = J_softmax(xi)^T delta + gamma xi,   delta_k = log D_k(before) - log D_k(after)

    i.e. `g_k = z_k (delta_k - sum_j z_j delta_j) + gamma xi_k`: a task that
    improved less than the others gains weight.

    One forward pass per step: the paper evaluates the losses "after" on the
    same batch with an extra forward pass; here the next step's losses (the
    next batch, after the update) stand in for them, so the logits of step
    t are updated at the start of step t+1, before its weights are formed.
    No update at the first step. `evaluate` uses the logits as they are and
    changes nothing.

    Paper defaults: `w_lr=0.025`, `gamma=0.01` (the official `famo.py`; the
    paper's experiments use 0.001 on NYUv2, CelebA and QM9); the paper also
    clips the shared gradient norm at 1, which is the optimizer's job here
    (`keras.optimizers.Adam(clipnorm=1.0)`, on all variables). Scale of the
    update: the weights in force sum to 1 (1/K of a plain sum's update
    when the losses are equal).

    Bad input: a loss at or below its floor `min_losses_k` (0 by default;
    the paper's `min_losses`) is clamped (`D_k = epsilon`) and gets weight
    0; a loss that can be negative needs its lower bound as `min_losses`.

    Args:
        w_lr: learning rate of the logits (> 0).
        gamma: weight decay of the logits (>= 0).
        min_losses: a float or one per task: the floor of each loss.
        epsilon: added to each shifted loss (> 0), as the paper's 1e-8.

    Example:

    ```python
    import keras, multiloss
    balancer = multiloss.weighting.FAMO()
    balancer.build((2,))
    balancer.combine(keras.ops.array([1.0, 1.0]))  # step 1: no update yet
    total, weights = balancer.combine(keras.ops.array([0.5, 0.9]))  # task 2 improved less
    print(keras.ops.convert_to_numpy(balancer.logits))  # [-0.025, 0.025]
    ```
    """

    def __init__(self, w_lr=0.025, gamma=0.01, min_losses=0.0, epsilon=1e-8, name=None, **kwargs):
        owner = "FAMO"
        check_kwargs(owner, kwargs, ("w_lr", "gamma", "min_losses", "epsilon"))
        w_lr = check_float(owner, "w_lr", w_lr, low=0.0, low_open=True)
        gamma = check_float(owner, "gamma", gamma, low=0.0)
        min_losses = check_per_task(owner, "min_losses", min_losses)
        epsilon = check_float(owner, "epsilon", epsilon, low=0.0, low_open=True)
        super().__init__(name=name, **kwargs)
        self.w_lr = w_lr
        self.gamma = gamma
        self.min_losses = min_losses
        self.epsilon = epsilon

    def build(self, input_shape):
        super().build(input_shape)
        k = input_shape[0]
        self._floor = per_task_tensor("FAMO", "min_losses", self.min_losses, k)
        # One Variable, read and written once per step (what costs in an
        # eager step). Rows: the logits; softmax(logits) as the last update
        # left it (the weights of this step's update: 0 before the first
        # step, whose update is then 0 with no flag); the previous step's
        # log D; Adam's two moments as sums `M <- beta M + g` (without the
        # (1 - beta) factor); then, the same in every column, the
        # normalisers the moments are divided by at the next update (see
        # `_update`; the first one divided by `w_lr`) and the count of
        # training steps, all tiny before the first step.
        initial = np.zeros((8, k), "float32")
        initial[5:8] = _NORMALIZER_BEFORE_FIRST_STEP
        self.state = add_state(self, "state", initial)
        self._epsilon, self._tiny = constant(self.epsilon), constant(_TINY)
        self._gamma, self._adam_epsilon = constant(self.gamma), constant(_ADAM_EPSILON)
        self._moment_decay = constant([[_BETA_1], [_BETA_2]])
        self._moment_powers = constant([[1.0], [2.0]])
        # The first normaliser is kept divided by the learning rate, whose
        # product with the step then costs no operation.
        self._norm_decay = constant([[_BETA_1], [_BETA_2], [1.0]])
        self._norm_increment = constant([[1.0 / self.w_lr], [1.0], [1.0]])

    def step_variables(self):
        return [self.state]

    @property
    def steps(self):
        """The number of training steps taken (a float32 scalar tensor)."""
        return ops.convert_to_tensor(self.state)[7, 0]

    @property
    def logits(self):
        """The task logits `xi` (a tensor; `softmax(xi)` are the weights)."""
        return ops.convert_to_tensor(self.state)[0]

    def combine(self, losses, training=True):
        return self._rule(losses, self.task_weights.value, training)

    def balance(self, losses, training=True):
        return self._rule(losses, ops.ones_like(losses), training)

    # Arithmetic below uses Python operators on backend tensors rather than
    # `ops.add` & co.: the same backend operation without Keras's argument
    # conversion, which costs more than the operation itself on K numbers in
    # an eager (torch) step.

    def _rule(self, losses, fixed, training):
        # The weights are the total's exact partial derivatives (C is a
        # constant): compute on the values, differentiate one weighted sum.
        shifted = positive_part(step_ops.stop_gradient(losses), self._floor)
        d = shifted + self._epsilon
        log_d = step_ops.log(d)
        z = self._update(log_d) if training else step_ops.softmax(self.logits)
        cz = fixed * z
        ratio = cz / d
        # C > 0 unless every fixed weight is 0; the tiny term keeps 0/0 out.
        c = step_ops.sum(ratio) + self._tiny
        # A clamped task (shifted = 0: at or below its floor) gets weight 0,
        # masked in the numerator (no inf * 0, whatever epsilon).
        weights = ratio * step_ops.sign(shifted) / c
        return linearized_total(step_ops.sum(cz * log_d) / c, weights, losses), weights

    def _update(self, log_d):
        """One Adam step of the logits from the previous step's losses to
        these; zero at the first step. Returns softmax of the logits to use
        now.

        With `M = m / (1 - beta_1)` and `N_1 = (1 - beta_1^t) / (1 - beta_1)`
        at the t-th update, Adam's `m_hat = m / (1 - beta_1^t) = M / N_1`,
        and both follow `x <- beta_1 x + input` (the gradient for M, 1 for
        N_1: N_1 = 1, 1 + beta_1, ...); the same for the second moment,
        and the step count is the same sum with beta = 1. The two moments
        move as one (2, K) block: `grad ** [[1], [2]]` is the gradient and
        its square in one operation; an eager step pays per operation, not
        per number."""
        state = self.state.value
        logits, z, previous = state[0], state[1], state[2]
        moments, norms = state[3:5], state[5:8]
        zd = z * (previous - log_d)
        grad = zd - z * step_ops.sum(zd)
        if self.gamma:
            grad = grad + self._gamma * logits
        moments = moments * self._moment_decay + grad ** self._moment_powers
        unbiased = moments / norms[:2]
        # unbiased[0] is w_lr m_hat: its normaliser is N_1 / w_lr.
        logits = logits - unbiased[0] / (step_ops.sqrt(unbiased[1]) + self._adam_epsilon)
        z = step_ops.softmax(logits)
        norms = norms * self._norm_decay + self._norm_increment
        step_ops.assign(
            self.state, step_ops.concatenate([step_ops.stack([logits, z, log_d]), moments, norms])
        )
        return z

    def get_config(self):
        return {
            **super().get_config(),
            "w_lr": self.w_lr,
            "gamma": self.gamma,
            "min_losses": self.min_losses,
            "epsilon": self.epsilon,
        }
