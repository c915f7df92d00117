"""`GradDrop`: gradient sign dropout (Chen et al. 2020)."""


import keras
from keras import ops

from multiloss.aggregators import _common as C
from multiloss.aggregators.base import Aggregator
from multiloss.aggregators.pcgrad import _Seeded
from multiloss.balancer import register

__all__ = ["GradDrop"]


@register("graddrop")
class GradDrop(_Seeded, Aggregator):
    """Gradient sign dropout (Chen et al., "Just Pick a Sign: Optimizing
    Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020,
    Algorithm 1). Per coordinate of every shared variable, with the
    positive sign purity

        P = (1 + sum_k g_k / sum_k |g_k|) / 2        (P = 1/2 where all are 0),

    a uniform draw `U` keeps the positive components if `P > U` and the
    negative ones if `P < U`:

        M_k = [P > U][g_k > 0] + [P < U][g_k < 0],
        d = sum_k (leak_k + (1 - leak_k) M_k) g_k.

    Not a weighting of the rows: GradDrop needs the per-task gradients
    (`needs = "jacobians"`). The paper applies it at the shared
    activations, its gradients there multiplied by the sign of the inputs
    and summed over the batch; on parameters (here) the coordinates are
    the parameters'. Draws come from a seeded `keras.random.SeedGenerator`
    (`reset()` restores it); with `training=False`, `U = 1/2` (majority sign)
    and the generator is not advanced.

    The logged weight of task k is the fraction of its squared gradient norm
    kept, `sum (leak_k + (1 - leak_k) M_k) g_k^2 / ||g_k||^2`.

    Paper defaults: leak = 0 (no leak), f = identity.

    Args:
        leak: float in [0, 1] or a sequence of K of them (default 0.0).
        seed: int in [0, 2**31 - 1] or None.

    Scale of the update: free, at most `Sum`'s per coordinate (each
    coordinate keeps one sign's components).

    Example:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 2.0], [-3.0, 2.0]], "float32")
    d = multiloss.aggregators.GradDrop(seed=0)(J)
    print(np.asarray(d))  # coordinate 2 agrees: 4; coordinate 1 keeps one sign
    ```
    """

    needs = "jacobians"

    def __init__(self, leak=0.0, seed=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(leak, (list, tuple)):
            self.leak = tuple(
                C.check_number("leak", v, 0.0, 1.0, owner="GradDrop") for v in leak
            )
            if not self.leak:
                raise ValueError("GradDrop: `leak` must be a number in [0, 1] or a "
                                 "sequence of K of them, got an empty sequence.")
        else:
            self.leak = C.check_number("leak", leak, 0.0, 1.0, owner="GradDrop")
        self.seed = C.check_seed(seed, "GradDrop")

    def build(self, input_shape):
        if isinstance(self.leak, tuple) and len(self.leak) != input_shape[0]:
            raise ValueError(
                f"GradDrop: `leak` has {len(self.leak)} entries but the aggregator is "
                f"built for {input_shape[0]} tasks."
            )
        super().build(input_shape)
        self._build_seed()

    def reset(self):
        self._reset_seed()

    def weighting(self, gram, losses=None, training=True):
        raise NotImplementedError(
            "GradDrop is not a weighting of the Gram matrix: use aggregate() or call it "
            "on a (K, P) matrix."
        )

    def aggregate(self, jacobians, losses=None, training=True):
        k = jacobians[0].shape[0]
        c = ops.cast(self.task_weights, "float32")
        if isinstance(self.leak, tuple):
            leak = ops.convert_to_tensor(self.leak, "float32")
        else:
            leak = ops.full((k,), self.leak, "float32")
        directions = []
        kept = ops.zeros((k,), "float32")
        total = ops.zeros((k,), "float32")
        for jacobian in jacobians:
            dtype = jacobian.dtype
            g = ops.cast(jacobian, "float32")
            g = g * ops.reshape(c, (k,) + (1,) * (len(g.shape) - 1))
            shape = tuple(g.shape[1:])
            denom = ops.sum(ops.abs(g), axis=0)
            purity = 0.5 * (1.0 + C.safe_div(ops.sum(g, axis=0), denom, 0.0))
            if training:
                u = keras.random.uniform(shape, seed=self.seed_generator)
            else:
                u = ops.full(shape, 0.5, "float32")
            mask = ops.logical_or(
                ops.logical_and(purity > u, g > 0.0), ops.logical_and(purity < u, g < 0.0)
            )
            lk = ops.reshape(leak, (k,) + (1,) * len(shape))
            factor = lk + (1.0 - lk) * ops.cast(mask, "float32")
            directions.append(ops.cast(ops.sum(factor * g, axis=0), dtype))
            axes = tuple(range(1, len(g.shape)))
            sq = ops.square(g)
            kept = kept + (ops.sum(factor * sq, axis=axes) if axes else factor * sq)
            total = total + (ops.sum(sq, axis=axes) if axes else sq)
        w = C.safe_div(kept, total) * c
        return directions, w

    def get_config(self):
        leak = list(self.leak) if isinstance(self.leak, tuple) else self.leak
        return {**super().get_config(), "leak": leak, "seed": self.seed}
