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

from keras import ops

from multiloss.aggregators.base import combine, gram_matrix

__all__ = [
    "StepOptions",
    "loss_scale",
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
    """The factor the optimizer scales losses by (1 without loss scaling)."""
    if optimizer is None:
        return ops.ones((), "float32")
    return ops.cast(optimizer.scale_loss(ops.ones((), "float32")), "float32")


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
    scale = ops.cast(scale, "float32")
    if sanitize:
        losses = _finite_or_zero(losses)
    if getattr(balancer, "needs", "gram") == "jacobians":
        unscaled = [ops.divide(j, ops.cast(scale, j.dtype)) for j in jacobians]
        if sanitize:
            unscaled = [_finite_or_zero(j) for j in unscaled]
        directions, weights = balancer.aggregate(unscaled, losses, training=training)
        directions = [ops.multiply(d, ops.cast(scale, d.dtype)) for d in directions]
        return directions, weights, gram_matrix(unscaled)
    squared = ops.square(scale)
    gram = ops.divide(ops.cast(gram_matrix(jacobians), "float32"), squared)
    if gram_jacobians is not None:
        weighed = ops.divide(ops.cast(gram_matrix(gram_jacobians), "float32"), squared)
    else:
        weighed = gram
    if sanitize:
        weighed = _finite_or_zero(weighed)
    weights = balancer.gram_weights(weighed, losses, training=training)
    return [combine(weights, j) for j in jacobians], weights, gram


def own_gradient(task_weights, grads_per_task):
    """`sum_k c_k g_k` over the tasks that reach a variable (their gradients
    not None), or None if none does."""
    total = None
    for k, grad in enumerate(grads_per_task):
        if grad is None:
            continue
        term = ops.multiply(grad, ops.cast(task_weights[k], grad.dtype))
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


def task_finite_mask(losses, grads_by_task):
    """(K,) booleans: task k's loss and every gradient it produced are finite.

    Args:
        losses: (K,) task losses.
        grads_by_task: K lists of gradient tensors (None entries skipped).
    """
    flags = []
    for k, grads in enumerate(grads_by_task):
        ok = ops.isfinite(losses[k])
        for grad in grads:
            if grad is not None:
                ok = ops.logical_and(ok, ops.all(ops.isfinite(grad)))
        flags.append(ok)
    return ops.stack(flags)


def jacobian_finite_mask(losses, jacobians):
    """(K,) booleans from stacked (K, ...) Jacobians."""
    ok = ops.isfinite(losses)
    for jacobian in jacobians:
        flat = ops.reshape(jacobian, (jacobian.shape[0], -1))
        ok = ops.logical_and(ok, ops.all(ops.isfinite(flat), axis=1))
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
    return ops.divide(
        ops.cast(gram_matrix(jacobians), "float32"), ops.square(ops.cast(scale, "float32"))
    )


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
    for i in range(len(variables)):
        if not flags[i]:
            grads[i] = own_gradient(balancer.task_weights, [g[i] for g in per_task])
    total = ops.sum(ops.multiply(weights, ops.cast(losses, weights.dtype)))
    finite = task_finite_mask(losses, per_task if check_gradients else [[] for _ in per_task])
    return grads, weights, total, gram, _blame_losses_first(losses, finite)


def _blame_losses_first(losses, finite):
    """A non-finite loss can spoil the other tasks' gradients too (0 * inf
    in a batched backward pass): when a loss is not finite, name the tasks
    whose loss is not finite; otherwise those whose gradient is not."""
    losses_ok = ops.isfinite(losses)
    return ops.where(ops.all(losses_ok), finite, losses_ok)


def loss_step_finite(losses, grads, check_gradients=True):
    """Finiteness flags of a loss-level step: a task whose loss is not
    finite; every task when the losses are finite but the gradient of their
    sum is not (the sum cannot tell which)."""
    finite = ops.isfinite(losses)
    if check_gradients:
        grads_ok = ops.isfinite(_gradient_sum(grads))
        finite = _blame_losses_first(losses, ops.logical_and(finite, grads_ok))
    return finite


def _gradient_sum(grads):
    """The sum of every gradient entry, in float32: not finite when an entry
    is not, or when the gradients are so large that their sum overflows
    (an update that large is no better). One reduction per variable, where
    an elementwise test would also write a mask of every entry."""
    sums = [
        ops.sum(ops.cast(g, "float32") if g.dtype == "float16" else g)
        for g in grads if g is not None
    ]
    return ops.sum(ops.stack([ops.cast(value, "float32") for value in sums]))


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
    for i, variable in enumerate(head_variables):
        column = [g[i] for g in per_task_heads]
        if sum(g is not None for g in column) >= 2:
            head_grads.append(combine(weights, _stack_task_gradients(per_task_heads, i, variable)))
        else:
            head_grads.append(own_gradient(balancer.task_weights, column))
    total = ops.sum(ops.multiply(weights, ops.cast(losses, weights.dtype)))
    checked = [[z] + list(h) for z, h in zip(z_grads, per_task_heads)]
    finite = task_finite_mask(losses, checked if check_gradients else [[] for _ in checked])
    return head_grads, directions[0], weights, total, gram, _blame_losses_first(losses, finite)
