"""What a step pays when its loss weights read the step's own losses, in
plain JAX: no Keras, no multiloss.

The Foundation benchmark model (MLP 64->256->256 ReLU, K Dense(1) heads,
batch 256, MSE per head, Adam) written as one `jax.jit` train step, in
three variants that differ only in the weights of `sum_k w_k L_k`:

- `static`: constants;
- `loss_dependent`: the constants plus 0 x the step's losses (stop-gradient):
  the same update, but the backward pass now waits for the K loss
  reductions, as it does for FAMO, STCH, GeometricMean or ScaleNormalized;
- `inverse_loss`: `c_k / L_k` (stop-gradient), the simplest real rule of
  that kind.

Each is timed as `weighting_overhead.py --compiled-step` times multiloss's
step (interleaved rounds, paired ratios), on every core of the machine and
again on one core (`os.sched_setaffinity`, set before JAX starts). The
ratios show what the same work costs in a step with no library code: on
one core the variants are within about 1% of each other; with more cores,
XLA runs a step's independent kernels side by side, and a backward pass
that waits for the losses gets another schedule, which can cost or save
several per cent on a step this small (BENCHMARKS.md, section 2, run 19).

    python benchmarks/plain_jax_loss_dependency.py
    python benchmarks/plain_jax_loss_dependency.py --tasks 8 --rounds 41
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

VARIANTS = ("static", "loss_dependent", "inverse_loss")


def _steps(k, batch_size=256, seed=0):
    """{variant: run(n)}: one jitted Adam step per variant, each with its own
    copy of the same initial parameters."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    x, y = common.regression_data(k, steps=1, batch_size=batch_size, seed=seed)
    x = jnp.asarray(x)
    targets = [jnp.asarray(y[f"t{i}"]) for i in range(k)]
    rng = np.random.default_rng(seed)

    def dense(fan_in, fan_out):
        limit = np.sqrt(6.0 / (fan_in + fan_out))  # Keras's glorot_uniform
        kernel = rng.uniform(-limit, limit, (fan_in, fan_out)).astype("float32")
        return [kernel, np.zeros(fan_out, "float32")]

    initial = [dense(64, 256), dense(256, 256)] + [dense(256, 1) for _ in range(k)]
    constants = jnp.ones(k)

    def task_losses(params):
        h = x
        for kernel, bias in params[:2]:
            h = jax.nn.relu(h @ kernel + bias)
        return jnp.stack([
            jnp.mean(jnp.mean(jnp.square(h @ kernel + bias - target), axis=-1))
            for (kernel, bias), target in zip(params[2:], targets)
        ])

    weight_rules = {
        "static": lambda losses: constants,
        "loss_dependent": lambda losses: constants + 0.0 * losses,
        "inverse_loss": lambda losses: constants / (losses + 1e-8),
    }

    def make(rule):
        def total(params):
            losses = task_losses(params)
            weights = jax.lax.stop_gradient(rule(jax.lax.stop_gradient(losses)))
            return jnp.sum(weights * losses), losses

        def step(state):
            params, m, v, t = state
            grads, losses = jax.grad(total, has_aux=True)(params)
            t = t + 1
            # Keras's Adam: learning rate 1e-3, beta 0.9 / 0.999, epsilon 1e-7.
            lr = 1e-3 * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
            m = jax.tree_util.tree_map(lambda m, g: m + (g - m) * 0.1, m, grads)
            v = jax.tree_util.tree_map(lambda v, g: v + (g * g - v) * 0.001, v, grads)
            params = jax.tree_util.tree_map(
                lambda p, m, v: p - lr * m / (jnp.sqrt(v) + 1e-7), params, m, v
            )
            return (params, m, v, t), losses

        jitted = jax.jit(step, donate_argnums=0)
        params = jax.tree_util.tree_map(jnp.asarray, initial)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        box = [(params, zeros, jax.tree_util.tree_map(jnp.zeros_like, params), jnp.float32(0))]

        def run(n):
            state = box[0]
            for _ in range(n):
                state, _ = jitted(state)
            box[0] = jax.block_until_ready(state)

        return run

    return {name: make(weight_rules[name]) for name in VARIANTS}


def worker(args):
    common.pin_to_cores(args.cores)
    results = {}
    for k in args.tasks:
        samples = common.time_compiled_steps(_steps(k), rounds=args.rounds)
        results[str(k)] = common.paired_ratios(samples, baseline="static")
    print(json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cores", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    available = len(os.sched_getaffinity(0))
    settings = [available, 1] if available > 1 else [1]
    results = {
        cores: common.run_worker(
            os.path.abspath(__file__),
            ["--cores", str(cores), "--tasks", *map(str, args.tasks), "--rounds", str(args.rounds)],
            f"jax, {cores} core(s)", JAX_PLATFORMS="cpu",
        )
        for cores in settings
    }
    columns = [(cores, k) for cores in results for k in results[cores]]
    lines = [
        f"Measured {common.machine_line()}: plain JAX, {args.rounds} interleaved rounds of "
        "50 jitted steps per variant. Each cell: the median us per step, then the median "
        "over rounds of the round's ratio to `static` with a 90% confidence interval of it.",
        "",
    ]
    lines += common.markdown_table(
        "variant",
        [f"{c} core(s), K={k}" for c, k in columns],
        [(name, [common.paired_cell(results[cores][k][name]) for cores, k in columns])
         for name in VARIANTS],
    )
    common.report("\n".join(lines), args.out)
    return None


if __name__ == "__main__":
    main()
