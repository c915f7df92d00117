"""Shared pieces of the benchmark scripts: the benchmark model, data,
interleaved timing, and running a script once per backend.

Timings are medians over interleaved rounds (every variant once per round,
in rotating order), so that the machine's load drifts hit all variants
alike; ratios are taken between medians of the same run.
"""

import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date

BACKENDS = ("tensorflow", "jax", "torch")


def mlp_with_heads(model_class, num_tasks, seed=0):
    """The benchmark model: MLP 64 -> 256 -> 256 (ReLU) with K Dense(1) heads."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    h = layers.Dense(256, activation="relu", name="trunk_1")(inputs)
    h = layers.Dense(256, activation="relu", name="trunk_2")(h)
    outputs = {f"t{i}": layers.Dense(1, name=f"t{i}")(h) for i in range(num_tasks)}
    return model_class(inputs, outputs)


def regression_data(num_tasks, steps, batch_size=256, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = steps * batch_size
    x = rng.normal(size=(n, 64)).astype("float32")
    projections = rng.normal(size=(64, num_tasks)).astype("float32")
    targets = np.tanh(x @ projections)
    # Scales from 1 to 100: the imbalance multi-task balancing is for.
    scales = np.logspace(0, 2, num_tasks).astype("float32")
    y = {f"t{i}": (targets[:, i : i + 1] * scales[i]) for i in range(num_tasks)}
    return x, y


def restarter(model):
    """A function that puts `model` back as it is now: every variable of
    the model (its layers', its balancer's, its metrics') and of its
    optimizer. Called before each timed `fit`, it makes every sample time
    the same stretch of training from the same state, for every method:
    rounds that go on from the last one time each method at a different
    point of its own trajectory (after thousands of steps on the same few
    batches), where the values, not only the method, may set a step's
    cost."""
    import keras

    variables = list(model.variables) + list(model.optimizer.variables)
    values = [keras.ops.convert_to_numpy(v) for v in variables]

    def restart():
        for variable, value in zip(variables, values):
            variable.assign(value)

    return restart


def rotation(names, r):
    """`names` in round `r`'s order: rotated by `r`, so that every variant
    takes every place in turn over the rounds."""
    return names[r % len(names):] + names[: r % len(names)]


def time_fit_steps(models, x, y, batch_size=256, rounds=15, restart=False):
    """Per-step milliseconds of `fit` for each model, over interleaved rounds.

    Each round runs, for every model in rotating order, a `fit` epoch over
    all of `x` (S steps) and one over its first quarter (S/4 steps); one
    sample is the difference of their wall times over the difference of
    their steps: what a step costs, without what every `fit` and epoch
    costs once (data adapter, iterator, callbacks: ~45 ms on TensorFlow,
    a fifth of a 160-step epoch, the same for every model). A first,
    untimed epoch compiles each model's step. As `timeit` does, the garbage
    collector is off while a fit is timed (a collection falling in one
    variant's epoch and not another's was a large part of the noise). With
    `restart`, each timed fit starts from the state after that first epoch
    (`restarter`).
    """
    steps = len(x) // batch_size
    short = max(1, steps // 4)
    x_short = x[: short * batch_size]
    y_short = {name: value[: short * batch_size] for name, value in y.items()}
    for model in models.values():
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    restarts = {name: restarter(model) for name, model in models.items()} if restart else {}

    def timed_fit(name, xs, ys):
        model = models[name]
        if restart:
            restarts[name]()
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            model.fit(xs, ys, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
            return time.perf_counter() - start
        finally:
            gc.enable()

    samples = {name: [] for name in models}
    names = list(models)
    for r in range(rounds):
        for name in rotation(names, r):
            full = timed_fit(name, x, y)
            part = timed_fit(name, x_short, y_short)
            samples[name].append(1000 * (full - part) / (steps - short))
    return samples


def compiled_step(model, x, y, batch_size=256):
    """`run(n)`: `n` training steps of `model` on the first batch of
    `(x, y)`, through its train step compiled as `fit` compiles it (JAX:
    `jax.jit` with the state donated; TensorFlow: `tf.function` with the
    model's `jit_compile`; torch: eager), returning when the last is done.

    What `fit` adds around each step (its data iterator, callbacks, logs
    read to the host) is left out: the time is the step's own. The model
    must have been trained once (built, compiled step options set). Its
    Variables are not updated (JAX's steps run on a copy of its state).
    """
    import keras
    import numpy as np

    batch = first_batch(x, y, batch_size)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        step, state, data = jax_step(model, batch)
        box = [state]

        def run(n):
            state = box[0]
            for _ in range(n):
                _, state = step(state, data)
            box[0] = jax.block_until_ready(state)

        return run
    if backend == "tensorflow":
        import tensorflow as tf

        data = tf.nest.map_structure(tf.constant, batch)
        step = tf.function(model.train_step, reduce_retracing=True, jit_compile=model.jit_compile)

        def run(n):
            for _ in range(n):
                logs = step(data)
            tf.nest.map_structure(np.asarray, logs)

        return run
    data = tuple(keras.tree.map_structure(keras.ops.convert_to_tensor, batch))

    def run(n):
        for _ in range(n):
            model.train_step(data)

    return run


def first_batch(x, y, batch_size=256):
    """`(x, y)`'s first batch, `y` a dict of outputs."""
    return x[:batch_size], {name: value[:batch_size] for name, value in y.items()}


def jax_step(model, batch):
    """`(step, state, data)`: the model's train step jitted as Keras's JAX
    trainer jits it (the state donated), a copy of the model's state (the
    donated buffers must not be the model's own) and `batch` as JAX arrays."""
    import jax
    import jax.numpy as jnp

    groups = (model.trainable_variables, model.non_trainable_variables,
              model.optimizer.variables, model.metrics_variables)
    state = tuple([jnp.array(v.value, copy=True) for v in group] for group in groups)
    data = jax.tree_util.tree_map(jnp.asarray, batch)
    return jax.jit(model.train_step, donate_argnums=0), state, data


def pin_to_cores(cores):
    """Keeps this process on its first `cores` CPUs (0: all). Call before
    the backend is imported: TensorFlow's, XLA's and torch's thread pools
    are sized from the CPUs a process may use when they start."""
    if cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))


def time_compiled_steps(runs, rounds=25, steps=50):
    """Interleaved rounds (rotating order) of `steps` calls of each
    `runs[name](steps)` after two untimed warm-up calls; returns
    {name: [microseconds per step, one per round]}."""
    for run in runs.values():
        run(2)
        run(steps)
    samples = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in rotation(names, r):
            start = time.perf_counter()
            runs[name](steps)
            samples[name].append(1e6 * (time.perf_counter() - start) / steps)
    return samples


def summarize(samples, baseline):
    """Median ms per step and the ratio of medians to `baseline`."""
    base = statistics.median(samples[baseline])
    return {
        name: {"median_ms": statistics.median(values), "ratio": statistics.median(values) / base}
        for name, values in samples.items()
    }


def paired_ratios(rounds, baseline, confidence=0.9):
    """The median over rounds of each variant's time over the baseline's
    in the same round, with a distribution-free confidence interval of that
    median (order statistics of the ratios; binomial coverage >= confidence).

    A ratio within one round compares two variants timed minutes apart at
    most, so a change of the machine's load between rounds, which moves a
    ratio of pooled medians, cancels out.

    Args:
        rounds: {variant: [one time per round]}, every list in round order.
        baseline: the variant the others are divided by.
    """
    base = rounds[baseline]
    n = len(base)
    # The widest j with P(Binomial(n, 1/2) < j) <= (1 - confidence) / 2:
    # the interval [r_(j), r_(n + 1 - j)] covers the median with
    # probability >= confidence.
    tail, j = 0.0, 0
    while j < n // 2:
        tail += math.comb(n, j) / 2**n
        if tail > (1 - confidence) / 2:
            break
        j += 1
    result = {}
    for name, values in rounds.items():
        ratios = sorted(v / b for v, b in zip(values, base))
        low, high = (ratios[j - 1], ratios[n - j]) if j > 0 else (ratios[0], ratios[-1])
        result[name] = {
            "median_ms": statistics.median(values),
            "ratio": statistics.median(ratios),
            "low": low,
            "high": high,
        }
    return result


def markdown_table(corner, headings, rows):
    """The lines of a markdown table: `corner` heads the first column,
    `headings` the others; `rows` are `(name, cells)` pairs."""
    lines = [f"| {corner} | " + " | ".join(headings) + " |", "|---|" + "---|" * len(headings)]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return lines


def paired_cell(entry):
    """A `paired_ratios` entry as a table cell: `median: ratio [low, high]`."""
    return (f"{entry['median_ms']:.0f}: {entry['ratio']:.3f} "
            f"[{entry['low']:.3f}, {entry['high']:.3f}]")


def report(text, out=None):
    """Prints a script's table, and writes it to `out` when given."""
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def run_worker(script, args, label, **env):
    """Runs `script --worker ARGS` in a fresh process with `env` added to
    the environment; returns the JSON its last line prints."""
    print(f"[{label}] running {os.path.basename(script)} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(
        [sys.executable, script, "--worker", *args],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env), capture_output=True, text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{label}: {script} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_per_backend(script, args, backends=BACKENDS):
    """Runs `script --worker ARGS` once per backend; returns {backend: json}."""
    return {
        backend: run_worker(script, args, backend, KERAS_BACKEND=backend) for backend in backends
    }


def machine_line():
    return (
        f"{date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}"
    )
