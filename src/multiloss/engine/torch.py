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

from multiloss.engine import common

__all__ = ["jit", "train_step", "backward"]


def jit(fn):
    # Eager: torch.compile costs seconds per shape and is opt-in in Keras too.
    return fn


def train_step(model, data):
    x, y, sample_weight = unpack_x_y_sample_weight(data)
    options = model._step_options
    saved = (
        [(v, v.value.detach().clone()) for v in model.non_trainable_variables]
        if options.guards else None
    )
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
            list(torch.autograd.grad(task * scale, values, retain_graph=True, allow_unused=True))
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
        grads = list(torch.autograd.grad(total * scale, values, allow_unused=True))
        with torch.no_grad():
            gram = common.shared_gram(variables, per_task, flags, scale) if options.diagnostics else None
            finite = common.loss_step_finite(losses, grads, check_gradients)
    with torch.no_grad():
        if options.guards and not bool(torch.all(finite)):
            for variable, value in saved:
                variable.assign(value)
        else:
            model.optimizer.apply(grads, variables)
        model._record_step(x, losses.detach(), weights.detach(), total.detach(), finite, gram,
                           balancer.logs())
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def backward(losses, params, balancer):
    """Fills `.grad` of `params` with the balanced gradient of `losses`.

    Args:
        losses: a list of K scalar losses, or a (K,) tensor.
        params: the parameters (torch tensors or Keras variables).
        balancer: a `Weighting` or `Aggregator` built for K tasks.

    Returns:
        The (K,) weights in force.
    """
    raise NotImplementedError
