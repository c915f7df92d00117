"""TensorFlow engine: the train step and the `GradientTape` helper.

Per-task gradients come from one persistent tape and a loop of K
`tape.gradient` calls: on CPU that measured faster than `tape.jacobian`
(pfor or while_loop) for every K tried (shared/notes/keras3-facts.md, §4).
A task that does not reach a variable gets `None` from the tape, which is
how shared variables are found.
"""

import tensorflow as tf
from keras import ops
from keras.utils import unpack_x_y_sample_weight

from multiloss.engine import common

__all__ = [
    "log_entries_for", "jit", "train_step", "representation_train_step", "gradient", "task_gram", "nonfinite_stop",
    "is_nonfinite_stop",
]

# The message of the in-graph assertion that stops a non-finite step under
# `nonfinite="raise"`; `fit` recognises it and names the tasks.
_STOP_MARKER = "multiloss: non-finite step stopped"


def jit(fn, xla=False):
    return tf.function(fn, reduce_retracing=True, jit_compile=xla)


def log_entries_for(model):
    """How the step's packed task logs become Keras's entries: eager
    tensors (Keras's `pythonify_logs` reads a TensorFlow tensor in a
    fraction of what its `tf.is_tensor` check costs for any other object:
    40 vs 100 us for 17 entries). None with several replicas: their logs
    are reduced per tensor, and a multi-worker reduction folds a vector."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync != 1:
        return None
    return lambda packed, count: tf.unstack(packed, num=count)


def nonfinite_stop(model):
    """How a step stops on a non-finite task under "raise": by itself, with
    an assertion, on one replica without XLA ("step"). Otherwise a skip and
    a check after each batch ("batch"): several replicas must all take the
    same branch, and XLA drops assertions."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync == 1 and not model.jit_compile:
        return "step"
    return "batch"


def is_nonfinite_stop(exc):
    return isinstance(exc, tf.errors.InvalidArgumentError) and _STOP_MARKER in str(exc)


def _replica_context():
    """The replica context when several replicas run the step, else None."""
    if not tf.distribute.has_strategy():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def train_step(model, data):
    x, y, sample_weight = unpack_x_y_sample_weight(data)
    options = model._step_options
    saved = [(v, tf.identity(v.value)) for v in model._step_state()] if options.guards else None
    scale = common.loss_scale(model.optimizer)
    # Persistent also in loss mode: the trace checks once that every task
    # reaches a variable (gradients nothing uses are pruned from the graph).
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model._training_call(x)
        task_losses = model.compute_task_losses(y, y_pred, sample_weight, stack=False)
        losses = ops.stack(task_losses)
        balancer = model.balancer
        # After the forward pass: it builds an unbuilt model.
        variables = list(model.trainable_variables)
        if options.mode == "loss":
            total, weights = balancer.combine(losses, training=True)
            scaled_total = common.scaled(total, scale)
        scaled_tasks = [common.scaled(task, scale) for task in task_losses]
    if options.needs_task_gradients or not model._reach_checked:
        per_task = [tape.gradient(task, variables) for task in scaled_tasks]
        flags = model._shared_flags([[g is not None for g in grads] for grads in per_task], variables)
    check_gradients = not model._loss_scaling
    if options.mode == "gram":
        context = _replica_context()
        grads, weights, total, gram, finite = common.gradient_step(
            balancer, variables, per_task, losses, scale, flags,
            check_gradients=check_gradients,
            all_reduce=None if context is None else (
                lambda values: context.all_reduce(tf.distribute.ReduceOp.SUM, values)
            ),
            replicas=1 if context is None else context.num_replicas_in_sync,
            gram_flags=model._gram_flags(variables, flags),
            sanitize=options.guards,
        )
    else:
        grads = tape.gradient(scaled_total, variables)
        gram = common.shared_gram(variables, per_task, flags, scale) if options.diagnostics else None
        finite = common.loss_step_finite(losses, grads, check_gradients) if options.guards else None
    del tape
    extras = balancer.logs()
    finite = _apply(model, grads, variables, finite if options.guards else None, saved)
    model._record_step(x, losses, weights, total, finite, gram, extras)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def representation_train_step(model, data):
    """The step of `compile(representation=...)`: K backward passes through
    the heads only, one through the trunk."""
    x, y, sample_weight = unpack_x_y_sample_weight(data)
    options = model._step_options
    trunk, heads = model._representation.trunk, model._representation.heads
    saved = [(v, tf.identity(v.value)) for v in model._step_state()] if options.guards else None
    scale = common.loss_scale(model.optimizer)
    with tf.GradientTape(persistent=True) as tape:
        z = trunk(x, training=True)
        y_pred = heads(z, training=True)
        task_losses = model.compute_task_losses(y, y_pred, sample_weight, stack=False)
        losses = ops.stack(task_losses)
        scaled_tasks = [common.scaled(task, scale) for task in task_losses]
    balancer = model.balancer
    head_variables = list(heads.trainable_variables)
    trunk_variables = list(trunk.trainable_variables)
    per_task = [tape.gradient(task, [z] + head_variables) for task in scaled_tasks]
    head_grads, z_cotangent, weights, total, gram, finite = common.representation_step(
        balancer, model.task_names, head_variables, [g[1:] for g in per_task],
        [g[0] for g in per_task], losses, scale,
        check_gradients=not model._loss_scaling, sanitize=options.guards,
    )
    trunk_grads = tape.gradient(z, trunk_variables, output_gradients=z_cotangent)
    del tape
    variables, grads = _in_model_order(
        model, trunk_variables + head_variables, list(trunk_grads) + head_grads
    )
    extras = balancer.logs()
    finite = _apply(model, grads, variables, finite if options.guards else None, saved)
    model._record_step(x, losses, weights, total, finite, gram, extras)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _in_model_order(model, variables, grads):
    by_id = {id(v): g for v, g in zip(variables, grads)}
    ordered = [v for v in model.trainable_variables if id(v) in by_id]
    return ordered, [by_id[id(v)] for v in ordered]


