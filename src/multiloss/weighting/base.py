"""`Weighting`: balancers that weigh the task losses from their values."""

from keras import ops

from multiloss.balancer import Balancer

__all__ = ["Weighting"]


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
        weighted = ops.multiply(losses, self.task_weights)
        total, weights = self.balance(weighted, training=training)
        return total, ops.multiply(weights, self.task_weights)

    def balance(self, losses, training=True):
        """Returns `(total, weights)` for the (K,) weighted losses."""
        raise NotImplementedError

