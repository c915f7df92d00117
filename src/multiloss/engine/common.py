"""The backend-agnostic part of a training step (keras.ops only).

Each backend module computes the task losses and their gradients its own
way, then hands them here:

- `shared_flags` decides which variables are shared: those that two or more
  tasks reach, unless `compile(shared=...)` says otherwise;
- `aggregate` builds the Gram matrix of the shared Jacobians and lets the
  balancer weigh them; shared variables get `sum_k w_k J_v[k]`;
- `own_gradient` gives every other variable the (fixed-weight) gradient of
  the tasks that reach it: a task-specific head gets its own task's gradient;
- `gram_diagnostics` turns the Gram matrix into the domination diagnostics.

The Gram matrix is `sum_v J_v J_v^T`: all variables are never concatenated.
"""

import numpy as np
import keras
from keras import backend, ops

from multiloss.aggregators.base import combine, gram_matrix

__all__ = [
    "NonfiniteStep",
    "StepOptions",
    "loss_scale",
    "scaled",
    "shared_flags",
    "aggregate",
    "own_gradient",
    "gram_diagnostics",
    "task_finite_mask",
    "select_last_shared_layer",
    "gram_flags_for",
    "gradient_step",
    "representation_step",
    "shared_gram",
    "loss_step_finite",
]

NONFINITE_CHOICES = ("raise", "skip", "ignore")


class NonfiniteStep(Exception):
    """Raised by a step that stops itself under `nonfinite="raise"` (after
    leaving every variable as it was); `fit` turns it into the
    `FloatingPointError` that names the tasks."""


class StepOptions:
    """What `compile` decided about the training step.

    Args:
        mode: "loss" (one backward pass of the balancer's total) or "gram"
            (per-task gradients of the shared variables, aggregated).
        diagnostics: also compute the per-task Gram matrix in "loss" mode and
            log `<task>_grad_norm`, `grad_cos_min`, `grad_norm_ratio`.
        nonfinite: "raise" (skip the step, then stop naming the task),
            "skip" (skip the step, count it), or "ignore" (Keras's
            behaviour: apply whatever comes).
        shared: `None` (automatic) or a set of variable paths.
        representation: `None` or the name of the shared layer whose output
            the per-task gradients are taken with respect to.
    """

    def __init__(self, mode="loss", diagnostics=False, nonfinite="raise", shared=None,
                 representation=None):
        self.mode = mode
        self.diagnostics = diagnostics
        self.nonfinite = nonfinite
        self.shared = shared
        self.representation = representation

    @property
    def needs_task_gradients(self):
        return self.mode != "loss" or self.diagnostics

    @property
    def guards(self):
        """Whether the step checks for non-finite values and can be skipped."""
        return self.nonfinite != "ignore"


def loss_scale(optimizer):
    """The factor the optimizer scales losses by: the Python float 1.0 when
    it does not (no mixed-precision loss scaling, no `loss_scale_factor`),
    which `scaled` then skips."""
    if optimizer is None:
        return 1.0
    if getattr(optimizer, "loss_scale_factor", None) is None and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        return 1.0
    return ops.cast(optimizer.scale_loss(ops.ones((), "float32")), "float32")


def _is_one(scale):
    return isinstance(scale, float) and scale == 1.0


def scaled(loss, scale):
    """`loss * scale` (`scale` from `loss_scale`), without an op for 1.0."""
    return loss if _is_one(scale) else ops.multiply(loss, ops.cast(scale, loss.dtype))


def unscaled(value, scale, power=1):
    """`value / scale**power`, without an op for a scale of 1.0."""
    if _is_one(scale):
        return value
    scale = ops.cast(scale, value.dtype)
    return ops.divide(value, scale if power == 1 else ops.power(scale, power))


def shared_flags(reach, variables, shared=None):
    """Per variable, whether it is shared.

    Args:
        reach: K lists (one per task) of V booleans: task k reaches
            variable v.
        variables: the V variables.
        shared: `None` for the automatic rule (reached by two or more
            tasks); a set of variable paths (`compile(shared=...)`); or a
            list of the shared variables themselves (custom loops).
    """
    if shared is None:
        return [sum(task[i] for task in reach) >= 2 for i in range(len(variables))]
    if isinstance(shared, (set, frozenset)):
        return [v.path in shared for v in variables]
    return [any(v is s for s in shared) for v in variables]


