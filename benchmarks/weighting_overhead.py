"""Step time of each loss-level balancer against `Static`, per backend: the
Foundation benchmark model (MLP 64->256->256 with K Dense(1) heads), batch
256, K = 2 and 8. Goal: ratio <= 1.05.

All variants of one K are timed in the same process, interleaved (every
variant once per round, in rotating order); the table gives the median ms
per step and the ratio of medians to Static, and the paired columns the
median over rounds of each round's ratio to Static, with a 90% confidence
interval of it (`common.paired_ratios`).

    python benchmarks/weighting_overhead.py                 # all three backends
    python benchmarks/weighting_overhead.py --rounds 21 --out benchmarks/results/weighting_overhead.md
    python benchmarks/weighting_overhead.py --combine-cost  # the balancer alone, eager
    python benchmarks/weighting_overhead.py --compiled-step  # the step alone, outside fit
    python benchmarks/weighting_overhead.py --compiled-step --cores 1  # ... on one core
    python benchmarks/weighting_overhead.py --backends jax --tasks 8 --methods \
        static_again loss_dependent famo famo_state_only famo_lagged  # FAMO by parts
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

METHODS = (
    "static",
    "static_again",  # a second Static model: the ratio shows the noise floor
    "loss_dependent",  # Static's weights made to depend on this step's losses (a control)
    "uncertainty",
    "imtl_l",
    "dwa",
    "rlw",
    "geometric_mean",
    "scale_normalized",
    "famo",
    "stch",
    "metric_driven",
)


def _loss_dependent():
    """Static's weights plus 0 x this step's losses: the same update as
    Static, but the backward pass now waits for the losses' values, as it
    does for every method whose weights depend on them (FAMO, STCH,
    GeometricMean, ScaleNormalized). Its ratio is what that dependency costs
    by itself."""
    from keras import ops

    from multiloss import weighting as W

    class LossDependent(W.Static):
        def combine(self, losses, training=True):
            _, weights = super().combine(losses, training)
            weights = weights + 0.0 * ops.stop_gradient(losses)
            return ops.sum(ops.stop_gradient(weights) * losses), weights

    return LossDependent()


# Not run by default: FAMO taken apart, to see where its step time goes.
FAMO_PARTS = ("famo_state_only", "famo_lagged")


def _famo_part(name):
    """`famo_state_only`: FAMO's update runs and is stored, the weights are
    Static's: what the update costs off the backward pass's path.
    `famo_lagged`: the weights `c z / D` with `z` as the previous update
    left it (not FAMO's order), so that one normalisation of this step's
    losses, not an Adam step and a softmax too, stands between the forward
    and backward passes."""
    from keras import ops

    from multiloss import weighting as W

    class FamoStateOnly(W.FAMO):
        def _rule(self, losses, fixed, training):
            super()._rule(losses, fixed, training)
            weights = fixed / ops.sum(fixed)
            return ops.sum(ops.stop_gradient(weights) * losses), weights

    class FamoLagged(W.FAMO):
        def _update(self, log_d):
            # A copy: torch assigns a Variable in place.
            before = self.state.value[1] * 1.0
            super()._update(log_d)
            return before

    return {"famo_state_only": FamoStateOnly, "famo_lagged": FamoLagged}[name]()


def _balancer(name):
    from multiloss import weighting as W

    if name == "static_again":
        return "static"
    if name == "loss_dependent":
        return _loss_dependent()
    if name in FAMO_PARTS:
        return _famo_part(name)
    if name == "metric_driven":
        # No validation data in the benchmark: the rule reads the training logs.
        return W.MetricDriven(monitor="{task}_loss")
    if name == "rlw":
        return W.RLW(seed=0)
    return name


def time_steps(models, x, y, batch_size=256, rounds=15, restart=False):
    """One epoch of every model per round, in rotating order, after an
    untimed compiling epoch, recording three samples per epoch: its wall
    time over its steps (`epoch`), the intervals between consecutive batch
    ends (`step`; each callback syncs, JAX's asynchronous dispatch
    included), and the process's CPU time per step over the epoch (`cpu`,
    all threads). The median of the intervals shrugs off the moments
    another process takes the CPU, and CPU time does not count them at all;
    the epoch figures include `fit`'s per-call work and the epoch hooks
    (`common.time_fit_steps`, the `fit` column, leaves them out). With
    `restart`, every timed epoch starts from the state after the compiling
    one (`common.restarter`).
    """
    import keras

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    steps = len(x) // batch_size
    for model in models.values():
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    restarts = {name: common.restarter(model) for name, model in models.items()} if restart else {}
    epoch = {name: [] for name in models}
    step = {name: [] for name in models}
    step_rounds = {name: [] for name in models}
    cpu = {name: [] for name in models}
    names = list(models)
    for r in range(rounds):
        for name in common.rotation(names, r):
            if restart:
                restarts[name]()
            timer = StepTimes()
            start, start_cpu = time.perf_counter(), time.process_time()
            models[name].fit(
                x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False, callbacks=[timer]
            )
            epoch[name].append(1000 * (time.perf_counter() - start) / steps)
            cpu[name].append(1000 * (time.process_time() - start_cpu) / steps)
            intervals = [1000 * (b - a) for a, b in zip(timer.ends, timer.ends[1:])]
            step[name].extend(intervals)
            step_rounds[name].append(statistics.median(intervals))
    return {"step": step, "epoch": epoch, "cpu": cpu}, step_rounds


def _models(k, methods):
    """The benchmark model with K heads, compiled with each method."""
    import keras

    import multiloss

    models = {}
    for name in methods:
        model = common.mlp_with_heads(multiloss.MultiLossModel, k)
        model.compile(keras.optimizers.Adam(1e-3), loss="mse", balancer=_balancer(name))
        models[name] = model
    return models


def worker(args):
    results = {}
    for k in args.tasks:
        x, y = common.regression_data(k, steps=args.steps)
        models = _models(k, args.methods)
        restart = not args.continue_training
        samples, step_rounds = time_steps(models, x, y, rounds=args.rounds, restart=restart)
        paired = {"step_paired": common.paired_ratios(step_rounds, baseline="static")}
        if args.fit_steps:
            # As overhead.py times a step: no callback, no sync per batch.
            x_fit, y_fit = common.regression_data(k, steps=args.fit_steps)
            samples["fit"] = common.time_fit_steps(
                models, x_fit, y_fit, rounds=args.fit_rounds, restart=restart
            )
            paired["fit_paired"] = common.paired_ratios(samples["fit"], baseline="static")
        results[str(k)] = {
            kind: common.summarize(values, baseline="static") for kind, values in samples.items()
        }
        results[str(k)].update(paired)
        base_q25 = _quantile(samples["step"]["static"], 0.25)
        results[str(k)]["step_q25"] = {
            name: {"median_ms": _quantile(v, 0.25), "ratio": _quantile(v, 0.25) / base_q25}
            for name, v in samples["step"].items()
        }
    print(json.dumps(results))


def combine_cost(args):
    """CPU microseconds of one eager `combine(losses, training=True)` per
    method: what an eager step (torch's) pays for the balancer itself.
    TensorFlow and JAX compile it into the step, where it costs less. On
    torch the losses require a gradient, as in a step, where the operations
    on them are also recorded for the backward pass (runs 25 and 31 of
    BENCHMARKS.md: FAMO 88 us without, 98 with)."""
    import keras
    import numpy as np

    import multiloss

    results = {}
    for k in args.tasks:
        losses = keras.ops.convert_to_tensor(np.linspace(0.5, 2.0, k).astype("float32"))
        if keras.backend.backend() == "torch":
            losses.requires_grad_(True)
        balancers = {}
        for name in args.methods:
            balancer = multiloss.balancer.get(_balancer(name))
            balancer.setup([f"t{i}" for i in range(k)])
            balancers[name] = balancer
        samples = {name: [] for name in balancers}
        for r in range(args.rounds):
            for name, balancer in balancers.items():
                start = time.process_time()
                for _ in range(200):
                    balancer.combine(losses, training=True)
                samples[name].append(1e6 * (time.process_time() - start) / 200)
        results[str(k)] = {name: sorted(v)[len(v) // 2] for name, v in samples.items()}
    print(json.dumps(results))


def compiled_step_cost(args):
    """Microseconds per compiled train step, outside `fit`
    (`common.compiled_step`): the step's own time, without the per-batch
    work of `fit`, which every method pays alike and which dilutes a
    ratio. With `--cores`, on that many cores only."""
    common.pin_to_cores(args.cores)
    results = {}
    for k in args.tasks:
        batch = args.batch_size
        x, y = common.regression_data(k, steps=1, batch_size=batch)
        runs = {}
        for name, model in _models(k, args.methods).items():
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
            runs[name] = common.compiled_step(model, x, y, batch_size=batch)
        samples = common.time_compiled_steps(runs, rounds=args.rounds)
        results[str(k)] = common.paired_ratios(samples, baseline="static")
    print(json.dumps(results))


def compiled_step_table(results, args):
    lines = [
        f"Measured {common.machine_line()}: {args.rounds} interleaved rounds of 50 "
        f"compiled train steps per method on one batch of {args.batch_size}, outside `fit` "
        f"(`common.compiled_step`), on {args.cores or 'all'} core(s). Each cell: the "
        "median us per step, then the median over rounds of the round's ratio to "
        "`static` with a 90% confidence interval of it.",
        "",
    ]
    lines += common.markdown_table(
        "method",
        [f"{b} K={k}" for b in results for k in results[b]],
        [(name, [common.paired_cell(per_k[k][name]) for per_k in results.values() for k in per_k])
         for name in args.methods],
    )
    return "\n".join(lines)


def combine_cost_table(results, args):
    ks = [str(k) for k in args.tasks]
    lines = [
        f"Measured {common.machine_line()}: CPU microseconds of one eager "
        f"`combine(losses, training=True)`, median of {args.rounds} rounds of 200 calls.",
        "",
    ]
    lines += common.markdown_table(
        "method",
        [f"{b} K={k}" for b in results for k in ks],
        [(name, [f"{results[b][k][name]:.0f}" for b in results for k in ks])
         for name in args.methods],
    )
    return "\n".join(lines)


def _quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _cell(entry):
    if "low" in entry:
        return f"{entry['ratio']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"
    return f"{entry['median_ms']:.2f} ({entry['ratio']:.3f})"


def table(results, args):
    kinds = (("fit", "fit step"), ("fit_paired", "fit step, paired")) if args.fit_steps else ()
    kinds += (
        ("step", "step median"),
        ("step_paired", "step, paired"),
        ("step_q25", "step q25"),
        ("cpu", "CPU/step"),
        ("epoch", "epoch/steps"),
    )
    lines = [
        f"Measured {common.machine_line()}: {args.rounds} interleaved rounds of "
        f"one {args.steps}-step `fit` epoch per method (batch 256). Each cell: "
        "ms per step, and in brackets the ratio to `static` of the same run. "
        + ("Every timed `fit` continues where the last one ended." if args.continue_training
           else "Every timed `fit` starts from the state after an untimed first epoch "
                "(weights, balancer, optimizer): the same stretch of training each time."),
        "",
        *([f"- fit step: as `benchmarks/overhead.py` times a step ({args.fit_rounds} "
           f"rounds of a {args.fit_steps}-step and a {args.fit_steps // 4}-step `fit` per "
           "method, no callback: the difference of their times over the difference of "
           "their steps);"] if args.fit_steps else []),
        "- fit step, paired / step, paired: per round, the method's figure over "
        "`static`'s of the same round (its median interval for `step`); the median "
        "of those ratios over the rounds and, in brackets, a 90% confidence interval "
        "of that median (order statistics): a change of the machine's load between "
        "rounds cancels out;",
        "- step median / step q25: the median / lower quartile of the intervals "
        "between consecutive batch ends (a callback syncs each step, JAX "
        "included); moments when another process holds the CPU land in the "
        "upper quantiles;",
        "- CPU/step: the process's CPU time (all threads) over the epoch, per step;",
        "- epoch/steps: an epoch's wall time per step (includes `fit`'s per-call "
        "work and the epoch hooks);",
        "- `static_again` is a second, identical Static model: its ratio is the "
        "noise floor of the run;",
        "- `loss_dependent` is Static with its weights made to depend on the step's "
        "losses (plus 0 x the losses): what that dependency costs by itself, which "
        "every method whose weights depend on the current losses pays too.",
    ]
    for backend, per_k in results.items():
        for k, per_kind in per_k.items():
            lines += [
                "",
                f"**{backend}, K={k}**",
                "",
            ]
            lines += common.markdown_table(
                "method",
                [title for _, title in kinds],
                [(name, [_cell(per_kind[kind][name]) for kind, _ in kinds])
                 for name in args.methods],
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=40, help="steps per timed epoch")
    parser.add_argument("--rounds", type=int, help="default: 15; 25 with --compiled-step")
    parser.add_argument("--fit-steps", type=int, default=160,
                        help="steps of the longer fit of the `fit step` column (0: no column)")
    parser.add_argument("--fit-rounds", type=int, default=9)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument(
        "--continue-training", action="store_true",
        help="time each round where the last one left off (default: every timed fit "
             "starts from the state after the compiling epoch)",
    )
    parser.add_argument("--backends", nargs="+", default=list(common.BACKENDS))
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument(
        "--combine-cost", action="store_true",
        help="time one eager combine() per method instead of training steps",
    )
    parser.add_argument(
        "--compiled-step", action="store_true",
        help="time the compiled train step alone, outside fit (default rounds: 25)",
    )
    parser.add_argument(
        "--cores", type=int, default=0,
        help="with --compiled-step: run on this many cores only (default: all)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=256,
        help="with --compiled-step: the batch size (default: the benchmark's 256)",
    )
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 25 if args.compiled_step else 15
    if "static" not in args.methods:
        args.methods = ["static", *args.methods]
    if args.worker:
        if args.compiled_step:
            return compiled_step_cost(args)
        return combine_cost(args) if args.combine_cost else worker(args)
    if args.compiled_step:
        passthrough = ["--compiled-step", "--cores", str(args.cores),
                       "--batch-size", str(args.batch_size), "--tasks", *map(str, args.tasks),
                       "--rounds", str(args.rounds), "--methods", *args.methods]
        render = compiled_step_table
    elif args.combine_cost:
        passthrough = ["--combine-cost", "--tasks", *map(str, args.tasks),
                       "--rounds", str(args.rounds), "--methods", *args.methods]
        render = combine_cost_table
    else:
        passthrough = [
            "--tasks", *map(str, args.tasks), "--steps", str(args.steps),
            "--rounds", str(args.rounds), "--methods", *args.methods,
            "--fit-steps", str(args.fit_steps), "--fit-rounds", str(args.fit_rounds),
            *(["--continue-training"] if args.continue_training else []),
        ]
        render = table
    results = common.run_per_backend(os.path.abspath(__file__), passthrough, args.backends)
    common.report(render(results, args), args.out)
    return None


if __name__ == "__main__":
    main()
