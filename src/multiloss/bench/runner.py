"""Trains a model with each balancer on a problem and collects the results."""

import time

import keras

from multiloss import balancer as balancer_module

__all__ = ["EpochProgress", "run_multidigits"]


class EpochProgress(keras.callbacks.Callback):
    """Calls `advance()` after every epoch (drives a progress bar)."""

    def __init__(self, advance):
        super().__init__()
        self.advance = advance

    def on_epoch_end(self, epoch, logs=None):
        self.advance()


def run_multidigits(method, data, epochs=8, batch_size=64, seed=0, callbacks=()):
    """Trains the multidigits model with `method` (a balancer alias) and
    returns per-task test accuracy, loss and final weight, and the time."""
    from multiloss.bench.problems import multidigits

    x_train, y_train, x_test, y_test = data
    model = multidigits.build_model(seed=seed)
    model.compile(
        keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics={task: ["accuracy"] for task in multidigits.TASKS},
        balancer=balancer_module.get(method),
    )
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0,
        callbacks=list(callbacks),
    ).history
    seconds = time.perf_counter() - start
    logs = model.evaluate(x_test, y_test, batch_size=512, return_dict=True, verbose=0)
    tasks = {
        task: {
            "accuracy": logs[f"{task}_accuracy"],
            "loss": logs[f"{task}_loss"],
            # The weight in force during the last training epoch.
            "weight": history[f"{task}_weight"][-1],
        }
        for task in multidigits.TASKS
    }
    return {"method": method, "tasks": tasks, "seconds": seconds}
