"""Callbacks that change task weights during training."""

import keras

__all__ = ["WeightSchedule"]


class WeightSchedule(keras.callbacks.Callback):
    """Sets the task weights from a function of the epoch or of the step.

    `schedule(index)` returns the weights for that epoch (`unit="epoch"`,
    called before each epoch) or that optimizer step (`unit="step"`, called
    before each batch; the step counts from the optimizer's iterations, so a
    resumed run continues the schedule). It returns a dict from task name to
    weight (tasks not named keep theirs) or a sequence of K weights, as
    `Balancer.assign` takes them. The weights apply from that epoch or step
    on, on every backend. Each new value is recorded in `self.history`.

    Example:

    ```python
    import multiloss
    # Ramp task "b" from 0 to 1 over the first 5 epochs.
    ramp = multiloss.callbacks.WeightSchedule(lambda epoch: {"b": min(epoch / 5, 1.0)})
    # model.fit(x, y, epochs=10, callbacks=[ramp])
    ```
    """

    def __init__(self, schedule, unit="epoch"):
        super().__init__()
        if unit not in ("epoch", "step"):
            raise ValueError(f"WeightSchedule(unit={unit!r}): valid units are 'epoch' and 'step'.")
        if not callable(schedule):
            raise ValueError(f"WeightSchedule needs a callable schedule, got {schedule!r}.")
        self.schedule = schedule
        self.unit = unit
        self.history = []
        self._step = 0

    def _apply(self, index):
        balancer = getattr(self.model, "balancer", None)
        if balancer is None:
            raise ValueError(
                "WeightSchedule needs a compiled multiloss.MultiLossModel "
                "(with resolved tasks)."
            )
        weights = self.schedule(index)
        balancer.assign(weights)
        self.history.append((index, balancer.get_task_weights()))

    def on_train_begin(self, logs=None):
        iterations = self.model.optimizer.iterations
        self._step = int(keras.ops.convert_to_numpy(iterations))

    def on_epoch_begin(self, epoch, logs=None):
        if self.unit == "epoch":
            self._apply(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.unit == "step":
            self._apply(self._step)
            self._step += 1
