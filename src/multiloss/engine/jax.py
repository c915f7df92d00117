"""JAX engine: the stateless train step and the gradient transform.

Per-task gradients are K `jax.grad` calls, one per task loss, over one
trace of the model (see `task_gradients` for why not a `vmap`).
JAX returns zeros, not `None`, for a variable a task does not reach; which
task reaches which variable is read from the step's jaxpr instead.

Everything stateful (the balancer's Variables, the metrics) runs under a
`keras.StatelessScope` mapped to the step's state, and the new values are
read back from it, as Keras's own JAX trainer does.
"""

from typing import NamedTuple

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import keras
from keras.utils import unpack_x_y_sample_weight

from multiloss.engine import common
from multiloss.logs import lazy_log_entries

__all__ = [
    "log_entries_for", "jit", "train_step", "representation_train_step", "value_and_grad", "balancer_state", "write_state", "BalancedGrads",
    "trace_once",
    "task_gradients",
    "task_gram",
    "nonfinite_stop",
    "is_nonfinite_stop",
]


def jit(fn, xla=False):
    return jax.jit(fn)


def log_entries_for(model):
    """How the step's packed task logs become Keras's entries: read to the
    host when first used, in Keras's callback thread (the step may still
    be running: JAX dispatches asynchronously)."""
    return lazy_log_entries


def nonfinite_stop(model):
    # A compiled, asynchronously dispatched step cannot raise: under
    # "raise" it skips itself and every later step of the epoch, and `fit`
    # reads the skipped-step count from the logs as they arrive.
    return "async"


def is_nonfinite_stop(exc):
    return False


def trace_once(fn, num_outputs, params):
    """Traces `fn(params) -> (list of K scalars, aux)` once.

    Returns `(replay, reach)`: `replay(params)` computes the same values
    from the recorded jaxpr (differentiable, no Python re-run of the
    model), and `reach` holds K lists of booleans, whether task k depends
    on each leaf of `params`.

    `reach` comes from a walk over the jaxpr: an equation's outputs depend
    on the union of its inputs' dependencies. Equations with inner jaxprs
    (calls, loops, custom derivatives) are taken whole, which can only
    over-approximate: a variable may be counted as reached, never missed.
    """
    leaves, tree = jax.tree_util.tree_flatten(params)

    def flat_fn(*flat):
        return fn(jax.tree_util.tree_unflatten(tree, list(flat)))

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*leaves)
    out_tree = jax.tree_util.tree_structure(out_shape)
    jaxpr = closed.jaxpr
    deps = {var: frozenset([i]) for i, var in enumerate(jaxpr.invars)}

    def of(var):
        if isinstance(var, jax_core.Literal):
            return frozenset()
        return deps.get(var, frozenset())

    for eqn in jaxpr.eqns:
        union = frozenset().union(*(of(v) for v in eqn.invars))
        for out in eqn.outvars:
            deps[out] = union
    reach = [[i in of(out) for i in range(len(leaves))] for out in jaxpr.outvars[:num_outputs]]
    as_fun = jax_core.jaxpr_as_fun(closed)

    def replay(params):
        flat = as_fun(*jax.tree_util.tree_leaves(params))
        return jax.tree_util.tree_unflatten(out_tree, flat)

    return replay, reach


def task_gradients(replay, params, reach, scale=1.0):
    """Per task t, the gradient of `replay(params)[0][t] * scale`: K lists
    over the leaves of `params`, None where task t does not reach a leaf.

    One backward pass per task, each started from its own loss alone: JAX
    skips every equation whose cotangent is a symbolic zero, so task t's
    pass never runs through another task's head, and a non-finite gradient
    in one head cannot leak into the others (0 * inf). A `vmap` of one vjp
    over one-hot cotangents runs every head for every task (K^2 head passes)
    and measured slower here at every K; XLA merges the K identical forward
    passes.
    """
    leaves = jax.tree_util.tree_leaves(params)

    def task_loss(t):
        return lambda p: common.scaled(replay(p)[0][t], scale)

    per_task = []
    for t, reached in enumerate(reach):
        if not any(reached):
            per_task.append([None] * len(leaves))
            continue
        grads = jax.tree_util.tree_leaves(jax.grad(task_loss(t))(params))
        per_task.append([g if r else None for g, r in zip(grads, reached)])
    return per_task


def _scoped(variables, values):
    return keras.StatelessScope(state_mapping=list(zip(variables, values)))


