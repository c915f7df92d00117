"""`MultiLossModel`: a Keras model trained on several named losses."""

import dataclasses
import inspect

import keras
from keras import ops

from multiloss import _keras, engine
from multiloss import balancer as balancer_module
from multiloss.aggregators.base import Aggregator
from multiloss.engine import common
from multiloss.logs import PACKED_KEY, TaskMetrics, unpack_logs
from multiloss.tasks import check_compile_arguments, resolve_tasks

__all__ = ["MultiLossModel"]


@dataclasses.dataclass(frozen=True)
class _CompileArgs:
    """What `compile` got beyond Keras's own arguments (a plain object, so
    Keras's attribute tracking leaves it alone)."""

    loss: object
    loss_weights: object
    balancer: object  # as given: None, an alias, or a Balancer (saved in the config)
    resolved_balancer: object  # the Balancer it names
    diagnostics: bool
    nonfinite: str
    shared: object  # as given: None or a list of layer names, layers, variables
    representation: object  # None or a layer name


@dataclasses.dataclass(frozen=True)
class _Representation:
    """The model split at the representation layer's output: `trunk` maps
    the inputs to it, `heads` maps it to the outputs (both share the
    model's layers and variables; kept out of Keras's tracking so that
    nothing is saved twice)."""

    layer: str
    trunk: object
    heads: object


