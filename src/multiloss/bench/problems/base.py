"""What a benchmark problem is, and the shared recipe of the problems that
train a `MultiLossModel` with `fit`."""

import time

import numpy as np

__all__ = ["Problem", "FitProblem", "Advance"]


class Problem:
    """A benchmark problem: tasks, a default step count, and `run(method,
    seed, steps, advance)` returning one run's numbers as a JSON-able dict.

    Attributes:
        name: the key in results and reports (e.g. `toy2d-cagrad`).
        family: the name on the command line (`toy2d`).
        title, description: for the report.
        tasks: the task names.
        metric: the per-task metric's name; `higher_is_better` for it.
        default_steps: the full suite's steps; `quick_steps`: the demo's.
        baselines: whether single-task models are trained for delta_m%.
    """

    name = "problem"
    family = "problem"
    title = ""
    description = ""
    tasks = ()
    metric = "loss"
    higher_is_better = False
    default_steps = 1000
    quick_steps = 100
    baselines = False

    def prepare(self):
        """Loads what the runs share (data), once; may raise
        `multiloss.bench.data.MissingPackage`."""

    def units(self, steps):
        """Progress-bar units of one run of `steps` steps."""
        return 1

    def run(self, method, seed, steps, advance=None):
        raise NotImplementedError

    def run_single_task(self, task, seed, steps, advance=None):
        raise NotImplementedError

    def settings(self, steps):
        """The problem's settings, for the results."""
        return {"steps": int(steps)}

    def summarize(self, run):
        """The headline numbers of one successful run: a dict of floats
        (per-task metrics as `metric/<task>`) that the summary averages
        over seeds."""
        return {}


class Advance:
    """Counts progress units and passes them on (so that a failed run's
    remaining units can be advanced in one go)."""

    def __init__(self, advance=None):
        self.done = 0
        self._advance = advance

    def __call__(self, n=1):
        self.done += n
        if self._advance is not None:
            self._advance(n)


