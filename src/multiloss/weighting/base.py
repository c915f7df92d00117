"""`Weighting`: balancers that weigh the task losses from their values."""

from multiloss.balancer import Balancer
from multiloss.engine import ops as step_ops

__all__ = ["Weighting", "linearized_total"]


class Weighting(Balancer):
    """Base of loss-level balancers: one backward pass, of a weighted total.

    `combine(losses)` takes the (K,) vector of unweighted task losses and
    returns `(total, weights)`: the scalar to minimise and the (K,) weights
    in force on the unweighted losses (the fixed `task_weights` times the
    rule's own). Subclasses implement `balance`, which sees the losses
    already multiplied by `task_weights`; a rule where the fixed weight
    must multiply a whole term (Uncertainty's `exp(-s) L + s`, or a log of
    the loss) overrides `combine` instead.
    """

    def combine(self, losses, training=True):
        # `.value`: the tensor (a JAX step's stateless value) without a
        # conversion call; Python operators for the same reason.
        fixed = self.task_weights.value
        total, weights = self.balance(losses * fixed, training=training)
        return total, weights * fixed

    def balance(self, losses, training=True):
        """Returns `(total, weights)` for the (K,) weighted losses."""
        raise NotImplementedError


def linearized_total(value, weights, losses):
    """A total equal to `value` whose gradient is `sum_k weights_k grad L_k`.

    For a rule whose total is a function of the losses alone and whose
    weights in force are exactly its partial derivatives (FAMO): the
    rule then runs on `stop_gradient(losses)`, so an eager backend records
    none of its operations for the backward pass, and the backward pass is
    that of one weighted sum. `weights` must carry no gradient (computed
    from `stop_gradient(losses)` and state), as `value`.
    """
    linear = step_ops.sum(weights * losses)
    return linear + step_ops.stop_gradient(value - linear)
