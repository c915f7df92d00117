"""Step time of each balancer over the summed-loss step, per backend.

MLP 64->256->256 with K Dense(1) heads, batch 256, K = 2 and 8. The
denominator is plain `keras.Model` training on the summed loss. When the
optional peer `torchjd` is installed, the torch run also times torchjd's
`mtl_backward` + `jac_to_grad` with UPGrad and MGDA on the same MLP (in
plain torch), over a plain torch summed-loss step, in the same run.
Goals: parameter level <= 0.9x torchjd's ratio; representation level
<= 1.5 at K = 8.

    python benchmarks/perf.py --out benchmarks/results/perf.md
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# Static weights, then every gradient-level balancer (`--methods` narrows).
METHODS = ("static", "sum", "mgda", "pcgrad", "upgrad", "aggregators")
REPRESENTATION = ("mgda", "upgrad")


def _keras_models(k, methods):
    import keras

    import multiloss

    models = {}
    baseline = common.mlp_with_heads(keras.Model, k)
    baseline.compile(keras.optimizers.SGD(1e-3), loss="mse")
    models["keras sum"] = baseline
    available = set(multiloss.balancer.available())
    if "aggregators" in methods:
        from multiloss import aggregators

        methods = [m for m in methods if m != "aggregators"]
        methods += [
            alias for alias in sorted(available)
            if isinstance(multiloss.balancer.get(alias), aggregators.Aggregator)
            and alias not in methods
        ]
    for method in methods:
        if method not in available:
            raise SystemExit(f"Unknown method {method!r}; valid names: {sorted(available)}")
        model = common.mlp_with_heads(multiloss.MultiLossModel, k)
        model.compile(keras.optimizers.SGD(1e-3), loss="mse", balancer=method)
        models[method] = model
    for method in REPRESENTATION:
        if method not in available:
            continue
        model = common.mlp_with_heads(multiloss.MultiLossModel, k)
        model.compile(keras.optimizers.SGD(1e-3), loss="mse", balancer=method,
                      representation="trunk_2")
        models[f"{method} (representation)"] = model
    return models


def _torchjd_samples(k, steps, rounds):
    """Per-step ms of plain torch summed-loss training and of torchjd's
    UPGrad and MGDA, on the same MLP, interleaved."""
    try:
        import torchjd  # noqa: F401
        from torchjd.aggregation import MGDA, UPGrad
        from torchjd.autojac import jac_to_grad, mtl_backward
    except ImportError:
        return None
    import torch

    torch.manual_seed(0)
    x, y = common.regression_data(k, steps=steps)
    x = torch.tensor(x)
    targets = torch.tensor(__import__("numpy").concatenate([y[f"t{i}"] for i in range(k)], axis=1))
    trunk = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU()
    )
    heads = torch.nn.ModuleList([torch.nn.Linear(256, 1) for _ in range(k)])
    shared = list(trunk.parameters())
    optimizer = torch.optim.SGD([*shared, *heads.parameters()], lr=1e-3)

    def losses_for(xb, yb):
        features = trunk(xb)
        return features, [torch.mean((head(features)[:, 0] - yb[:, i]) ** 2)
                          for i, head in enumerate(heads)]

    def summed(xb, yb):
        optimizer.zero_grad()
        _, losses = losses_for(xb, yb)
        sum(losses).backward()
        optimizer.step()

    def jd(aggregator):
        def step(xb, yb):
            optimizer.zero_grad()
            features, losses = losses_for(xb, yb)
            mtl_backward(losses, features)
            jac_to_grad(shared, aggregator)
            optimizer.step()
        return step

    variants = {"torch sum": summed, "torchjd upgrad": jd(UPGrad()), "torchjd mgda": jd(MGDA())}
    samples = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds + 1):
        for name in common.rotation(names, r):
            start = time.perf_counter()
            for s in range(steps):
                cut = slice(s * 256, (s + 1) * 256)
                variants[name](x[cut], targets[cut])
            if r > 0:  # the first round warms up
                samples[name].append(1000 * (time.perf_counter() - start) / steps)
    return samples


def worker(args):
    import keras

    results = {}
    for k in args.tasks:
        x, y = common.regression_data(k, steps=args.steps)
        samples = common.time_fit_steps(_keras_models(k, args.methods), x, y,
                                        rounds=args.rounds)
        row = common.summarize(samples, baseline="keras sum")
        if keras.backend.backend() == "torch":
            jd = _torchjd_samples(k, args.steps, args.rounds)
            if jd is not None:
                row.update(common.summarize(jd, baseline="torch sum"))
        results[str(k)] = row
    print(json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help="balancer aliases; 'aggregators' means all of them")
    parser.add_argument("--backends", nargs="+", default=list(common.BACKENDS))
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    passthrough = ["--tasks", *map(str, args.tasks), "--steps", str(args.steps),
                   "--rounds", str(args.rounds), "--methods", *args.methods]
    results = common.run_per_backend(os.path.abspath(__file__), passthrough, args.backends)
    lines = [
        f"Measured {common.machine_line()}; median ms per training step over {args.rounds} "
        f"interleaved rounds of {args.steps} steps; ratio = median over the summed-loss "
        "step's median (keras.Model, or plain torch for torchjd's rows).",
        "",
        "| backend | K | method | ms/step | ratio |",
        "|---|---|---|---|---|",
    ]
    for backend, per_k in results.items():
        for k, rows in per_k.items():
            for name, row in rows.items():
                lines.append(
                    f"| {backend} | {k} | {name} | {row['median_ms']:.2f} | {row['ratio']:.2f} |"
                )
    table = "\n".join(lines)
    common.report(table, args.out)


if __name__ == "__main__":
    main()
