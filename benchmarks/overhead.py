"""Step time of MultiLossModel (static weights) against keras.Model with the
same compile, per backend: MLP 64->256->256 with K Dense(1) heads, batch
256, K = 2 and 8. Goal: ratio <= 1.05.

MultiLossModel is timed twice: with the default `nonfinite="raise"` (a step
whose loss or gradient is not finite is skipped, which Keras does not do)
and with `nonfinite="ignore"` (Keras's own behaviour), so the guard's cost
shows on its own. A second, identical `keras.Model` gives the run's noise
floor (its ratio would be 1.000 on a quiet machine).

    python benchmarks/overhead.py                # all three backends
    python benchmarks/overhead.py --rounds 21 --out benchmarks/results/overhead.md
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def worker(args):
    import keras

    import multiloss

    results = {}
    for k in args.tasks:
        x, y = common.regression_data(k, steps=args.steps)
        models = {}
        variants = (
            ("keras.Model", keras.Model, {}),
            ("MultiLossModel", multiloss.MultiLossModel, {}),
            ("ignore", multiloss.MultiLossModel, {"nonfinite": "ignore"}),
            ("keras.Model again", keras.Model, {}),
        )
        for name, cls, options in variants:
            model = common.mlp_with_heads(cls, k)
            model.compile(keras.optimizers.Adam(1e-3), loss="mse", **options)
            models[name] = model
        samples = common.time_fit_steps(models, x, y, rounds=args.rounds)
        results[str(k)] = common.summarize(samples, baseline="keras.Model")
    print(json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=160, help="steps of the longer timed fit (the shorter has a quarter)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--backends", nargs="+", default=list(common.BACKENDS))
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    passthrough = ["--tasks", *map(str, args.tasks), "--steps", str(args.steps), "--rounds", str(args.rounds)]
    results = common.run_per_backend(os.path.abspath(__file__), passthrough, args.backends)
    lines = [
        f"Measured {common.machine_line()}; median ms per training step over "
        f"{args.rounds} interleaved rounds, each a {args.steps}-step and a "
        f"{args.steps // 4}-step `fit` per model (a step: the difference of their times "
        "over the difference of their steps, without `fit`'s fixed costs).",
        "",
        "| backend | K | keras.Model ms | MultiLossModel ms | ratio | "
        "nonfinite='ignore' ms | ratio | keras.Model again (noise) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, per_k in results.items():
        for k, row in per_k.items():
            lines.append(
                f"| {backend} | {k} | {row['keras.Model']['median_ms']:.2f} | "
                f"{row['MultiLossModel']['median_ms']:.2f} | {row['MultiLossModel']['ratio']:.3f} | "
                f"{row['ignore']['median_ms']:.2f} | {row['ignore']['ratio']:.3f} | "
                f"{row['keras.Model again']['ratio']:.3f} |"
            )
    table = "\n".join(lines)
    common.report(table, args.out)


if __name__ == "__main__":
    main()