def gram_flags_for(balancer, variables, flags):
    """The variables whose Gram matrix `balancer` weighs: None (all shared
    ones) unless it asks for the last shared layer's (GradNorm)."""
    if getattr(balancer, "gram_scope", "shared") == "last_shared_layer":
        return select_last_shared_layer(variables, flags)
    return None


def select_last_shared_layer(variables, flags):
    """Flags of the shared variables that belong to the last shared layer
    (in the model's variable order): GradNorm's `W`."""
    layer_of = [getattr(v, "path", getattr(v, "name", "")).rsplit("/", 1)[0] for v in variables]
    shared_layers = [layer_of[i] for i, f in enumerate(flags) if f]
    if not shared_layers:
        return flags
    last = shared_layers[-1]
    return [f and layer_of[i] == last for i, f in enumerate(flags)]


def _finite_or_zero(x):
    return ops.where(ops.isfinite(x), x, ops.zeros_like(x))


def aggregate(balancer, jacobians, losses, scale, training=True, gram_jacobians=None,
              sanitize=False):
    """Combines the shared Jacobians.

    Args:
        balancer: an `Aggregator`.
        jacobians: per shared variable, the (K, ...) Jacobian of the scaled
            task losses.
        losses: the (K,) unweighted task losses.
        scale: the loss scale the Jacobians carry.
        gram_jacobians: the Jacobians whose Gram matrix the balancer weighs,
            when it is not all of them (GradNorm: the last shared layer).
        sanitize: give the balancer zeros for non-finite entries (the step
            will be skipped anyway; a solver must not fail on them).

    Returns:
        `(directions, weights, gram)`: per shared variable the combined
        gradient (still carrying `scale`), the (K,) weights in force, and
        the unscaled Gram matrix.
    """
    if sanitize:
        losses = _finite_or_zero(losses)
    if getattr(balancer, "needs", "gram") == "jacobians":
        plain = [unscaled(j, scale) for j in jacobians]
        # Before sanitizing: its diagonal tells which task is not finite.
        gram = ops.cast(gram_matrix(plain), "float32")
        if sanitize:
            plain = [_finite_or_zero(j) for j in plain]
        directions, weights = balancer.aggregate(plain, losses, training=training)
        return [scaled(d, scale) for d in directions], weights, gram
    gram = unscaled(ops.cast(gram_matrix(jacobians), "float32"), scale, power=2)
    if gram_jacobians is not None:
        weighed = unscaled(ops.cast(gram_matrix(gram_jacobians), "float32"), scale, power=2)
    else:
        weighed = gram
    if sanitize:
        weighed = _finite_or_zero(weighed)
    weights = balancer.gram_weights(weighed, losses, training=training)
    return [combine(weights, j) for j in jacobians], weights, gram


def own_gradient(task_weights, grads_per_task):
    """`sum_k c_k g_k` over the tasks that reach a variable (their gradients
    not None), or None if none does.

    Args:
        task_weights: the K fixed weights c_k, as a list of scalars
            (`ops.unstack` once per step: indexing a Variable per gradient
            costs an op each time on an eager backend).
        grads_per_task: K gradients of the variable, None where unreached.
    """
    total = None
    for weight, grad in zip(task_weights, grads_per_task):
        if grad is None:
            continue
        if backend.standardize_dtype(weight.dtype) != backend.standardize_dtype(grad.dtype):
            weight = ops.cast(weight, grad.dtype)
        term = ops.multiply(grad, weight)
        total = term if total is None else ops.add(total, term)
    return total


def gram_diagnostics(gram, eps=1e-12):
    """From the (K, K) Gram matrix: per-task gradient norms, the smallest
    pairwise cosine, and the largest over the smallest norm."""
    gram = ops.cast(gram, "float32")
    norms = ops.sqrt(ops.maximum(ops.diagonal(gram), 0.0))
    k = gram.shape[0]
    if k < 2:
        return norms, ops.ones((), "float32"), ops.ones((), "float32")
    outer = ops.maximum(ops.multiply(norms[:, None], norms[None, :]), eps)
    cosine = ops.divide(gram, outer)
    off_diagonal = ops.logical_not(ops.eye(k, dtype="bool"))
    cos_min = ops.min(ops.where(off_diagonal, cosine, ops.ones_like(cosine)))
    ratio = ops.divide(ops.max(norms), ops.maximum(ops.min(norms), eps))
    return norms, cos_min, ratio