def _batches(x, y, batch_size, steps, seed):
    """Exactly `steps` training batches: passes over the data, each in a
    fresh random order (seeded; the last partial batch of a pass dropped).
    Keras's own iterator over arrays cuts an epoch short where it meets the
    end of the data when `steps_per_epoch` is set, so the step count would
    drift; this one runs on across epochs."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            n = len(x)
            self.size = max(1, min(int(batch_size), n))
            per_pass = n // self.size
            passes = -(-steps // per_pass)
            rng = np.random.default_rng(seed)
            self.order = np.concatenate([
                rng.permutation(n)[: per_pass * self.size] for _ in range(passes)
            ])

        def __len__(self):
            return steps

        def __getitem__(self, i):
            index = self.order[i * self.size:(i + 1) * self.size]
            return x[index], {task: values[index] for task, values in y.items()}

    return Batches()


def _history_callback(advance):
    import keras

    class _Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            advance(1)

    return _Progress()


class FitProblem(Problem):
    """A problem trained with `MultiLossModel.fit`, one balancer per run.

    Subclasses set the tasks and `load_data()` (returning `x_train,
    y_train, x_val, y_val, x_test, y_test`, `y` dicts by task), and define
    `build_model(tasks)`, `loss(task)` and `task_metric(task, y, pred)`.

    `steps` counts optimizer steps: training runs `log_points` Keras epochs
    of `steps // log_points` steps each (the data iterator carries on
    across them), so every run logs its per-task losses and weights, and the
    validation losses, at `log_points` points whatever the data's size.
    """

    batch_size = 64
    learning_rate = 1e-3
    log_points = 20
    eval_batch_size = 1024

    def __init__(self):
        self._data = None

    # -- to define -----------------------------------------------------

    def load_data(self):
        raise NotImplementedError

    def build_model(self, tasks):
        raise NotImplementedError

    def loss(self, task):
        raise NotImplementedError

    def task_metric(self, task, y_true, y_pred):
        raise NotImplementedError

    def task_loss(self, task, y_true, y_pred):
        """The task's loss on numpy arrays (for the test set)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------

    def prepare(self):
        if self._data is None:
            self._data = self.load_data()
        return self._data

    def schedule(self, steps):
        """`(epochs, steps_per_epoch)` for `steps` optimizer steps."""
        steps = max(1, int(steps))
        epochs = min(self.log_points, steps)
        return epochs, max(1, steps // epochs)

    def units(self, steps):
        return self.schedule(steps)[0]

    def settings(self, steps):
        epochs, per_epoch = self.schedule(steps)
        x_train, _, x_val, _, x_test, _ = self.prepare()
        return {
            "steps": epochs * per_epoch,
            "log_points": epochs,
            "batch_size": self.batch_size,
            "optimizer": f"Adam(learning_rate={self.learning_rate})",
            "train_examples": int(len(x_train)),
            "validation_examples": int(len(x_val)),
            "test_examples": int(len(x_test)),
        }

    def _train(self, tasks, balancer, seed, steps, advance):
        import keras

        from multiloss import balancer as balancer_module

        x_train, y_train, x_val, y_val, x_test, y_test = self.prepare()
        keras.utils.set_random_seed(seed)
        model = self.build_model(tuple(tasks))
        # Created after seeding: a balancer's own seed generator follows it.
        resolved = balancer_module.get(balancer)
        model.compile(
            keras.optimizers.Adam(self.learning_rate),
            loss={task: self.loss(task) for task in tasks},
            balancer=resolved,
        )
        epochs, per_epoch = self.schedule(steps)
        pick = lambda y: {task: y[task] for task in tasks}  # noqa: E731
        batches = _batches(x_train, pick(y_train), self.batch_size, epochs * per_epoch, seed)
        start = time.perf_counter()
        history = model.fit(
            batches, epochs=epochs, steps_per_epoch=per_epoch,
            validation_data=(x_val, pick(y_val)), validation_batch_size=self.eval_batch_size,
            verbose=0,
            callbacks=[_history_callback(advance), keras.callbacks.TerminateOnNaN()],
        ).history
        seconds = time.perf_counter() - start
        predictions = model.predict(x_test, batch_size=self.eval_batch_size, verbose=0)
        if not isinstance(predictions, dict):
            predictions = {tasks[0]: predictions}
        metrics, test_losses = {}, {}
        for task in tasks:
            pred = np.asarray(predictions[task], "float64")
            metrics[task] = float(self.task_metric(task, y_test[task], pred))
            test_losses[task] = float(self.task_loss(task, y_test[task], pred))
        done = len(history.get("loss", []))
        curves = {"step": [(i + 1) * per_epoch for i in range(done)]}
        for key, values in history.items():
            curves[key] = [float(v) for v in values]
        finite = all(np.isfinite(v) for v in metrics.values()) and all(
            np.isfinite(v) for v in curves.get("loss", [0.0])
        )
        return {
            "status": "ok" if finite and done == epochs else "diverged",
            "seconds": seconds,
            "steps": done * per_epoch,
            "metrics": metrics,
            "test_losses": test_losses,
            "history": curves,
        }

    def run(self, method, seed, steps, advance=None):
        return self._train(self.tasks, method, seed, steps, advance or (lambda n=1: None))

    def run_single_task(self, task, seed, steps, advance=None):
        return self._train((task,), None, seed, steps, advance or (lambda n=1: None))

    def summarize(self, run):
        out = {f"metric/{task}": run["metrics"][task] for task in self.tasks}
        if len(self.tasks) <= 4:
            # The per-task table of the demo: test loss and the weight in
            # force over the last epoch, beside the metric.
            for task in self.tasks:
                out[f"{task} loss"] = run["test_losses"][task]
            for task in self.tasks:
                weights = run["history"].get(f"{task}_weight")
                if weights:
                    out[f"{task} weight"] = weights[-1]
        return out


class Classification:
    """Mixin: one softmax head per task, sparse categorical cross-entropy,
    accuracy (higher is better)."""

    metric = "accuracy"
    higher_is_better = True

    def loss(self, task):
        return "sparse_categorical_crossentropy"

    def task_metric(self, task, y_true, y_pred):
        return float(np.mean(np.argmax(y_pred, axis=-1) == np.asarray(y_true).reshape(-1)))

    def task_loss(self, task, y_true, y_pred):
        p = np.take_along_axis(y_pred, np.asarray(y_true).reshape(-1, 1).astype(int), axis=-1)
        return float(-np.mean(np.log(np.clip(p, 1e-7, 1.0))))


class Regression:
    """Mixin: mean squared error per task."""

    def loss(self, task):
        return "mse"

    def task_loss(self, task, y_true, y_pred):
        y_true = np.asarray(y_true, "float64").reshape(y_pred.shape)
        return float(np.mean(np.square(y_pred - y_true)))
