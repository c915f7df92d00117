"""PyTorch engine: the train step and the `backward` helper.

Per-task gradients come from K `torch.autograd.grad` calls on one graph
(`retain_graph=True`): on CPU that measured faster than batched gradients
(`is_grads_batched`) for every K tried (shared/notes/keras3-facts.md, §4).
`allow_unused=True` returns `None` for a variable a task does not reach,
which is how shared variables are found.
"""

import torch
from keras import ops
from keras.utils import unpack_x_y_sample_weight

from multiloss import _keras
from multiloss.engine import common
from multiloss.logs import lazy_log_entries

__all__ = [
    "log_entries_for", "jit", "train_step", "representation_train_step", "backward", "task_gram", "nonfinite_stop",
    "is_nonfinite_stop",
]


def jit(fn, xla=False):
    # Eager: torch.compile costs seconds per shape and is opt-in in Keras too.
    return fn


def log_entries_for(model):
    """How the step's packed task logs become Keras's entries: read to the
    host once, when first used."""
    return lazy_log_entries


def nonfinite_stop(model):
    # Eager: the step knows at once whether it was finite, and raises.
    return "step"


def is_nonfinite_stop(exc):
    return isinstance(exc, common.NonfiniteStep)


def _apply_or_restore(model, grads, variables, finite, saved):
    """Applies the gradients; for a non-finite task, restores the
    non-trainable state instead. Returns `(finite, stop)`: the flags to
    record (None for a finite step: the logs then skip their guard) and
    whether to raise under `nonfinite="raise"` (after the logs are
    recorded: they name the task)."""
    if model._step_options.guards and not bool(torch.all(finite)):
        for variable, value in saved:
            variable.assign(value)
        return finite, model._step_options.nonfinite == "raise"
    model.optimizer.apply(grads, variables)
    return None, False


def _tensor_storage(variable):
    """The Keras Variable's torch tensor `_value` (reading `.value` costs
    1.9 us more, paid at every step), or None when it has none."""
    storage = getattr(variable, "_value", None)
    return storage if isinstance(storage, torch.Tensor) else None


def _snapshot(model):
    """`(variable, copy of its value)` for the state a skipped step puts
    back, copied from the storage."""
    saved = []
    for variable in model._step_state():
        storage = _tensor_storage(variable)
        value = variable.value if storage is None else storage
        saved.append((variable, value.detach().clone()))
    return saved


def _loss_step_finite(losses, grads, check_gradients):
    """`common.loss_step_finite` in torch calls: the same flags, without
    Keras's per-op conversions, which cost more than the sums themselves in
    an eager step."""
    losses_ok = torch.isfinite(losses)
    if not check_gradients:
        return losses_ok
    sums = [g.sum(dtype=torch.float32) for g in grads if g is not None]
    if not sums:
        return losses_ok
    grads_ok = torch.isfinite(torch.stack(sums).sum())
    # A non-finite loss is blamed first (see common._blame_losses_first).
    return losses_ok & (grads_ok | ~losses_ok.all())