def task_finite_mask(losses, grads_by_task, gram=None):
    """(K,) booleans: task k's loss and every gradient it produced are finite.

    One reduction per gradient, no elementwise mask: a sum is not finite
    when an entry is not (or when the gradient is so large that its sum
    overflows: an update that large is no better). The gradients the Gram
    matrix covers cost nothing more: `G_kk` is the sum of task k's squared
    entries, so it is finite exactly when they are.

    Args:
        losses: (K,) task losses.
        grads_by_task: K lists of gradient tensors the Gram matrix does not
            cover (None entries skipped).
        gram: the (K, K) Gram matrix of the other gradients, or None.
    """
    ok = ops.isfinite(losses)
    if gram is not None:
        ok = ops.logical_and(ok, ops.isfinite(ops.diagonal(gram)))
    owners, sums = [], []
    for k, grads in enumerate(grads_by_task):
        for grad in grads:
            if grad is not None:
                owners.append(k)
                sums.append(_sum32(grad))
    if sums:
        # Count each task's non-finite sums with one product by a (K, N)
        # 0/1 ownership matrix: few ops whatever the number of gradients.
        ownership = np.zeros((len(grads_by_task), len(sums)), "float32")
        ownership[owners, np.arange(len(sums))] = 1.0
        bad = ops.cast(ops.logical_not(ops.isfinite(ops.stack(sums))), "float32")
        ok = ops.logical_and(ok, ops.matmul(ownership, bad) == 0.0)
    return ok


def _stack_task_gradients(per_task, i, variable):
    return ops.stack([
        grads[i] if grads[i] is not None else ops.zeros(variable.shape, variable.dtype)
        for grads in per_task
    ])


def shared_gram(variables, per_task, flags, scale):
    """The unscaled Gram matrix of the shared variables' task gradients."""
    jacobians = [
        _stack_task_gradients(per_task, i, v) for i, v in enumerate(variables) if flags[i]
    ]
    if not jacobians:
        k = len(per_task)
        return ops.zeros((k, k), "float32")
    return unscaled(ops.cast(gram_matrix(jacobians), "float32"), scale, power=2)


def gradient_step(balancer, variables, per_task, losses, scale, flags, *,
                  check_gradients=True, all_reduce=None, replicas=1, gram_flags=None,
                  sanitize=False):
    """The gradient-level part of a step, given the per-task gradients.

    Args:
        balancer: an `Aggregator`.
        variables: the V trainable variables.
        per_task: K lists of V gradients of the scaled task losses (None
            where the task does not reach the variable).
        losses: (K,) unweighted task losses.
        scale: the loss scale the gradients carry.
        flags: V booleans, which variables are shared.
        check_gradients: whether non-finite gradients mark their task (not
            under a loss-scaling optimizer, which handles overflow itself).
        all_reduce: a function summing a structure over replicas, when
            several replicas run the step.
        replicas: their number (the optimizer sums over them again).
        gram_flags: V booleans, the variables whose Gram matrix the balancer
            weighs (all shared ones when None).
        sanitize: see `aggregate`.

    Returns:
        `(grads, weights, total, gram, finite)`: V gradients for the
        optimizer (still carrying `scale`), the (K,) weights in force, the
        weighted total `sum_k w_k L_k`, the unscaled Gram matrix and the (K,)
        finiteness flags.
    """
    shared = [i for i, flag in enumerate(flags) if flag]
    jacobians = [_stack_task_gradients(per_task, i, variables[i]) for i in shared]
    rule_losses = losses
    if all_reduce is not None:
        # Reduce before aggregating: aggregating per replica and reducing
        # after is a different, wrong update.
        jacobians, rule_losses = all_reduce((jacobians, losses))
    gram_jacobians = None
    if gram_flags is not None:
        gram_jacobians = [j for j, i in zip(jacobians, shared) if gram_flags[i]]
    directions, weights, gram = aggregate(
        balancer, jacobians, rule_losses, scale, training=True,
        gram_jacobians=gram_jacobians, sanitize=sanitize,
    )
    grads = [None] * len(variables)
    for direction, i in zip(directions, shared):
        grads[i] = direction if replicas == 1 else ops.divide(direction, replicas)
    task_weights = ops.unstack(ops.convert_to_tensor(balancer.task_weights))
    for i in range(len(variables)):
        if not flags[i]:
            grads[i] = own_gradient(task_weights, [g[i] for g in per_task])
    total = ops.sum(ops.multiply(weights, ops.cast(losses, weights.dtype)))
    if check_gradients:
        # The Gram matrix covers the shared gradients (summed over replicas:
        # a non-finite one on any replica shows).
        own = [[g for g, flag in zip(grads_k, flags) if not flag] for grads_k in per_task]
        finite = task_finite_mask(losses, own, gram if shared else None)
    else:
        finite = ops.isfinite(losses)
    return grads, weights, total, gram, _blame_losses_first(ops.isfinite(losses), finite)


