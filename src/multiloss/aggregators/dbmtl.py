"""`DBMTL`: dual-balancing multi-task learning (Lin et al. 2023)."""

from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import Aggregator
from multiloss.balancer import register

__all__ = ["DBMTL"]


@register("dbmtl")
class DBMTL(Aggregator):
    """Dual-Balancing Multi-Task Learning (Lin et al., "Dual-Balancing for
    Multi-Task Learning", 2023; LibMTL's `DB_MTL`, by the same authors).

    Loss scales are balanced by taking the gradient of `log(L_k + eps)`,
    `g_k / (L_k + eps)`; gradient magnitudes by rescaling every task's
    (moving-averaged) log-gradient to the largest norm:

        m_k <- ĝ_k + (beta / t^sigma) (m_k - ĝ_k),   ĝ_k = g_k / (L_k + eps)
        d = sum_k (max_j ||m_j|| / (||m_k|| + eps)) m_k

    with `t` the training step (from 1) and `m_k` a moving average per task
    of the log-gradients. DB-MTL needs the per-task gradients themselves
    (`needs = "jacobians"`) and keeps `m` in one flat `(K, P)` buffer: the
    shared variables' gradients concatenated in the engine's (fixed) order.
    A `MultiLossModel` sizes it at compile for all its trainable variables
    (`build_state`), so every variable the step may share fits; standalone,
    the first call sizes it. Losses are assumed positive; `L_k` below 0
    counts as 0. The buffer changes only in training steps (otherwise the
    current gradients are combined with the buffer as it would be updated,
    without storing it); `reset()` zeros it.

    The logged weight of task k is its balancing factor
    `max_j ||m_j|| / (||m_k|| + eps)` (it multiplies the averaged
    log-gradient, not the raw gradient).

    Paper defaults (LibMTL): beta = 0.9, sigma = 0 (`DB_beta`,
    `DB_beta_sigma`), eps = 1e-8.

    Args:
        beta: float in [0, 1) (default 0.9).
        sigma: float in [0, 10] (default 0.0).
        eps: float in (0, 1] (default 1e-8).

    Scale of the update: free: every term has the largest log-gradient
    norm, so `||d|| <= K max_j ||m_j||` (log-gradients are gradients divided
    by the losses).

    Example:

    ```python
    import numpy as np, multiloss
    dbmtl = multiloss.aggregators.DBMTL()
    J = np.array([[1.0, 0.0], [0.0, 10.0]], "float32")
    d = dbmtl(J, losses=np.array([1.0, 10.0], "float32"))
    print(np.asarray(d))  # both log-gradients at the same norm: [0.1 0.1]
    ```
    """

    needs = "jacobians"

    def __init__(self, beta=0.9, sigma=0.0, eps=1e-8, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.beta = C.check_number("beta", beta, 0.0, 1.0, high_open=True, owner="DBMTL")
        self.sigma = C.check_number("sigma", sigma, 0.0, 10.0, owner="DBMTL")
        self.eps = C.check_number("eps", eps, 0.0, 1.0, low_open=True, owner="DBMTL")
        self.buffer = None

    def build(self, input_shape):
        super().build(input_shape)
        self.step = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                    name="step")

    def build_state(self, variables):
        """Creates the moving-average buffer, `(K, P)` with `P` the total
        size of `variables`. Call it once, outside any compiled function,
        before the first step (the model does, at compile)."""
        size = 0
        for variable in variables:
            count = 1
            for dim in variable.shape:
                count *= int(dim)
            size += count
        self._build_buffer(size)

    def _build_buffer(self, size):
        if self.buffer is not None:
            return
        # Keras locks a built layer's state; this variable belongs to the
        # build, deferred until the size is known.
        tracker = self._tracker
        was_locked = tracker.locked
        tracker.unlock()
        try:
            self.buffer = self.add_weight(shape=(self.num_tasks, size), initializer="zeros",
                                          trainable=False, name="buffer")
        finally:
            if was_locked:
                tracker.lock()

    def reset(self):
        self.step.assign(0.0)
        if self.buffer is not None:
            self.buffer.assign(ops.zeros(self.buffer.shape))

    def weighting(self, gram, losses=None, training=True):
        raise NotImplementedError(
            "DBMTL combines moving averages of the gradients, not a weighting of the "
            "Gram matrix: use aggregate() or call it on a (K, P) matrix."
        )

    def aggregate(self, jacobians, losses=None, training=True):
        if losses is None:
            raise ValueError("DBMTL needs the task losses.")
        k = jacobians[0].shape[0]
        c = ops.cast(self.task_weights, "float32")
        # log(c L + eps)' = c g / (c L + eps): the fixed weights cancel out.
        losses = ops.maximum(ops.cast(losses, "float32") * c, 0.0)
        scale = c / (losses + self.eps)
        t = C.read(self.step) + 1.0
        rate = self.beta / ops.power(t, self.sigma) if self.sigma else self.beta
        sizes = [_size(j.shape[1:]) for j in jacobians]
        total = sum(sizes)
        self._build_buffer(total)
        if self.buffer.shape[1] < total:
            raise ValueError(
                f"DBMTL's buffer holds {self.buffer.shape[1]} gradient entries per task, "
                f"the shared variables have {total}."
            )
        g = ops.concatenate(
            [ops.reshape(ops.cast(j, "float32"), (k, -1)) for j in jacobians], axis=1
        )
        g = g * scale[:, None]
        stored = C.read(self.buffer)
        m = g + rate * (stored[:, :total] - g)
        n = ops.sqrt(ops.sum(ops.square(m), axis=1))
        factor = ops.max(n) / (n + self.eps)
        d = ops.matmul(factor[None, :], m)[0]
        directions, offset = [], 0
        for jacobian, size in zip(jacobians, sizes):
            part = ops.reshape(d[offset:offset + size], jacobian.shape[1:])
            directions.append(ops.cast(part, jacobian.dtype))
            offset += size
        if training:
            if total < self.buffer.shape[1]:
                m = ops.concatenate([m, stored[:, total:]], axis=1)
            self.buffer.assign(m)
            self.step.assign(t)
        return directions, factor

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "sigma": self.sigma,
                "eps": self.eps}


def _size(shape):
    count = 1
    for dim in shape:
        count *= int(dim)
    return count