def train_step(model, state, data):
    trainable, non_trainable, optimizer_values, metrics_values = state
    x, y, sample_weight = unpack_x_y_sample_weight(data)
    options = model._step_options
    balancer = model.balancer
    tasks = model._tasks
    variables = list(model.trainable_variables)
    nt_variables = list(model.non_trainable_variables)

    with _scoped(model.optimizer.variables, optimizer_values):
        scale = common.loss_scale(model.optimizer)

    def model_forward(trainable_values):
        kwargs = {"training": True} if model._call_has_training_arg else {}
        y_pred, new_nt, added = model.stateless_call(
            trainable_values, non_trainable, x, return_losses=True, **kwargs
        )
        losses = tasks.values(
            y, y_pred, sample_weight, added, model._aggregate_additional_loss, stack=False
        )
        return losses, (y_pred, new_nt)

    # One trace of the model: the jaxpr gives which task reaches which
    # variable (free at run time, in every mode) and is replayed below.
    replay, reach = trace_once(model_forward, len(tasks), trainable)

    def forward(trainable_values):
        losses, aux = replay(trainable_values)
        return jnp.stack(losses), aux

    def balancer_scope(trainable_values, nt_values):
        # The balancer's variables live among the model's (non-)trainable
        # ones; map both so that its reads and writes use this step's state.
        return keras.StatelessScope(state_mapping=list(zip(variables, trainable_values))
                                    + list(zip(nt_variables, nt_values)))

    check_gradients = not model._loss_scaling
    gram = None
    flags = model._shared_flags(reach, variables)
    if options.needs_task_gradients:
        losses, (y_pred, new_nt) = forward(trainable)
        per_task = task_gradients(replay, trainable, reach, scale)
    if options.mode == "gram":
        with balancer_scope(trainable, new_nt) as scope:
            grads, weights, total, gram, finite = common.gradient_step(
                balancer, variables, per_task, losses, scale, flags,
                check_gradients=check_gradients,
                gram_flags=model._gram_flags(variables, flags),
                sanitize=options.guards,
            )
            extras = balancer.logs()
        new_nt = [scope.get_current_value(v) for v in nt_variables]
    else:
        def total_fn(trainable_values):
            losses, (y_pred, new_nt) = forward(trainable_values)
            with balancer_scope(trainable_values, new_nt) as scope:
                total, weights = balancer.combine(losses, training=True)
                extras = balancer.logs()
            new_nt = [scope.get_current_value(v) for v in nt_variables]
            return common.scaled(total, scale), (losses, weights, total, y_pred, new_nt, extras)

        grads, (losses, weights, total, y_pred, new_nt, extras) = jax.grad(
            total_fn, has_aux=True
        )(trainable)
        if options.diagnostics:
            gram = common.shared_gram(variables, per_task, flags, scale)
        finite = common.loss_step_finite(losses, grads, check_gradients) if options.guards else None

    return _finish(model, state, x, y, sample_weight, y_pred, grads, new_nt, losses, weights,
                   total, finite, gram, extras)


def representation_train_step(model, state, data):
    """The step of `compile(representation=...)`: K backward passes through
    the heads only (batched), one through the trunk."""
    trainable, non_trainable, optimizer_values, metrics_values = state
    x, y, sample_weight = unpack_x_y_sample_weight(data)
    options = model._step_options
    balancer = model.balancer
    tasks = model._tasks
    trunk, heads = model._representation.trunk, model._representation.heads
    variables = list(model.trainable_variables)
    nt_variables = list(model.non_trainable_variables)
    index = {id(v): i for i, v in enumerate(variables)}
    nt_index = {id(v): i for i, v in enumerate(nt_variables)}

    def pick(sub_variables, values, where):
        return [values[where[id(v)]] for v in sub_variables]

    with _scoped(model.optimizer.variables, optimizer_values):
        scale = common.loss_scale(model.optimizer)
    kwargs = {"training": True} if model._call_has_training_arg else {}

    def trunk_fn(trunk_values):
        z, trunk_nt, added = trunk.stateless_call(
            trunk_values, pick(trunk.non_trainable_variables, non_trainable, nt_index), x,
            return_losses=True, **kwargs,
        )
        return z, (trunk_nt, added)

    trunk_values = pick(trunk.trainable_variables, trainable, index)
    z, trunk_vjp, (trunk_nt, trunk_added) = jax.vjp(trunk_fn, trunk_values, has_aux=True)

    def heads_fn(params):
        head_values, z_value = params
        y_pred, heads_nt, added = heads.stateless_call(
            head_values, pick(heads.non_trainable_variables, non_trainable, nt_index), z_value,
            return_losses=True, **kwargs,
        )
        losses = tasks.values(
            y, y_pred, sample_weight, list(trunk_added) + list(added),
            model._aggregate_additional_loss, stack=False,
        )
        return losses, (y_pred, heads_nt)

    head_values = pick(heads.trainable_variables, trainable, index)
    replay, reach = trace_once(heads_fn, len(tasks), (head_values, z))
    num_heads = len(head_values)

    def stacked(params):
        losses, aux = replay(params)
        return jnp.stack(losses), aux

    losses, (y_pred, heads_nt) = stacked((head_values, z))
    task_grads = task_gradients(replay, (head_values, z), reach, scale)
    per_task_heads = [grads[:num_heads] for grads in task_grads]
    z_grads = [grads[num_heads] for grads in task_grads]

    new_nt = list(non_trainable)
    for v, value in zip(trunk.non_trainable_variables, trunk_nt):
        new_nt[nt_index[id(v)]] = value
    for v, value in zip(heads.non_trainable_variables, heads_nt):
        new_nt[nt_index[id(v)]] = value
    with _scoped(variables + nt_variables, list(trainable) + new_nt) as scope:
        head_grads, z_cotangent, weights, total, gram, finite = common.representation_step(
            balancer, tasks.names, heads.trainable_variables, per_task_heads, z_grads, losses,
            scale, check_gradients=not model._loss_scaling, sanitize=options.guards,
        )
        extras = balancer.logs()
    new_nt = [scope.get_current_value(v) for v in nt_variables]
    (trunk_grads,) = trunk_vjp(z_cotangent)
    grads = [None] * len(variables)
    for v, g in zip(trunk.trainable_variables, trunk_grads):
        grads[index[id(v)]] = g
    for v, g in zip(heads.trainable_variables, head_grads):
        grads[index[id(v)]] = g
    grads = [jnp.zeros_like(t) if g is None else g for g, t in zip(grads, trainable)]
    return _finish(model, state, x, y, sample_weight, y_pred, grads, new_nt, losses, weights,
                   total, finite, gram, extras)