def _apply(model, grads, variables, finite, saved):
    """Applies the gradients, or, if a task is not finite, skips the step
    and restores the non-trainable state the forward pass changed. Returns
    the flags for the logs: None when a step that goes on is finite."""
    if finite is None:
        model.optimizer.apply(grads, variables)
        return finite
    if not model.optimizer.built:
        # Not inside a cond branch: the first trace may create variables at
        # its top level only.
        model.optimizer.build(variables)
    context = _replica_context()
    if nonfinite_stop(model) == "step" and model._step_options.nonfinite == "raise":
        # A step that does not stop is finite: its logs need no guard.
        _apply_or_stop(model, grads, variables, finite, saved)
        return None
    if context is not None:
        # Every replica must take the same branch.
        bad = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), "float32"))
        finite = tf.equal(bad, 0.0)
    ok = tf.reduce_all(finite)
    pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
    saved_variables = [v for v, _ in saved]

    def apply(grads):
        model.optimizer.apply(grads, [v for _, v in pairs])

    def restore(values):
        for variable, value in zip(saved_variables, values):
            variable.assign(value)

    if tf.distribute.has_strategy() and not tf.__internal__.distribute.strategy_supports_no_merge_call():
        # The optimizer calls merge_call, which a cond branch may only do
        # from cross-replica context (as Keras's LossScaleOptimizer does);
        # each replica's own values travel as merge_call arguments.
        def cross_replica(strategy, ok, grads, values):
            flag = strategy.experimental_local_results(ok)[0]
            tf.cond(
                flag,
                lambda: strategy.extended.call_for_each_replica(apply, args=(grads,)),
                lambda: strategy.extended.call_for_each_replica(restore, args=(values,)),
            )

        tf.distribute.get_replica_context().merge_call(
            cross_replica, args=(ok, [g for g, _ in pairs], [value for _, value in saved])
        )
    else:
        ops.cond(
            ok,
            lambda: apply([g for g, _ in pairs]),
            lambda: restore([value for _, value in saved]),
        )
    return finite