def train_step(model, data):
    x, y, sample_weight = unpack_x_y_sample_weight(data)
    options = model._step_options
    saved = _snapshot(model) if options.guards else None
    scale = common.loss_scale(model.optimizer)
    y_pred = model._training_call(x)
    model.zero_grad()
    task_losses = model.compute_task_losses(y, y_pred, sample_weight, stack=False)
    losses = torch.stack(task_losses)
    balancer = model.balancer
    variables = list(model.trainable_variables)
    values = [v.value for v in variables]
    check_gradients = not model._loss_scaling
    if options.needs_task_gradients or not model._reach_checked:
        # In loss mode only at the first step: every task must reach a variable.
        per_task = [
            list(torch.autograd.grad(common.scaled(task, scale), values, retain_graph=True,
                                    allow_unused=True))
            if task.requires_grad else [None] * len(values)
            for task in task_losses
        ]
        flags = model._shared_flags([[g is not None for g in grads] for grads in per_task], variables)
    if options.mode == "gram":
        with torch.no_grad():
            grads, weights, total, gram, finite = common.gradient_step(
                balancer, variables, per_task, losses.detach(), scale, flags,
                check_gradients=check_gradients,
                gram_flags=model._gram_flags(variables, flags),
                sanitize=options.guards,
            )
    else:
        total, weights = balancer.combine(losses, training=True)
        grads = list(torch.autograd.grad(common.scaled(total, scale), values, allow_unused=True))
        with torch.no_grad():
            gram = common.shared_gram(variables, per_task, flags, scale) if options.diagnostics else None
            finite = (
                _loss_step_finite(losses.detach(), grads, check_gradients) if options.guards else None
            )
    with torch.no_grad():
        finite, stop = _apply_or_restore(model, grads, variables, finite, saved)
        model._record_step(x, losses.detach(), weights.detach(), total.detach(), finite, gram,
                           balancer.logs())
    if stop:
        raise common.NonfiniteStep()
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def representation_train_step(model, data):
    """The step of `compile(representation=...)`: K backward passes through
    the heads only, one through the trunk."""
    x, y, sample_weight = unpack_x_y_sample_weight(data)
    options = model._step_options
    trunk, heads = model._representation.trunk, model._representation.heads
    saved = _snapshot(model) if options.guards else None
    scale = common.loss_scale(model.optimizer)
    z = trunk(x, training=True)
    y_pred = heads(z, training=True)
    model.zero_grad()
    task_losses = model.compute_task_losses(y, y_pred, sample_weight, stack=False)
    losses = torch.stack(task_losses)
    balancer = model.balancer
    head_variables = list(heads.trainable_variables)
    trunk_variables = list(trunk.trainable_variables)
    targets = [z] + [v.value for v in head_variables]
    per_task = [
        list(torch.autograd.grad(common.scaled(task, scale), targets, retain_graph=True,
                                allow_unused=True))
        if task.requires_grad else [None] * len(targets)
        for task in task_losses
    ]
    with torch.no_grad():
        head_grads, z_cotangent, weights, total, gram, finite = common.representation_step(
            balancer, model.task_names, head_variables, [g[1:] for g in per_task],
            [g[0] for g in per_task], losses.detach(), scale,
            check_gradients=not model._loss_scaling, sanitize=options.guards,
        )
    trunk_grads = torch.autograd.grad(
        z, [v.value for v in trunk_variables], grad_outputs=z_cotangent, allow_unused=True
    )
    by_id = {id(v): g for v, g in zip(trunk_variables + head_variables,
                                      list(trunk_grads) + list(head_grads))}
    variables = [v for v in model.trainable_variables if id(v) in by_id]
    grads = [by_id[id(v)] for v in variables]
    with torch.no_grad():
        finite, stop = _apply_or_restore(model, grads, variables, finite, saved)
        model._record_step(x, losses.detach(), weights, total, finite, gram, balancer.logs())
    if stop:
        raise common.NonfiniteStep()
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def backward(losses, params, balancer, shared=None):
    """Fills `.grad` of `params` with the balanced gradient of `losses`, in
    `loss.backward()`'s idiom (gradients accumulate into `.grad`), for
    custom training loops.

    Args:
        losses: a list of K scalar losses (a list, not a stacked tensor: a
            parameter reached by one loss only is then found task-specific).
        params: the parameters: torch tensors or Keras variables. A balancer
            with trainable state (`Uncertainty`, `IMTLL`) has its own
            `trainable_variables`, whose `.value.grad` this fills too; give
            them to the optimizer.
        balancer: a balancer (built for K tasks on first use).
        shared: the shared parameters (default: those two or more losses
            reach).

    Returns:
        The (K,) weights in force. The same computation as
        `MultiLossModel.fit`'s step.

    Example:

    ```python
    import torch, multiloss
    from multiloss.engine.torch import backward
    trunk, head_a, head_b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    params = [*trunk.parameters(), *head_a.parameters(), *head_b.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    x = torch.randn(8, 3)
    h = trunk(x)
    losses = [(head_a(h) ** 2).mean(), ((head_b(h) - 1) ** 2).mean()]
    optimizer.zero_grad()
    weights = backward(losses, params, multiloss.aggregators.MGDA())
    optimizer.step()
    ```
    """
    from multiloss.aggregators.base import Aggregator

    task_losses = list(losses) if isinstance(losses, (list, tuple)) else list(losses.unbind())
    tensors = [p.value if hasattr(p, "value") and not isinstance(p, torch.Tensor) else p
               for p in params]
    if not balancer.built:
        balancer.build((len(task_losses),))
    if isinstance(balancer, Aggregator):
        per_task = [
            list(torch.autograd.grad(task, tensors, retain_graph=True, allow_unused=True))
            if task.requires_grad else [None] * len(tensors)
            for task in task_losses
        ]
        shared_tensors = None if shared is None else [
            s.value if hasattr(s, "value") and not isinstance(s, torch.Tensor) else s for s in shared
        ]
        flags = common.shared_flags(
            [[g is not None for g in grads] for grads in per_task], tensors, shared_tensors
        )
        with torch.no_grad():
            grads, weights, _, _, _ = common.gradient_step(
                balancer, tensors, per_task, torch.stack(task_losses).detach(), 1.0, flags,
                gram_flags=common.gram_flags_for(balancer, list(params), flags),
            )
            for tensor, grad in zip(tensors, grads):
                if grad is not None:
                    tensor.grad = grad.clone() if tensor.grad is None else tensor.grad + grad
        return weights
    total, weights = balancer.combine(torch.stack(task_losses), training=True)
    total.backward()
    return weights.detach()