def _finish(model, state, x, y, sample_weight, y_pred, grads, new_nt, losses, weights, total,
            finite, gram, extras):
    """Applies the gradients (or keeps the old state for a skipped step) and
    updates the metrics: the end of every JAX step."""
    trainable, non_trainable, optimizer_values, metrics_values = state

    def apply(_):
        new_trainable, new_optimizer = model.optimizer.stateless_apply(
            optimizer_values, grads, trainable
        )
        return list(new_trainable), list(new_optimizer), list(new_nt)

    if model._step_options.guards:
        # A branch, not a select over every variable: a skipped step costs
        # nothing, an applied one does not read the old state twice.
        def skip(_):
            return list(trainable), list(optimizer_values), list(non_trainable)

        go = jnp.all(finite)
        if model._step_options.nonfinite == "raise":
            # Training stops at a skipped step, but `fit` learns of it some
            # batches later: until then every step is skipped too.
            skipped = model._task_metrics.skipped
            index = next(i for i, v in enumerate(model.metrics_variables) if v is skipped)
            go = jnp.logical_and(go, metrics_values[index] == 0)
        new_trainable, new_optimizer, new_nt = jax.lax.cond(go, apply, skip, None)
    else:
        new_trainable, new_optimizer, new_nt = apply(None)

    with _scoped(model.metrics_variables, metrics_values) as scope:
        model._record_step(x, losses, weights, total, finite, gram, extras)
        logs = model.compute_metrics(x, y, y_pred, sample_weight)
    new_metrics = [
        scope.get_current_value(v) if scope.get_current_value(v) is not None else v.value
        for v in model.metrics_variables
    ]
    return logs, (new_trainable, new_nt, new_optimizer, new_metrics)


def balancer_state(balancer):
    """The balancer's state as a list of arrays, for `value_and_grad`."""
    return [v.value for v in balancer.variables]


def write_state(balancer, state):
    """Writes a state from `value_and_grad` back into the balancer's
    Variables (to save it, or to use the balancer in `fit`)."""
    for variable, value in zip(balancer.variables, state):
        variable.assign(value)


class BalancedGrads(NamedTuple):
    """What a `value_and_grad` transform returns."""

    losses: object  # (K,) task losses
    grads: object  # gradients, in the structure of `params`
    weights: object  # (K,) weights in force
    state: list  # the balancer's new state
    balancer_grads: list  # gradients of its trainable state (Uncertainty, IMTLL), else []
    aux: object = None


