"""`RLW`: random loss weighting (Lin et al. 2022)."""

import numbers

import keras
import numpy as np
from keras import ops

from multiloss.balancer import register
from multiloss.engine import ops as step_ops
from multiloss.weighting._common import add_state, check_kwargs
from multiloss.weighting.base import Weighting

__all__ = ["RLW"]


class _DrawnSeed(keras.random.SeedGenerator):
    """A seed already drawn, for `keras.random`, which takes a seed only as
    an int or a `SeedGenerator`; it holds no state of its own."""

    def __init__(self, value):  # no Variable: this lives for one draw
        self._value = value

    def next(self, ordered=True):
        return self._value


@register("rlw")
class RLW(Weighting):
    """Random loss weights, drawn afresh at every training step.

    Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022.

    At each training step:

        z ~ Normal(0, I_K),   lambda = softmax(z),
        total = sum_k c_k lambda_k L_k

    with `c_k` the fixed task weights; the weights in force are
    `c_k lambda_k`. `evaluate` uses the expected weights, `lambda_k = 1/K`,
    and draws nothing.

    Paper defaults: the standard normal and the softmax (their headline
    variant). Scale of the update: the `lambda_k` sum to 1, so the update is
    1/K of a plain sum's; raise the learning rate (about K times) to compare
    with static weights of 1.

    The draws come from a `keras.random.SeedGenerator` held by the balancer:
    `RLW(seed=...)` repeats the same sequence, on every backend (the
    sequences differ between backends). Each step draws the next step's
    `z` and uses the one drawn before it (held in the Variable `draw`; the
    first comes from numpy at `build`, seeded alike): the same independent
    standard normals, but a draw that no step waits for. (In a compiled JAX
    step on CPU a draw the weights wait on cost 5-8% of the benchmark step,
    though the draw alone costs under 1 us: XLA runs its small kernels
    beside the forward pass.) The generator's state and the held draw are
    saved with the model and by `BackupAndRestore`, so a resumed run
    continues the sequence. With `seed=None` the seeds come from Keras's
    global seed and numpy's (both set by `keras.utils.set_random_seed`).

    Args:
        seed: an int, or None.

    Example:

    ```python
    import keras, multiloss
    balancer = multiloss.weighting.RLW(seed=1)
    balancer.build((3,))
    total, weights = balancer.combine(keras.ops.array([1.0, 2.0, 3.0]))
    print(float(keras.ops.sum(weights)))  # 1.0 (up to rounding); new weights every step
    ```
    """

    def __init__(self, seed=None, name=None, **kwargs):
        check_kwargs("RLW", kwargs, ("seed",))
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0
        ):
            raise ValueError(f"RLW(seed={seed!r}): seed must be None or an int >= 0.")
        super().__init__(name=name, **kwargs)
        self.seed = None if seed is None else int(seed)

    def build(self, input_shape):
        super().build(input_shape)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="rlw_seed")
        state = self.seed_generator.state
        self._seed_increment = ops.convert_to_tensor([0, 1], dtype=state.dtype)
        rng = np.random if self.seed is None else np.random.default_rng(self.seed)
        self.draw = add_state(self, "draw", rng.standard_normal(input_shape[0]))

    def balance(self, losses, training=True):
        if training:
            # Before the assignment below, which torch makes in place.
            weights = step_ops.softmax(self.draw.value)
            # What `seed_generator.next()` does, in fewer operations (it
            # builds a tensor from numpy at every call): the draw takes the
            # seed first, then the state moves on (in place on torch, where
            # each op of a step is paid in Python).
            state = self.seed_generator.state
            seed = state.value
            draw = keras.random.normal(ops.shape(losses), seed=_DrawnSeed(seed))
            step_ops.assign(state, seed + self._seed_increment)
            step_ops.assign(self.draw, draw)
        else:
            weights = ops.full_like(losses, 1.0 / losses.shape[0])
        return step_ops.sum(weights * losses), weights

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