def task_gram(model):
    """A function `(x, y, sample_weight) -> (losses, gram)`: the task losses
    and the Gram matrix of their gradients over the shared variables, in
    inference mode, changing nothing."""

    def compute(x, y, sample_weight):
        y_pred = model(x, training=False)
        task_losses = model.compute_task_losses(y, y_pred, sample_weight, stack=False)
        variables = list(model.trainable_variables)
        values = [v.value for v in variables]
        per_task = [
            list(torch.autograd.grad(task, values, retain_graph=True, allow_unused=True))
            if task.requires_grad else [None] * len(values)
            for task in task_losses
        ]
        flags = model._shared_flags([[g is not None for g in grads] for grads in per_task], variables)
        with torch.no_grad():
            return torch.stack(task_losses).detach(), common.shared_gram(variables, per_task, flags, 1.0)

    return compute


# -- The operations of `multiloss.engine.ops` -----------------------------
# torch calls for float32 tensors, `keras.ops` for anything else: the same
# result either way (Keras's torch backend makes these very calls once it
# has converted and checked the arguments, which is what an eager step
# pays for on the K numbers of a balancer's rule).


def _float32(x):
    return isinstance(x, torch.Tensor) and x.dtype is torch.float32


def _fast(torch_fn, keras_fn, takes="tensor"):
    """`keras_fn`, calling `torch_fn` instead when every tensor argument is
    float32. `takes`: "tensor" (`fn(x)`), "axis" (`fn(x, axis=-1)`) or
    "tensors" (`fn(xs, axis=0)`, a list)."""
    if takes == "tensor":
        def fn(x):
            return torch_fn(x) if _float32(x) else keras_fn(x)
    elif takes == "axis":
        def fn(x, axis=-1):
            if _float32(x) and axis is not None:
                return torch_fn(x, dim=axis)
            return keras_fn(x, axis=axis)
    else:
        def fn(xs, axis=0):
            if all(_float32(x) for x in xs):
                return torch_fn(xs, dim=axis)
            return keras_fn(xs, axis=axis)

    fn.__name__ = keras_fn.__name__
    fn.__doc__ = f"`keras.ops.{keras_fn.__name__}`, a torch call for float32 tensors."
    return fn


def _sum(x, axis=None, keepdims=False):
    if not _float32(x) or (axis is None and keepdims) or axis == () or axis == []:
        return ops.sum(x, axis=axis, keepdims=keepdims)
    return torch.sum(x) if axis is None else torch.sum(x, dim=axis, keepdim=keepdims)


def _where(condition, x1, x2):
    if (
        isinstance(condition, torch.Tensor)
        and condition.dtype is torch.bool
        and _float32(x1)
        and _float32(x2)
    ):
        return torch.where(condition, x1, x2)
    return ops.where(condition, x1, x2)


def _stop_gradient(x):
    return x.detach() if isinstance(x, torch.Tensor) else ops.stop_gradient(x)


def _storage(variable, value, numbers=False):
    """The Variable's torch storage if `value` can be written into it as it
    is: a tensor of its dtype, shape and device (or, with `numbers`, a
    Python number into a float Variable), outside a JAX-style stateless
    call (which records assignments: Keras's own path); else None."""
    storage = _tensor_storage(variable)
    if storage is None or _keras.in_stateless_scope():
        return None
    if isinstance(value, torch.Tensor):
        fits = (
            value.dtype is storage.dtype
            and value.shape == storage.shape
            and value.device == storage.device
        )
    else:
        fits = numbers and isinstance(value, (float, int)) and storage.is_floating_point()
    return storage if fits else None


def _assign(variable, value):
    # What Keras's torch Variable does once it has converted and checked the
    # value (8.8 us in all, 10.7 for an int32 one; the copy itself 0.3),
    # into its storage `_value`.
    storage = _storage(variable, value)
    if storage is None:
        return variable.assign(value)
    if storage.requires_grad:
        with torch.no_grad():
            storage.copy_(value)
    else:
        storage.copy_(value.detach())
    return value


def _assign_add(variable, value):
    # In place into the storage, as `_assign` (no read of `.value`); a
    # numpy array, another dtype or shape: Keras's path. Returns nothing
    # (not the live storage, which later steps change).
    storage = _storage(variable, value, numbers=True)
    if storage is None:
        variable.assign_add(value)
        return
    with torch.no_grad():
        storage.add_(value)


def step_ops():
    """The functions of `multiloss.engine.ops` on torch, by name."""
    return {
        "sum": _sum,
        "log": _fast(torch.log, ops.log),
        "exp": _fast(torch.exp, ops.exp),
        "sqrt": _fast(torch.sqrt, ops.sqrt),
        "abs": _fast(torch.abs, ops.abs),
        "sign": _fast(torch.sign, ops.sign),
        "relu": _fast(torch.relu, ops.relu),
        "softmax": _fast(torch.softmax, ops.softmax, takes="axis"),
        "log_softmax": _fast(torch.log_softmax, ops.log_softmax, takes="axis"),
        "concatenate": _fast(torch.cat, ops.concatenate, takes="tensors"),
        "stack": _fast(torch.stack, ops.stack, takes="tensors"),
        "where": _where,
        "assign": _assign,
        "assign_add": _assign_add,
        "stop_gradient": _stop_gradient,
    }