def _apply_or_stop(model, grads, variables, finite, saved):
    """`nonfinite="raise"` without a branch: a non-finite step restores the
    non-trainable state (a select over those few variables), records which
    tasks failed, then fails an assertion that the update depends on, so
    the update never runs and the step raises. A `tf.cond` around the
    optimizer costs more: every variable and gradient passes through it."""
    ok = tf.reduce_all(finite)
    before = [variable.assign(tf.where(ok, variable.value, value)) for variable, value in saved]
    flags = model._task_metrics.nonfinite
    before.append(flags.assign(tf.cast(tf.logical_not(finite), flags.dtype)))
    with tf.control_dependencies(before):
        check = tf.debugging.Assert(ok, [_STOP_MARKER])
    with tf.control_dependencies([check]):
        model.optimizer.apply(grads, variables)


def gradient(tape, losses, variables, balancer, shared=None):
    """Balanced gradients from a `tf.GradientTape`, in `tape.gradient`'s
    idiom, for custom training loops.

    Args:
        tape: a persistent `tf.GradientTape` that recorded the losses.
        losses: a list of K scalar losses (a list, not a stacked tensor: a
            variable reached by one loss only is then found task-specific).
        variables: the variables to differentiate. A balancer with trainable
            state (`Uncertainty`, `IMTLL`) needs its `trainable_variables`
            among them, and the optimizer applying them.
        balancer: a balancer (built for K tasks on first use).
        shared: the shared variables (default: those two or more losses
            reach).

    Returns:
        `(grads, weights)`: one gradient per variable (None where no loss
        reaches it) and the (K,) weights in force. The same computation as
        `MultiLossModel.fit`'s step.

    Example:

    ```python
    import keras, tensorflow as tf, multiloss
    from multiloss.engine.tensorflow import gradient
    trunk, head_a, head_b = (keras.layers.Dense(4), keras.layers.Dense(1), keras.layers.Dense(1))
    x = tf.random.normal((8, 3))
    balancer = multiloss.aggregators.MGDA()
    with tf.GradientTape(persistent=True) as tape:
        h = trunk(x)
        losses = [tf.reduce_mean(head_a(h) ** 2), tf.reduce_mean((head_b(h) - 1) ** 2)]
    variables = trunk.trainable_variables + head_a.trainable_variables + head_b.trainable_variables
    grads, weights = gradient(tape, losses, variables, balancer)
    keras.optimizers.SGD(0.1).apply(grads, variables)
    ```
    """
    from multiloss.aggregators.base import Aggregator

    task_losses = list(losses) if isinstance(losses, (list, tuple)) else tf.unstack(losses)
    variables = list(variables)
    if not balancer.built:
        balancer.build((len(task_losses),))
    if isinstance(balancer, Aggregator):
        per_task = [tape.gradient(task, variables) for task in task_losses]
        flags = common.shared_flags(
            [[g is not None for g in grads] for grads in per_task], variables, shared
        )
        grads, weights, _, _, _ = common.gradient_step(
            balancer, variables, per_task, tf.stack(task_losses), 1.0, flags,
            gram_flags=common.gram_flags_for(balancer, variables, flags),
        )
        return grads, weights
    with tape:  # record the balancer's total on the same tape
        total, weights = balancer.combine(tf.stack(task_losses), training=True)
    return tape.gradient(total, variables), weights


def task_gram(model):
    """A compiled function `(x, y, sample_weight) -> (losses, gram)`: the
    task losses and the Gram matrix of their gradients over the shared
    variables, in inference mode, changing nothing."""

    @tf.function(reduce_retracing=True)
    def compute(x, y, sample_weight):
        with tf.GradientTape(persistent=True) as tape:
            y_pred = model(x, training=False)
            task_losses = model.compute_task_losses(y, y_pred, sample_weight, stack=False)
        variables = list(model.trainable_variables)
        per_task = [tape.gradient(task, variables) for task in task_losses]
        flags = model._shared_flags([[g is not None for g in grads] for grads in per_task], variables)
        return ops.stack(task_losses), common.shared_gram(variables, per_task, flags, 1.0)

    return compute