def value_and_grad(fn, balancer, has_aux=False, shared=None):
    """The balanced `jax.value_and_grad` of a function returning K losses,
    for custom training loops: pure, so it composes with `jax.jit`.

    Args:
        fn: `fn(params, *args)` returning a list of K scalar losses (or
            `(losses, aux)` with `has_aux`). A list, not a stacked array: a
            parameter reached by one loss only is then found task-specific.
        balancer: a balancer built for K tasks; its state travels
            explicitly (`balancer_state`, `write_state`).
        shared: a pytree of booleans like `params` marking the shared
            parameters (default: those two or more losses reach).

    Returns:
        `g(params, state, *args) -> BalancedGrads`, the same computation as
        `MultiLossModel.fit`'s step.

    Example:

    ```python
    import jax, jax.numpy as jnp, multiloss
    from multiloss.engine.jax import value_and_grad, balancer_state

    def losses(params, x):
        h = jnp.tanh(x @ params["trunk"])
        return [jnp.mean((h @ params["a"]) ** 2), jnp.mean((h @ params["b"] - 1) ** 2)]

    params = {"trunk": jnp.ones((3, 4)) / 4, "a": jnp.ones((4, 1)), "b": -jnp.ones((4, 1))}
    balancer = multiloss.aggregators.MGDA()
    balancer.build((2,))
    step = jax.jit(value_and_grad(losses, balancer))
    state = balancer_state(balancer)
    out = step(params, state, jnp.ones((8, 3)))
    params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, out.grads)
    state = out.state
    ```
    """
    from multiloss.aggregators.base import Aggregator

    def as_list(out):
        losses, aux = out if has_aux else (out, None)
        if not isinstance(losses, (list, tuple)):
            losses = [losses[i] for i in range(losses.shape[0])]
        return list(losses), aux

    def transformed(params, state, *args):
        leaves, tree = jax.tree_util.tree_flatten(params)
        if not balancer.built:
            raise ValueError("Build the balancer for K tasks first: balancer.build((K,)).")
        num_tasks = balancer.num_tasks
        replay, reach = trace_once(
            lambda flat: as_list(fn(jax.tree_util.tree_unflatten(tree, flat), *args)),
            num_tasks, leaves,
        )
        shared_leaves = None
        if shared is not None:
            marks = jax.tree_util.tree_leaves(shared)
            shared_leaves = [leaf for leaf, mark in zip(leaves, marks) if mark]
        flags = common.shared_flags(reach, leaves, shared_leaves)
        variables = balancer.variables

        if isinstance(balancer, Aggregator):
            def stacked(flat):
                losses, aux = replay(flat)
                return jnp.stack(losses), aux

            losses, aux = stacked(leaves)
            per_task = task_gradients(replay, leaves, reach)
            with _scoped(variables, state) as scope:
                grads, weights, _, _, _ = common.gradient_step(
                    balancer, leaves, per_task, losses, 1.0, flags,
                    gram_flags=common.gram_flags_for(balancer, leaves, flags),
                )
            new_state = [scope.get_current_value(v) for v in variables]
            grads = [jnp.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]
            return BalancedGrads(losses, jax.tree_util.tree_unflatten(tree, grads), weights,
                                 new_state, [], aux)

        trainable = list(balancer.trainable_variables)

        def total_fn(flat, trainable_values):
            losses, aux = replay(flat)
            losses = jnp.stack(losses)
            mapping = list(zip(variables, state)) + list(zip(trainable, trainable_values))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                total, weights = balancer.combine(losses, training=True)
            new_state = [scope.get_current_value(v) for v in variables]
            return total, (losses, weights, new_state, aux)

        position = {id(v): i for i, v in enumerate(variables)}
        trainable_values = [state[position[id(v)]] for v in trainable]
        (grads, balancer_grads), (losses, weights, new_state, aux) = jax.grad(
            total_fn, argnums=(0, 1), has_aux=True
        )(leaves, trainable_values)
        return BalancedGrads(losses, jax.tree_util.tree_unflatten(tree, grads), weights,
                             new_state, balancer_grads, aux)

    return transformed


def task_gram(model):
    """A compiled function `(x, y, sample_weight) -> (losses, gram)`: the
    task losses and the Gram matrix of their gradients over the shared
    variables, in inference mode, changing nothing."""
    variables = list(model.trainable_variables)
    tasks = model._tasks

    @jax.jit
    def compute(trainable, non_trainable, x, y, sample_weight):
        def forward(trainable_values):
            kwargs = {"training": False} if model._call_has_training_arg else {}
            y_pred, _, added = model.stateless_call(
                trainable_values, non_trainable, x, return_losses=True, **kwargs
            )
            losses = tasks.values(
                y, y_pred, sample_weight, added, model._aggregate_additional_loss, stack=False
            )
            return losses, None

        replay, reach = trace_once(forward, len(tasks), trainable)
        flags = model._shared_flags(reach, variables)

        losses = jnp.stack(replay(trainable)[0])
        per_task = task_gradients(replay, trainable, reach)
        return losses, common.shared_gram(variables, per_task, flags, 1.0)

    def call(x, y, sample_weight):
        return compute(
            [v.value for v in variables], [v.value for v in model.non_trainable_variables],
            x, y, sample_weight,
        )

    return call
