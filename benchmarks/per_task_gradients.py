"""How to get K per-task gradients fastest, per backend: the measurement
behind the engine's choices.

Model: MLP 64->256->256 (ReLU) with K Dense(1) heads, batch 256, MSE. Each
variant computes the K task gradients of all variables (or, for the
baseline, the gradient of the summed loss), compiled where the backend
compiles. Median ms per call over interleaved rounds.

    python benchmarks/per_task_gradients.py --out benchmarks/results/per_task_gradients.md
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _setup(k):
    import keras
    import numpy as np

    model = common.mlp_with_heads(keras.Model, k)
    x, y = common.regression_data(k, steps=1)
    targets = np.concatenate([y[f"t{i}"] for i in range(k)], axis=1)
    return model, x, targets


def _variants_tensorflow(model, x, targets, k):
    import tensorflow as tf

    variables = model.trainable_variables
    x, targets = tf.constant(x), tf.constant(targets)

    def task_losses():
        pred = model(x)
        return [tf.reduce_mean((pred[f"t{i}"][:, 0] - targets[:, i]) ** 2) for i in range(k)]

    @tf.function
    def summed():
        with tf.GradientTape() as tape:
            total = tf.add_n(task_losses())
        return tape.gradient(total, variables)

    @tf.function
    def loop():
        with tf.GradientTape(persistent=True) as tape:
            losses = task_losses()
        return [tape.gradient(loss, variables) for loss in losses]

    @tf.function
    def jacobian():
        with tf.GradientTape() as tape:
            losses = tf.stack(task_losses())
        return tape.jacobian(losses, variables)

    return {"summed loss": summed, "loop of K tape.gradient": loop, "tape.jacobian (pfor)": jacobian}


def _variants_jax(model, x, targets, k):
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def task_losses(values):
        pred, _ = model.stateless_call(values, non_trainable, x)
        return jnp.stack([jnp.mean((pred[f"t{i}"][:, 0] - targets[:, i]) ** 2) for i in range(k)])

    summed = jax.jit(lambda v: jax.grad(lambda w: jnp.sum(task_losses(w)))(v))

    @jax.jit
    def vmap_vjp(values):
        _, vjp = jax.vjp(task_losses, values)
        return jax.vmap(vjp)(jnp.eye(k))

    @jax.jit
    def loop(values):
        _, vjp = jax.vjp(task_losses, values)
        return [vjp(jnp.eye(k)[i]) for i in range(k)]

    @jax.jit
    def per_task_grad(values):
        # The engine's form: each task's backward pass starts from its own
        # loss, so it skips the other tasks' heads (symbolic zeros).
        return [jax.grad(lambda w, i=i: task_losses(w)[i])(values) for i in range(k)]

    return {
        "summed loss": lambda: jax.block_until_ready(summed(trainable)),
        "vmap of vjp": lambda: jax.block_until_ready(vmap_vjp(trainable)),
        "loop of K vjp": lambda: jax.block_until_ready(loop(trainable)),
        "K jax.grad (engine)": lambda: jax.block_until_ready(per_task_grad(trainable)),
    }


def _variants_torch(model, x, targets, k):
    import torch

    values = [v.value for v in model.trainable_variables]
    x, targets = torch.tensor(x), torch.tensor(targets)

    def task_losses():
        pred = model(x)
        return [torch.mean((pred[f"t{i}"][:, 0] - targets[:, i]) ** 2) for i in range(k)]

    def summed():
        return torch.autograd.grad(sum(task_losses()), values, allow_unused=True)

    def loop():
        losses = task_losses()
        return [torch.autograd.grad(loss, values, retain_graph=True, allow_unused=True)
                for loss in losses]

    def batched():
        losses = torch.stack(task_losses())
        return torch.autograd.grad(losses, values, torch.eye(k), is_grads_batched=True,
                                   allow_unused=True, materialize_grads=True)

    return {"summed loss": summed, "loop of K autograd.grad": loop,
            "is_grads_batched": batched}


def worker(args):
    import keras

    backend = keras.backend.backend()
    results = {}
    for k in args.tasks:
        model, x, targets = _setup(k)
        variants = globals()[f"_variants_{backend}"](model, x, targets, k)
        for fn in variants.values():  # compile
            fn()
        samples = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.rounds):
            for name in common.rotation(names, r):
                start = time.perf_counter()
                for _ in range(args.calls):
                    variants[name]()
                samples[name].append(1000 * (time.perf_counter() - start) / args.calls)
        base = statistics.median(samples["summed loss"])
        results[str(k)] = {
            name: {"median_ms": statistics.median(v), "ratio": statistics.median(v) / base}
            for name, v in samples.items()
        }
    print(json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--backends", nargs="+", default=list(common.BACKENDS))
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    passthrough = ["--tasks", *map(str, args.tasks), "--calls", str(args.calls),
                   "--rounds", str(args.rounds)]
    results = common.run_per_backend(os.path.abspath(__file__), passthrough, args.backends)
    lines = [
        f"Measured {common.machine_line()}; median ms per call over {args.rounds} interleaved "
        f"rounds of {args.calls} calls; ratio to the summed-loss gradient.",
        "",
        "| backend | K | variant | ms | ratio |",
        "|---|---|---|---|---|",
    ]
    for backend, per_k in results.items():
        for k, rows in per_k.items():
            for name, row in rows.items():
                lines.append(f"| {backend} | {k} | {name} | {row['median_ms']:.2f} | {row['ratio']:.2f} |")
    table = "\n".join(lines)
    common.report(table, args.out)


if __name__ == "__main__":
    main()