@keras.saving.register_keras_serializable(package="multiloss")
class MultiLossModel(keras.Model):
    """A `keras.Model` that trains on several named losses, balanced.

    Build it like any Keras model, functionally (`MultiLossModel(inputs,
    outputs)`, outputs a dict or a list) or by subclassing, and compile it
    with Keras's arguments plus `balancer=`. Each loss term is a **task**:

    - the loss of each output (named after the output);
    - each component of a `multiloss.CombinedLoss` (named after the
      component in a single-output model, `<output>_<component>` otherwise);
    - `added_loss`: what the layers add with `add_loss`, and weight
      regularisers.

    Training minimises the balancer's total. With `balancer=None` that is
    Keras's weighted sum, `sum_k w_k L_k`, with the weights from
    `loss_weights` (by output or by task name) and the `CombinedLoss`
    weights. The logs hold, for train and validation, `loss` (the total) and
    per task `<task>_loss` (unweighted) and `<task>_weight` (in force).

    Set the fixed weights between steps with `model.balancer.assign({...})`
    or `multiloss.callbacks.WeightSchedule`; the change takes effect on every
    backend, JAX's compiled step included.

    Tasks are resolved at `compile` when the model is built (a functional
    model always is), otherwise at the first `fit`/`evaluate`; errors about
    output names come then.

    Example:

    ```python
    import numpy as np, keras, multiloss
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    model = multiloss.MultiLossModel(
        inputs, {"a": keras.layers.Dense(1)(h), "b": keras.layers.Dense(1)(h)}
    )
    model.compile("adam", loss={"a": "mse", "b": "mae"}, loss_weights={"b": 0.5})
    x = np.random.rand(64, 8)
    history = model.fit(x, {"a": x[:, :1], "b": x[:, 1:2]}, epochs=2, verbose=0)
    print(sorted(history.history))
    # ['a_loss', 'a_weight', 'b_loss', 'b_weight', 'loss']
    ```
    """

    _compile_args = None
    _tasks = None
    _reach_checked = False
    _representation = None

    def __new__(cls, *args, **kwargs):
        if _keras.functional_init_arguments(args, kwargs) and not issubclass(
            cls, _keras.Functional
        ):
            cls = _functional_variant(cls)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, **kwargs):
        if isinstance(self, _keras.Functional) and _keras.functional_init_arguments(
            args, kwargs
        ):
            _keras.init_functional(self, args, kwargs)
        else:
            super().__init__(*args, **kwargs)

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        loss_weights=None,
        metrics=None,
        weighted_metrics=None,
        run_eagerly=False,
        steps_per_execution=1,
        jit_compile="auto",
        auto_scale_loss=True,
        balancer=None,
        diagnostics=False,
        nonfinite="raise",
        shared=None,
        representation=None,
    ):
        """Configures the model for training; Keras's arguments plus:

        Args:
            loss: as Keras's: one loss for every output, a list in output
                order, or a dict by output name; an entry may be a
                `multiloss.CombinedLoss`, whose components become tasks.
            loss_weights: fixed task weights: a list in output order, or a
                dict by output name or by task name (`added_loss`, a
                `CombinedLoss` component); finite and >= 0.
            balancer: `None` (static weights), a name from
                `multiloss.balancer.available()`, or a balancer instance.
            diagnostics: log, each step, `<task>_grad_norm`, `grad_cos_min`
                (the smallest pairwise cosine of the task gradients) and
                `grad_norm_ratio` (largest over smallest task gradient norm),
                over the shared variables. Free for gradient-level balancers;
                for loss-level ones it costs a backward pass per task.
            nonfinite: what a non-finite task loss or gradient does:
                "raise" (default: the step is skipped, leaving every variable
                as it was, and training stops with an error naming the
                task), "skip" (the step is skipped and counted in the
                `skipped_steps` log) or "ignore" (applied as is, like Keras).
            shared: the variables that balancing applies to: a list of layer
                names, layers or variables. Default: every variable that two
                or more tasks reach. Any other variable gets the gradient of
                the tasks that reach it (a task's head: its own task's).
            representation: the name of a shared layer of a functional model:
                a gradient-level balancer then weighs the per-task gradients
                with respect to that layer's output (MGDA-UB), and the layers
                below it need one backward pass instead of K. Every task must
                pass through that layer.
        """
        # Check everything before changing anything: a failed compile leaves
        # the model as it was.
        check_compile_arguments(loss, loss_weights)
        resolved_balancer = balancer_module.get(balancer)
        if nonfinite not in common.NONFINITE_CHOICES:
            raise ValueError(
                f"compile(nonfinite={nonfinite!r}): valid choices are "
                f"{list(common.NONFINITE_CHOICES)}."
            )
        if not isinstance(diagnostics, bool):
            raise ValueError(f"compile(diagnostics={diagnostics!r}) must be True or False.")
        if representation is not None:
            self._check_representation(representation, resolved_balancer)
        args = _CompileArgs(
            loss, loss_weights, balancer, resolved_balancer, diagnostics, nonfinite, shared,
            representation,
        )
        inputs = self._symbolic_inputs()
        tasks = self._resolve_tasks(args, inputs) if inputs is not None else None
        if tasks is not None:
            self._check_balancer_fits(resolved_balancer, tasks)
            shared_paths = self._resolve_shared(shared)
        super().compile(
            optimizer=optimizer,
            loss=None,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        self.loss = loss
        self._compile_args = args
        mode = "gram" if isinstance(resolved_balancer, Aggregator) else "loss"
        self._step_options = common.StepOptions(
            mode="representation" if representation is not None else mode,
            diagnostics=diagnostics,
            nonfinite=nonfinite,
            representation=representation,
        )
        self._representation = (
            None if representation is None else self._split_at(representation)
        )
        self._tasks = None
        if tasks is not None:
            self._attach(tasks, resolved_balancer, shared_paths)
        else:
            # Resolved at the first fit/evaluate, when the outputs are known.
            _keras.replace_tracked_attribute(self, "balancer", None)
            _keras.replace_tracked_attribute(self, "_task_metrics", None)

    @property
    def layers(self):
        # The balancer is tracked (its state is saved and trained) but is
        # not part of the network: `model.layers[-1]` stays the last layer.
        return [
            layer
            for layer in super().layers
            if not isinstance(layer, balancer_module.Balancer)
        ]

    @layers.setter
    def layers(self, _):
        raise AttributeError("`Model.layers` is reserved and cannot be set.")

    @property
    def task_names(self):
        """The task names, in the order of the loss and weight vectors."""
        if self._tasks is None:
            raise ValueError(
                "The tasks are not known yet: compile the model, and for a "
                "model that is not built, call it or fit it once."
            )
        return self._tasks.names

    # -- resolving tasks -------------------------------------------------

    def _symbolic_inputs(self):
        """Symbolic inputs for a built model with a known input structure
        (functional, Sequential), else None."""
        if not self.built:
            return None
        try:
            inputs = self.input
        except (AttributeError, ValueError):
            return None
        return keras.tree.map_structure(
            lambda t: keras.KerasTensor(t.shape, t.dtype), inputs
        )

    def _resolve_tasks(self, args, inputs):
        added = []

        def forward(x):
            # Layers add losses only when called; collect them from a
            # symbolic training-mode call, which costs no computation.
            with keras.StatelessScope(collect_losses=True) as scope:
                if self._call_has_training_arg:
                    y_pred = self(x, training=True)
                else:
                    y_pred = self(x)
            added.extend(scope.losses)
            return y_pred

        y_pred = _keras.compute_output_spec(forward, inputs)
        has_added_loss = bool(added) or bool(self.losses)
        tasks = resolve_tasks(
            args.loss,
            args.loss_weights,
            y_pred,
            getattr(self, "output_names", None),
            has_added_loss,
        )
        tasks.check_scalar(y_pred)
        return tasks

    @staticmethod
    def _check_balancer_fits(balancer, tasks):
        if balancer.built and balancer.num_tasks != len(tasks):
            raise ValueError(
                f"The balancer {balancer.name!r} was built for {balancer.num_tasks} "
                f"tasks; this model has {len(tasks)}: {list(tasks.names)}."
            )

    def _check_representation(self, name, balancer):
        if not isinstance(balancer, Aggregator):
            raise ValueError(
                f"compile(representation={name!r}) needs a gradient-level balancer "
                f"(multiloss.aggregators); {type(balancer).__name__} weighs losses."
            )
        if not isinstance(self, _keras.Functional):
            raise ValueError(
                f"compile(representation={name!r}) needs a functional model: the "
                "model is split at that layer's output."
            )
        names = [layer.name for layer in self.layers]
        if name not in names:
            raise ValueError(
                f"compile(representation={name!r}): the model has no such layer; its "
                f"layers are {names}."
            )

    def _split_at(self, name):
        layer = self.get_layer(name)
        try:
            z = layer.output
        except (AttributeError, ValueError) as e:
            raise ValueError(
                f"compile(representation={name!r}): the layer must be called once, "
                f"with one output ({e})."
            ) from None
        return _Representation(
            name, keras.Model(self.input, z), keras.Model(z, self.output)
        )

    def _resolve_shared(self, shared):
        """`compile(shared=...)` as a set of variable paths (None: automatic)."""
        if shared is None:
            return None
        if isinstance(shared, (str, keras.layers.Layer, keras.Variable)):
            shared = [shared]
        paths = set()
        for item in shared:
            if isinstance(item, keras.Variable):
                paths.add(item.path)
            elif isinstance(item, keras.layers.Layer):
                paths.update(v.path for v in item.trainable_variables)
            elif isinstance(item, str):
                layers = {layer.name: layer for layer in self._flatten_layers(include_self=False)}
                variable_paths = {v.path for v in self.trainable_variables}
                if item in variable_paths:
                    paths.add(item)
                elif item in layers:
                    paths.update(v.path for v in layers[item].trainable_variables)
                else:
                    raise ValueError(
                        f"compile(shared=...) names {item!r}, which is neither a layer "
                        f"nor a variable of the model; its layers are {sorted(layers)}."
                    )
            else:
                raise ValueError(
                    "compile(shared=...) takes layer names, layers or variables, "
                    f"got {item!r}."
                )
        if not paths:
            raise ValueError(f"compile(shared={shared!r}) names no trainable variable.")
        return frozenset(paths)

    def _attach(self, tasks, balancer, shared_paths):
        balancer.setup(tasks.names, tasks.weights)
        balancer._bind_state_sync(self._sync_state)
        args = self._compile_args
        self._step_options.shared = shared_paths
        _keras.replace_tracked_attribute(self, "balancer", balancer)
        _keras.replace_tracked_attribute(
            self,
            "_task_metrics",
            TaskMetrics(
                tasks.names,
                balancer.log_names,
                diagnostics=args.diagnostics,
                guarded=args.nonfinite != "ignore",
            ),
        )
        self._tasks = tasks
        self._reach_checked = False
        if self.built:
            balancer.build_state(self.trainable_variables)

    def _finish_pending(self, inputs):
        tasks = self._resolve_tasks(self._compile_args, inputs)
        self._attach(
            tasks,
            self._compile_args.resolved_balancer,
            self._resolve_shared(self._compile_args.shared),
        )

    def _symbolic_build(self, iterator=None, data_batch=None):
        if self._compile_args is not None and self._tasks is None:
            if data_batch is None:
                data_batch = _keras.first_batch(iterator)
            x, _, _ = keras.utils.unpack_x_y_sample_weight(data_batch)
            self._finish_pending(
                keras.tree.map_structure(
                    lambda v: None
                    if v is None
                    else keras.KerasTensor(v.shape, keras.backend.standardize_dtype(v.dtype)),
                    x,
                )
            )
        super()._symbolic_build(iterator=iterator, data_batch=data_batch)
        if self._tasks is not None:
            # A model built only now: the balancer's variable-shaped state
            # must exist before the first compiled step.
            self.balancer.build_state(self.trainable_variables)

    def _sync_state(self):
        # JAX's fit holds the state outside the Variables between steps;
        # writing it back before an assign makes the next step read the
        # assigned value instead of silently keeping the old one.
        sync = getattr(self, "jax_state_sync", None)
        if sync is not None:
            sync()

    # -- the loss ----------------------------------------------------------

    def compute_task_losses(self, y, y_pred, sample_weight=None, stack=True):
        """The (K,) vector of unweighted task losses, in `task_names` order
        (a list of K scalars if `stack` is False: differentiating one of
        those reaches only its task's variables, where differentiating an
        entry of the stacked vector reaches every task's, with zeros)."""
        if self._tasks is None:
            # TensorFlow without a distribution strategy never calls
            # `_symbolic_build`: the first trace resolves the tasks.
            self._finish_pending_from_outputs(y_pred)
        return self._tasks.values(
            y, y_pred, sample_weight, self.losses, self._aggregate_additional_loss, stack=stack
        )

    def _finish_pending_from_outputs(self, y_pred):
        if self._compile_args is None:
            raise ValueError("The model must be compiled before it is trained.")
        tasks = resolve_tasks(
            self._compile_args.loss,
            self._compile_args.loss_weights,
            y_pred,
            getattr(self, "output_names", None),
            bool(self.losses),
        )
        self._attach(
            tasks,
            self._compile_args.resolved_balancer,
            self._resolve_shared(self._compile_args.shared),
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        losses = self.compute_task_losses(y, y_pred, sample_weight)
        total, weights = self.balancer.combine(losses, training=training)
        self._task_metrics.update_state(
            _keras.unscale_loss_for_distribution(losses),
            weights,
            ops.shape(keras.tree.flatten(y_pred)[0])[0],
            self.balancer.logs(),
        )
        return total

    # -- training ----------------------------------------------------------

    def train_step(self, *args):
        # One implementation per backend, in the engine (JAX's step takes
        # the state as well as the data).
        module = engine.backend_module()
        if self._step_options.mode == "representation":
            return module.representation_train_step(self, *args)
        return module.train_step(self, *args)

    def _training_call(self, x):
        if self._call_has_training_arg:
            return self(x, training=True)
        return self(x)

    @property
    def _loss_scaling(self):
        """Whether the optimizer scales the loss dynamically (mixed
        precision): it then handles gradient overflow itself."""
        return isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

    def _shared_flags(self, reach, variables):
        self._check_reach(reach)
        return common.shared_flags(reach, variables, self._step_options.shared)

    def _check_reach(self, reach):
        """Raises, naming them, if some tasks reach no trainable variable
        (their loss cannot train anything: a detached output, a constant)."""
        dead = [name for name, row in zip(self._tasks.names, reach) if not any(row)]
        if dead:
            raise ValueError(
                f"Task(s) {dead} have no gradient path to any trainable variable: "
                "their loss does not depend on the model's weights. Check that the "
                "output is computed by trainable layers, or drop its loss."
            )
        self._reach_checked = True

    def _step_state(self):
        """The non-trainable variables a training step may assign (what a
        skipped step restores): the layers' (e.g. BatchNormalization's
        moving statistics) and those of the balancer's `step_variables`."""
        variables = self.non_trainable_variables
        balancer = getattr(self, "balancer", None)  # None until the tasks are resolved
        if balancer is None:
            return variables
        own = {id(v) for v in balancer.non_trainable_variables}
        kept = {id(v) for v in balancer.step_variables()}
        return [v for v in variables if id(v) not in own or id(v) in kept]

    def _gram_flags(self, variables, flags):
        return common.gram_flags_for(self.balancer, variables, flags)

    def _record_step(self, x, losses, weights, total, finite, gram, extras):
        """Updates the logs' trackers for one training step. `finite` None:
        the step is known to be finite (an eager step that checked)."""
        options = self._step_options
        batch_size = ops.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]
        diagnostics = None
        if options.diagnostics and gram is not None:
            diagnostics = common.gram_diagnostics(gram)
        self._task_metrics.update_state(
            _keras.unscale_loss_for_distribution(losses),
            weights,
            batch_size,
            extras,
            finite if options.guards else None,
            diagnostics,
        )
        total = _keras.unscale_loss_for_distribution(total)
        sample_weight = ops.cast(batch_size, "float32")
        if options.guards and finite is not None:
            ok = ops.all(finite)
            total = ops.where(ok, total, ops.zeros_like(total))
            sample_weight = ops.where(ok, sample_weight, ops.zeros_like(sample_weight))
        self._loss_tracker.update_state(total, sample_weight=sample_weight)

    # -- logs ----------------------------------------------------------------

    def get_metrics_result(self):
        # Inside a step that `make_train_function` wrapped, the task logs
        # travel as one vector (`TaskMetrics.packed`), which the wrapper
        # turns back into named entries. Anywhere else, the named entries.
        packing = getattr(self, "_log_packing", None)
        if packing is None or not packing.active or getattr(self, "_task_metrics", None) is None:
            return super().get_metrics_result()
        logs = {}
        for metric in self.metrics:
            if metric is self._task_metrics:
                logs[PACKED_KEY] = metric.packed()
                continue
            result = metric.result()
            if isinstance(result, dict):
                logs.update(result)
            else:
                logs[metric.name] = result
        return logs

    def make_train_function(self, force=False):
        super().make_train_function(force)
        self.train_function = self._unpacking_logs(self.train_function, train=True)
        return self.train_function

    def make_test_function(self, force=False):
        super().make_test_function(force)
        self.test_function = self._unpacking_logs(self.test_function)
        return self.test_function

    def _unpacking_logs(self, function, train=False):
        """`function` (a train or test function) with its step returning the
        task logs packed, and its logs unpacked for Keras."""
        if function is None or isinstance(function, _UnpackingLogs):
            return function
        entries = engine.backend_module().log_entries_for(self)
        if entries is None:
            return function
        if getattr(self, "_log_packing", None) is None:
            self._log_packing = _LogPacking()
        return _UnpackingLogs(function, self, entries, train)

    def _get_metrics_result_or_logs(self, logs):
        # Keras's rule (the metrics' results when the last step's logs have
        # the same names, else those logs), but for the task entries that
        # `fit` leaves out of the batch logs when no callback reads them.
        metric_logs = self.get_metrics_result()
        task_metrics = getattr(self, "_task_metrics", None)
        task_names = set(task_metrics.packed_names) if task_metrics is not None else set()
        if isinstance(logs, dict) and set(logs) <= set(metric_logs) and (
            set(metric_logs).difference(logs) <= task_names
        ):
            return metric_logs
        return logs

    def fit(self, *args, **kwargs):
        bound = _FIT_SIGNATURE.bind(self, *args, **kwargs)
        callbacks = bound.arguments.get("callbacks")
        args = self._compile_args
        module = engine.backend_module()
        raising = args is not None and args.nonfinite == "raise"
        hooks = _BalancerHooks(stop=module.nonfinite_stop(self) if raising else None)
        listed = callbacks.callbacks if isinstance(callbacks, keras.callbacks.CallbackList) else (
            keras.tree.flatten(callbacks) if callbacks else []
        )
        # Each batch's task entries cost Keras a conversion per entry (on
        # TensorFlow in the training thread): give them only to a reader.
        read_by_others = bound.arguments.get("verbose", "auto") != 0 or any(
            _reads_train_batch_logs(callback) for callback in listed
        )
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks.callbacks.insert(0, hooks)
        else:
            # First, so that the balancer's epoch-end state is what a
            # user's BackupAndRestore or ModelCheckpoint saves.
            bound.arguments["callbacks"] = [hooks] + listed
        outer = getattr(self, "_train_batch_logs", None)
        self._train_batch_logs = None if read_by_others else hooks.batch_log_names
        try:
            return super().fit(*bound.args[1:], **bound.kwargs)
        except Exception as exc:
            # Training stopped on a non-finite task (the step's own exception
            # type per backend, or the callback's): name the tasks, now that
            # the model holds its state again.
            if raising and (isinstance(exc, common.NonfiniteStep) or module.is_nonfinite_stop(exc)):
                raise hooks.nonfinite_error() from None
            raise
        finally:
            self._train_batch_logs = outer

    # -- saving ------------------------------------------------------------

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config or self._compile_args is None:
            return config
        args = self._compile_args
        balancer = args.balancer
        if isinstance(balancer, balancer_module.Balancer):
            balancer = keras.saving.serialize_keras_object(balancer)
        shared = args.shared
        if shared is not None:
            shared = [s if isinstance(s, str) else s.path if isinstance(s, keras.Variable) else s.name
                      for s in (shared if isinstance(shared, (list, tuple)) else [shared])]
        config.update(
            loss=keras.saving.serialize_keras_object(args.loss),
            loss_weights=args.loss_weights,
            balancer=balancer,
            diagnostics=args.diagnostics,
            nonfinite=args.nonfinite,
            shared=shared,
            representation=args.representation,
        )
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if hasattr(self, "optimizer") and self.built:
            self.optimizer.build(self.trainable_variables)


_FIT_SIGNATURE = inspect.signature(keras.Model.fit)


def _reads_train_batch_logs(callback):
    """Whether `callback` has its own `on_train_batch_end` (or `on_batch_end`,
    which the default `on_train_batch_end` calls): the test Keras uses for
    dispatching a batch's end asynchronously."""
    base = keras.callbacks.Callback
    return any(
        getattr(type(callback), name, None) is not getattr(base, name)
        for name in ("on_train_batch_end", "on_batch_end")
    )


class _BalancerHooks(keras.callbacks.Callback):
    """Runs the balancer's epoch hooks inside `fit`, and names the tasks when
    `compile(nonfinite="raise")` stops training on a non-finite step.

    How a step stops (`stop`, from the engine's `nonfinite_stop`):
    - "step": the step raises itself, having changed nothing;
    - "async": a compiled, asynchronously dispatched step (JAX) skips itself
      and every later step of the epoch; this callback sees the skip in the
      batch's logs, possibly some batches later, without making Keras wait
      for each step;
    - "batch": several replicas: the check after each batch makes Keras
      wait for every step.
    """

    def __init__(self, stop=None):
        super().__init__()
        self._stop = stop
        # Keras may then run `on_train_batch_end` in a worker thread.
        self.async_safe = stop != "batch"
        # The task entries of the batch logs this callback reads.
        self.batch_log_names = frozenset({"skipped_steps"} if stop in ("async", "batch") else ())
        self._epoch = 0
        self._batch = 0
        self._epoch_start = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._batch = batch

    def on_train_batch_end(self, batch, logs=None):
        if self._stop not in ("async", "batch") or not logs or "skipped_steps" not in logs:
            return
        if float(keras.ops.convert_to_numpy(logs["skipped_steps"])) == 0:
            return
        if self._stop == "batch":
            raise self.nonfinite_error()
        # Possibly a worker thread: no model access here; `fit` names the
        # tasks once the model holds its state again.
        raise common.NonfiniteStep()

    def nonfinite_error(self):
        """The error that stops training, naming the tasks of the skipped step."""
        model = self.model  # on JAX, writes the in-flight state back first
        metrics = model._task_metrics
        flags = keras.ops.convert_to_numpy(metrics.nonfinite)
        names = [name for name, bad in zip(metrics.task_names, flags) if bad]
        batch = self._batch
        if self._stop == "async":
            # Later batches may have begun; the optimizer stopped counting at
            # the skipped step.
            batch = self._iterations() - self._epoch_start
        model.stop_training = True
        return FloatingPointError(
            f"Non-finite loss or gradient in task(s) {names} at epoch {self._epoch}, "
            f"batch {batch}. The step was skipped: every variable is as it was "
            "before it. compile(nonfinite='skip') skips such steps and goes on."
        )

    def _iterations(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _balancer(self):
        # `self.model` also writes JAX's in-flight state back first.
        return getattr(self.model, "balancer", None)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._stop == "async":
            self._epoch_start = self._iterations()
        balancer = self._balancer()
        if balancer is not None:
            balancer.on_epoch_begin(epoch)

    def on_epoch_end(self, epoch, logs=None):
        balancer = self._balancer()
        if balancer is not None:
            balancer.on_epoch_end(epoch, logs)


class _LogPacking:
    """Whether the step being run or traced returns its task logs packed."""

    active = False


class _UnpackingLogs:
    """A Keras train or test function whose step returns the task logs as
    one vector (traced or run while `_LogPacking.active`), returning them to
    Keras as named entries (`logs.unpack_logs`, split by `entries`). JAX's
    functions return `(logs, state)`, the others the logs."""

    def __init__(self, function, model, entries, train=False):
        self._function = function
        self._model = model
        self._entries = entries
        self._train = train
        self._names = (None, ())  # (the TaskMetrics, its packed_names)

    def __call__(self, *args, **kwargs):
        packing = self._model._log_packing
        packing.active = True
        try:
            outputs = self._function(*args, **kwargs)
        finally:
            packing.active = False
        logs = outputs[0] if isinstance(outputs, tuple) else outputs
        if not isinstance(logs, dict) or PACKED_KEY not in logs:
            return outputs  # a step that does not report the task logs
        metrics = self._model._task_metrics
        if self._names[0] is not metrics:  # a compile attaches new ones
            self._names = (metrics, metrics.packed_names)
        # A train function inside `fit` gives back only the entries that
        # its callbacks read (`MultiLossModel.fit`); otherwise all.
        keep = getattr(self._model, "_train_batch_logs", None) if self._train else None
        logs = unpack_logs(logs, self._names[1], self._entries, keep)
        return (logs,) + outputs[1:] if isinstance(outputs, tuple) else logs


@keras.saving.register_keras_serializable(package="multiloss")
class FunctionalMultiLossModel(MultiLossModel, _keras.Functional):
    """A `MultiLossModel` built from inputs and outputs; what
    `MultiLossModel(inputs, outputs)` returns."""


def _functional_variant(cls):
    """The class to instantiate for functional arguments.

    `MultiLossModel` maps to `FunctionalMultiLossModel`. A user's subclass
    used functionally is rebased onto it, as Keras rebases such a subclass
    onto `Functional`, but without touching `MultiLossModel` itself.
    """
    if cls is MultiLossModel:
        return FunctionalMultiLossModel
    cls.__bases__ = tuple(
        _functional_variant(base)
        if issubclass(base, MultiLossModel) and not issubclass(base, _keras.Functional)
        else base
        for base in cls.__bases__
    )
    return cls