def _blame_losses_first(losses_ok, finite):
    """A non-finite loss can spoil the other tasks' gradients too (0 * inf
    in a batched backward pass): when a loss is not finite, name the tasks
    whose loss is not finite; otherwise those that `finite` (K flags, or
    one for all) says are not."""
    return ops.logical_and(losses_ok, ops.logical_or(finite, ops.logical_not(ops.all(losses_ok))))


def loss_step_finite(losses, grads, check_gradients=True):
    """Finiteness flags of a loss-level step: a task whose loss is not
    finite; every task when the losses are finite but the gradient of their
    sum is not (the sum cannot tell which)."""
    losses_ok = ops.isfinite(losses)
    total = _gradient_sum(grads) if check_gradients else None
    if total is None:
        return losses_ok
    return _blame_losses_first(losses_ok, ops.isfinite(total))


def _sum32(grad):
    """The sum of a gradient's entries as a float32 scalar (float16 summed
    in float32, where its range would overflow first)."""
    dtype = backend.standardize_dtype(grad.dtype)
    if dtype == "float16":
        grad, dtype = ops.cast(grad, "float32"), "float32"
    total = ops.sum(grad)
    return total if dtype == "float32" else ops.cast(total, "float32")


def _gradient_sum(grads):
    """The sum of every entry of `grads` in float32 (None if there are
    none): not finite when an entry is not, or when the sum overflows."""
    sums = [_sum32(g) for g in grads if g is not None]
    if not sums:
        return None
    return sums[0] if len(sums) == 1 else ops.sum(ops.stack(sums))


def representation_step(balancer, task_names, head_variables, per_task_heads, z_grads, losses,
                        scale, *, check_gradients=True, sanitize=False):
    """The representation-level part of a step (MGDA-UB's approximation).

    The balancer weighs the per-task gradients with respect to a shared
    layer's output `z` (its Gram matrix sums over the batch and features);
    the trunk below `z` then needs a single backward pass, of the combined
    `z` gradient. Above `z`, a variable that two or more tasks reach gets
    the weighted sum of their gradients, any other its task's own.

    Args:
        balancer: an `Aggregator`.
        task_names: the K task names (for errors).
        head_variables: the variables above `z`.
        per_task_heads: K lists of their gradients (None where unreached).
        z_grads: K gradients of the scaled task losses w.r.t. `z` (None for
            a task that does not pass through `z`).
        losses: (K,) unweighted task losses.
        scale: the loss scale the gradients carry.

    Returns:
        `(head_grads, z_cotangent, weights, total, gram, finite)`.
    """
    missing = [name for name, g in zip(task_names, z_grads) if g is None]
    if missing:
        raise ValueError(
            f"Task(s) {missing} do not pass through the representation layer, so "
            "representation mode cannot weigh them (a loss added by a layer below "
            "it, or a weight regulariser there, is such a task). Use parameter "
            "mode (no `representation=`), or add those losses above the layer."
        )
    z_jacobian = ops.stack(z_grads)
    directions, weights, gram = aggregate(
        balancer, [z_jacobian], losses, scale, training=True, sanitize=sanitize
    )
    head_grads = []
    task_weights = ops.unstack(ops.convert_to_tensor(balancer.task_weights))
    for i, variable in enumerate(head_variables):
        column = [g[i] for g in per_task_heads]
        if sum(g is not None for g in column) >= 2:
            head_grads.append(combine(weights, _stack_task_gradients(per_task_heads, i, variable)))
        else:
            head_grads.append(own_gradient(task_weights, column))
    total = ops.sum(ops.multiply(weights, ops.cast(losses, weights.dtype)))
    if check_gradients:
        finite = task_finite_mask(losses, per_task_heads, gram)
    else:
        finite = ops.isfinite(losses)
    return head_grads, directions[0], weights, total, gram, _blame_losses_first(ops.isfinite(losses), finite)
