"""`GradNorm`: learned task weights that equalise the training rates
(Chen et al. 2018)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import Aggregator
from multiloss.balancer import register

__all__ = ["GradNorm"]


@register("gradnorm")
class GradNorm(Aggregator):
    """GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive
    Loss Balancing in Deep Multitask Networks", ICML 2018).

    Learned weights `w` (state, 1 each at the start) weigh the task
    gradients, `d = sum_k w_k g_k`. After each training step they move to
    equalise the tasks' training rates. With `n_k = ||g_k||` the gradient
    norm of task k on the last shared layer (the engine passes that layer's
    Gram matrix: `gram_scope = "last_shared_layer"`), `L_k(0)` the task's
    first loss and `alpha` the restoring strength:

        G_k = w_k n_k,   Gbar = mean_k G_k,
        r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0)),
        L_grad = sum_k | G_k - Gbar r_k^alpha |     (target held constant),
        w <- w - lr * dL_grad/dw / Gbar,            dL_grad/dw_k = sign(G_k - Gbar r_k^alpha) n_k,
        w <- K w / sum(w)                           (after clipping at 1e-6 K).

    The paper updates `w` with the network's optimiser; here the update is
    the aggregator's own plain gradient step, in-graph, with its own
    `learning_rate`, taken on `L_grad / Gbar` (`Gbar` held constant): the same
    direction, made independent of the scale of the gradients so that one
    learning rate fits any model. The weights used at a step are those
    before its update; state changes only when `training` is true.

    Losses are assumed positive (the loss ratios use `max(L, 1e-12)`).

    Paper defaults: alpha = 1.5 (NYUv2; the paper's range is 0 to 3).

    Args:
        alpha: float in [0, 10] (default 1.5).
        learning_rate: float in (0, 10] (default 0.025), the step size of the
            weight update.

    Scale of the update: the weights sum to K.

    Example:

    ```python
    import numpy as np, multiloss
    gradnorm = multiloss.aggregators.GradNorm()
    J = np.array([[1.0, 0.0], [0.0, 10.0]], "float32")
    losses = np.array([1.0, 1.0], "float32")
    for _ in range(3):
        d = gradnorm(J, losses)
    print(np.asarray(gradnorm.current_weights()))  # task 0 gains weight
    ```
    """

    gram_scope = "last_shared_layer"

    def __init__(self, alpha=1.5, learning_rate=0.025, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = C.check_number("alpha", alpha, 0.0, 10.0, owner="GradNorm")
        self.learning_rate = C.check_number(
            "learning_rate", learning_rate, 0.0, 10.0, low_open=True, owner="GradNorm"
        )

    def build(self, input_shape):
        super().build(input_shape)
        k = input_shape[0]
        self.loss_weights = self.add_weight(
            shape=(k,), initializer="ones", trainable=False, name="loss_weights"
        )
        self.initial_losses = self.add_weight(
            shape=(k,), initializer="zeros", trainable=False, name="initial_losses"
        )
        self.started = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="started"
        )

    def reset(self):
        self.loss_weights.assign(ops.ones(self.loss_weights.shape))
        self.initial_losses.assign(ops.zeros(self.initial_losses.shape))
        self.started.assign(0.0)

    def current_weights(self):
        """The learned weights (sum K) that the next step will use."""
        return C.read(self.loss_weights)

    def update(self, weights, gram, losses, initial_losses):
        """The weights after one GradNorm step (pure function)."""
        k = gram.shape[0]
        n = C.norms(C.prepare_gram(gram))
        losses = ops.maximum(ops.cast(losses, "float32"), 1e-12)
        ratio = losses / ops.maximum(initial_losses, 1e-12)
        rate = ratio / ops.mean(ratio)
        g = weights * n
        gbar = ops.mean(g)
        target = gbar * ops.power(rate, self.alpha)
        grad = ops.sign(g - target) * n
        step = self.learning_rate * C.safe_div(grad, gbar)
        new = ops.maximum(weights - step, 1e-6 * k)
        return k * new / ops.sum(new)

    def weighting(self, gram, losses=None, training=True):
        if losses is None:
            raise ValueError("GradNorm needs the task losses.")
        losses = ops.cast(losses, "float32")
        w = C.read(self.loss_weights)
        started = C.read(self.started) > 0
        initial = ops.where(started, C.read(self.initial_losses), losses)
        if training:
            new = self.update(w, gram, losses, initial)
            self.loss_weights.assign(new)
            self.initial_losses.assign(initial)
            self.started.assign(1.0)
        return w

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "learning_rate": self.learning_rate,
        }
