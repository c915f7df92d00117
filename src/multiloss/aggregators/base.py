"""`Aggregator`: balancers that combine per-task gradients."""

from keras import backend, ops

from multiloss.balancer import Balancer

__all__ = ["Aggregator", "SolverAggregator"]


class Aggregator(Balancer):
    """Base of gradient-level balancers.

    The engine gives an aggregator the per-task gradients of the shared
    variables as a list of Jacobians, one per variable, each of shape
    `(K, *variable.shape)`. Most aggregators are a weighting of the Gram
    matrix `G = sum_v J_v J_v^T` (K x K, whatever the model's size): they
    implement `weighting(gram, losses, training)`, and the update of each
    variable is `sum_k w_k J_v[k]`. An aggregator that is not a weighting
    (GradDrop) sets `needs = "jacobians"` and overrides `aggregate`.

    (The method is `weighting`, not `weights`: a Keras layer's `weights` is
    the list of its variables, which Keras itself reads to save and train.)

    The fixed `task_weights` scale the task gradients before the rule sees
    them; the weights returned (and logged) are the ones in force on the
    unweighted task gradients.

    Standalone, an aggregator maps a (K, P) matrix to a (P,) direction:

    ```python
    import numpy as np, multiloss
    J = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    print(multiloss.aggregators.Mean()(J))  # [0.5, 0.5]
    ```
    """

    needs = "gram"

    def weighting(self, gram, losses=None, training=True):
        """(K,) weights from the (K, K) Gram matrix of the (weighted) task
        gradients and, for rules that use them, the (weighted) losses."""
        raise NotImplementedError

    def combine(self, losses, training=False):
        """Evaluation's total, `sum_k c_k L_k` with the fixed task weights:
        an aggregator's own weights come from gradients, which evaluation
        does not compute."""
        weights = ops.cast(self.task_weights, losses.dtype)
        return ops.sum(ops.multiply(losses, weights)), weights

    def gram_weights(self, gram, losses=None, training=True):
        """Weights in force on the unweighted task gradients, from their
        Gram matrix: the rule sees the gradients scaled by `task_weights`."""
        c = ops.cast(self.task_weights, gram.dtype)
        scaled = ops.multiply(gram, ops.multiply(c[:, None], c[None, :]))
        if losses is not None:
            losses = ops.multiply(ops.cast(losses, gram.dtype), c)
        return ops.multiply(self.weighting(scaled, losses, training=training), c)

    def aggregate(self, jacobians, losses=None, training=True):
        """Combines per-variable Jacobians of the unweighted task losses.

        Returns `(directions, weights)`: one combined gradient per variable
        and the (K,) weights in force.
        """
        gram = gram_matrix(jacobians)
        w = self.gram_weights(gram, losses, training=training)
        return [combine(w, jacobian) for jacobian in jacobians], w

    def __call__(self, matrix, losses=None, training=True):
        """The (P,) direction for a (K, P) matrix of task gradients."""
        matrix = ops.convert_to_tensor(matrix, "float32")
        if not self.built:
            self.build((matrix.shape[0],))
        directions, _ = self.aggregate([matrix], losses, training=training)
        return directions[0]

    def reset(self):
        """Restores the rule's state to its value before the first step.
        Stateless aggregators have nothing to reset; stateful ones override
        this (the fixed `task_weights` are not state and stay)."""
        state = [v for v in self.variables if v is not self.task_weights]
        if state:
            raise NotImplementedError(
                f"{type(self).__name__} has state {[v.name for v in state]} and must "
                "implement reset()."
            )


class SolverAggregator(Aggregator):
    """An aggregator whose weights come from an iterative solver with a
    fixed budget: it implements `solve(gram, losses) -> (weights,
    converged)`, and the steps where the solver did not converge are
    counted in its one log entry, `log_names[0]` (`<alias>_nonconverged`).
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.nonconverged = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="nonconverged",
            dtype="float32",
        )

    def solve(self, gram, losses=None):
        raise NotImplementedError

    def weighting(self, gram, losses=None, training=True):
        weights, converged = self.solve(gram, losses)
        self.count_failure(converged, training)
        return weights

    def count_failure(self, converged, training):
        """Adds 1 to the counter when `converged` is false (training steps
        only)."""
        if training:
            self.nonconverged.assign_add(ops.where(converged, 0.0, 1.0))

    def reset(self):
        self.nonconverged.assign(0.0)

    def logs(self):
        return {self.log_names[0]: ops.convert_to_tensor(self.nonconverged)}


def gram_matrix(jacobians):
    """`sum_v J_v J_v^T` over per-variable Jacobians of shape (K, ...), in
    float32 at least: half-precision gradients (a float16 layer's output,
    under loss scaling) would overflow a sum of squares."""
    gram = None
    for jacobian in jacobians:
        flat = ops.reshape(jacobian, (jacobian.shape[0], -1))
        if backend.standardize_dtype(flat.dtype) in ("float16", "bfloat16"):
            flat = ops.cast(flat, "float32")
        part = ops.matmul(flat, ops.transpose(flat))
        gram = part if gram is None else ops.add(gram, part)
    return gram


def combine(weights, jacobian):
    """`sum_k w_k J[k]` for a Jacobian of shape (K, ...)."""
    return ops.tensordot(ops.cast(weights, jacobian.dtype), jacobian, axes=1)
