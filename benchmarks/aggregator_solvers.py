"""Solver benchmark: time to compute each aggregator's weights, compiled, on
CPU, for K = 8 and K = 128 tasks with P = 100,000 parameters, per Keras
backend, side by side with torchjd's solvers (when torchjd is installed).

Two timings per aggregator and backend (medians):

- "weights": from the (K, K) Gram matrix to the (K,) weights, the solver
  alone (`gram_weights` inside a `keras.StatelessScope`, state in and out,
  as in the training step). The Gram matrix is NOT included. This is what
  the goals (<= 0.5 ms at K = 8, <= 10 ms at K = 128) are about.
- "from J": from the (K, P) matrix of task gradients to the (P,) direction:
  Gram matrix (K x P x K), weights, and the combination `sum_k w_k g_k`. The
  Gram matrix alone is timed too ("gram" row). GradDrop and DB-MTL, which
  need the gradients themselves, have only this timing.

"Compiled" is `multiloss.engine.jit`: tf.function, jax.jit; torch runs
eagerly (as Keras's torch trainer does without `jit_compile=True`).

torchjd's weightings are timed on the same Gram matrices (their `Weighting`
classes take the Gramian; NashMTL, ConFIG and GradDrop take the matrix).
Their solvers run on the CPU in numpy/quadprog/cvxpy/scipy.

Usage:
    python benchmarks/aggregator_solvers.py                 # all backends
    python benchmarks/aggregator_solvers.py --backends jax --quick
    python benchmarks/aggregator_solvers.py --out benchmarks/results/aggregator_solvers.md

Each backend runs in its own subprocess (Keras picks its backend at
import). The machine's load average is printed: on 2 cores, anything else
running inflates the timings.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

KS = (8, 128)
P = 100_000
INNER = 10
GOALS_MS = {8: 0.5, 128: 10.0}

# (name, constructor expression in multiloss.aggregators, has a weighting)
OURS = [
    ("Sum", "Sum()", True),
    ("Mean", "Mean()", True),
    ("NormalizedSum", "NormalizedSum()", True),
    ("PCGrad", "PCGrad(seed=0)", True),
    ("GradVac", "GradVac(seed=0)", True),
    ("MGDA", "MGDA()", True),
    ("CAGrad", "CAGrad(c=0.5)", True),
    ("IMTLG", "IMTLG()", True),
    ("NashMTL", "NashMTL()", True),
    ("AlignedMTL", "AlignedMTL()", True),
    ("UPGrad", "UPGrad()", True),
    ("DualProj", "DualProj()", True),
    ("FairGrad", "FairGrad(alpha=1.0)", True),
    ("ConFIG", "ConFIG()", True),
    ("GradNorm", "GradNorm()", True),
    ("GradDrop", "GradDrop(seed=0)", False),
    ("DBMTL", "DBMTL()", False),
]

# torchjd: (name, factory source, input "gram" or "matrix")
TORCHJD = [
    ("Sum", "a.SumWeighting()", "gram"),
    ("Mean", "a.MeanWeighting()", "gram"),
    ("PCGrad", "a.PCGradWeighting()", "gram"),
    ("GradVac", "a.GradVacWeighting()", "gram"),
    ("MGDA", "a.MGDAWeighting()", "gram"),
    ("CAGrad", "a.CAGradWeighting(c=0.5)", "gram"),
    ("IMTLG", "a.IMTLGWeighting()", "gram"),
    ("NashMTL", "a.NashMTL(n_tasks=K)", "matrix"),
    ("AlignedMTL", "a.AlignedMTLWeighting()", "gram"),
    ("UPGrad", "a.UPGradWeighting()", "gram"),
    ("DualProj", "a.DualProjWeighting()", "gram"),
    ("FairGrad", "a.FairGradWeighting(alpha=1.0)", "gram"),
    ("ConFIG", "a.ConFIG()", "matrix"),
    ("GradDrop", "a.GradDrop()", "matrix"),
]


def task_gradients(k, p=P, seed=0):
    """K task gradients with conflicts and imbalance: a shared direction,
    taken against by a quarter of the tasks, plus task noise, with norms
    spread over two orders of magnitude."""
    import numpy as np

    rng = np.random.default_rng(seed + k)
    common = rng.normal(size=p)
    common /= np.linalg.norm(common)
    signs = np.where(rng.uniform(size=k) < 0.25, -1.0, 1.0)
    noise = rng.normal(size=(k, p)) / np.sqrt(p)
    j = 0.5 * signs[:, None] * common[None, :] + noise
    j /= np.linalg.norm(j, axis=1, keepdims=True)
    j *= np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=(k, 1)))
    return j.astype("float32")


def median_ms(fn, block, repeats, budget_s):
    """Median wall time of `fn()` in ms (after one warm-up call), stopping
    early once `budget_s` is spent (at least 3 timed calls)."""
    block(fn())
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and time.perf_counter() - start > budget_s:
            break
    times.sort()
    return 1e3 * times[len(times) // 2], len(times)


# --------------------------------------------------------------------------
# Worker: one Keras backend
# --------------------------------------------------------------------------


def run_backend(backend, repeats, budget_s):
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    from keras import ops

    from multiloss import aggregators
    from multiloss.engine import jit

    def block(x):
        for leaf in keras.tree.flatten(x):
            ops.convert_to_numpy(leaf)

    results = {}
    gram_fns = {}
    for k in KS:
        j_np = task_gradients(k)
        j = ops.convert_to_tensor(j_np)
        losses = ops.convert_to_tensor(np.linspace(0.5, 2.0, k).astype("float32"))
        gram_fn = gram_fns.setdefault(k, jit(lambda m: aggregators.gram_matrix([m])))
        gram = gram_fn(j)
        block(gram)
        ms, n = median_ms(lambda: gram_fn(j), block, repeats, budget_s)
        results[f"gram|{k}"] = {"ms": ms, "n": n}
        for name, expr, has_weighting in OURS:
            agg = eval(f"aggregators.{expr}")  # noqa: S307 - fixed table above
            agg.build((k,))
            if hasattr(agg, "build_state"):
                agg.build_state([keras.KerasTensor((P,))])
            variables = list(agg.variables)
            state = [ops.copy(ops.convert_to_tensor(v)) for v in variables]

            def stateless(values, call, agg=agg, variables=variables):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                    out = call()
                new = [scope.get_current_value(v) for v in variables]
                return out, [n if n is not None else v for n, v in zip(new, values)]

            entry = {}
            if has_weighting:
                weights_fn = jit(lambda values, g, l, agg=agg, stateless=stateless: stateless(
                    values, lambda: agg.gram_weights(g, l, training=True)))
                ms, n = median_ms(lambda: weights_fn(state, gram, losses), block, repeats, budget_s)
                entry["weights"] = {"ms": ms, "n": n}
                w, _ = weights_fn(state, gram, losses)
                entry["finite"] = bool(np.all(np.isfinite(ops.convert_to_numpy(w))))
                # In-graph: INNER solves in one compiled call (each on a slightly
                # different matrix), so the per-call dispatch cost is amortised
                # as in a training step; training=False (no state written).
                loop_fn = jit(lambda g, l, agg=agg, k=k: ops.fori_loop(
                    0, INNER,
                    lambda i, acc: acc + agg.gram_weights(
                        g * (1.0 + 1e-6 * ops.cast(i, "float32")), l, training=False),
                    ops.zeros((k,), "float32")))
                ms, n = median_ms(lambda: loop_fn(gram, losses), block,
                                  max(3, repeats // 4), budget_s)
                entry["in_graph"] = {"ms": ms / INNER, "n": n}
            full_fn = jit(lambda values, m, l, agg=agg, stateless=stateless: stateless(
                values, lambda: agg.aggregate([m], l, training=True)[0][0]))
            ms, n = median_ms(lambda: full_fn(state, j, losses), block,
                              max(3, repeats // 4), budget_s)
            entry["from_j"] = {"ms": ms, "n": n}
            log_names = getattr(agg, "log_names", ())
            if log_names:
                _, new_state = full_fn(state, j, losses)
                for var, value in zip(variables, new_state):
                    if var.name == "nonconverged":
                        entry["nonconverged"] = float(ops.convert_to_numpy(value))
            results[f"{name}|{k}"] = entry
            print(f"[{backend}] K={k} {name}: {entry}", file=sys.stderr, flush=True)
    return results


def run_torchjd(repeats, budget_s):
    import torch

    try:
        import torchjd.aggregation as a  # noqa: F401 - used by the factories
    except ImportError:
        return None
    from importlib.metadata import version

    torch.set_grad_enabled(False)
    results = {"version": version("torchjd")}
    for k in KS:
        j = torch.from_numpy(task_gradients(k))
        gram = j @ j.T
        for name, factory, kind in TORCHJD:
            try:
                method = eval(factory, {"a": a, "K": k})  # noqa: S307 - fixed table above
            except Exception as error:  # a missing optional dependency
                results[f"{name}|{k}"] = {"error": f"{type(error).__name__}: {error}"[:120]}
                continue
            arg = gram if kind == "gram" else j
            try:
                ms, n = median_ms(lambda: method(arg), lambda x: None, repeats, budget_s)
                out = method(arg)
                results[f"{name}|{k}"] = {
                    "ms": ms, "n": n, "input": kind,
                    "finite": bool(torch.isfinite(out).all()),
                }
            except Exception as error:
                results[f"{name}|{k}"] = {"error": f"{type(error).__name__}: {error}"[:120]}
            print(f"[torchjd] K={k} {name}: {results[f'{name}|{k}']}", file=sys.stderr, flush=True)
    return results


# --------------------------------------------------------------------------
# Parent: run the workers, print the tables
# --------------------------------------------------------------------------


def fmt(ms, goal=None):
    if ms is None:
        return "–"
    text = f"{ms:.3f}" if ms < 1 else (f"{ms:.2f}" if ms < 100 else f"{ms:.0f}")
    if goal is not None and ms > goal:
        text += " ✗"
    return text


def weights_table(data, backends, tj, key):
    lines = []
    header = ["aggregator"]
    for k in KS:
        for b in backends:
            header.append(f"{b} K={k}")
        if tj:
            header.append(f"torchjd K={k}")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for name, _, has_weighting in OURS:
        row = [name]
        for k in KS:
            for b in backends:
                entry = data[b].get(f"{name}|{k}", {})
                ms = entry.get(key, {}).get("ms") if has_weighting else None
                row.append(fmt(ms, GOALS_MS[k]) if has_weighting else "(needs J)")
            if tj:
                t = tj.get(f"{name}|{k}")
                if t is None:
                    row.append("–")
                elif "error" in t:
                    row.append("n/a")
                else:
                    row.append(fmt(t["ms"]) + (" (J)" if t["input"] == "matrix" else ""))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def tables(data):
    backends = [b for b in ("tensorflow", "jax", "torch") if b in data]
    tj = data.get("torchjd")
    lines = ["### Weights from the Gram matrix, one compiled call each (solver only, Gram "
             "matrix not included), median ms", ""]
    lines += weights_table(data, backends, tj, "weights")
    lines += ["", f"### The same, {INNER} solves inside one compiled call (dispatch "
              "amortised, as inside a training step; `training=False`), median ms per solve",
              ""]
    lines += weights_table(data, backends, tj, "in_graph")
    lines.append("")
    lines.append(f"✗: above the goal ({GOALS_MS[8]} ms at K=8, {GOALS_MS[128]} ms at K=128). "
                 "torchjd is called directly (no compilation; the same numbers in both "
                 "tables); \"(J)\": that method takes the (K, P) matrix, so its time includes "
                 "its own Gram matrix or per-coordinate work.")
    lines.append("")
    lines.append("### From the (K, P) gradients to the (P,) update (Gram matrix + weights + "
                 f"combination), P = {P:,}, median ms")
    lines.append("")
    header = ["aggregator"] + [f"{b} K={k}" for k in KS for b in backends]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    row = ["(Gram matrix alone)"]
    for k in KS:
        for b in backends:
            row.append(fmt(data[b].get(f"gram|{k}", {}).get("ms")))
    lines.append("| " + " | ".join(row) + " |")
    for name, _, _ in OURS:
        row = [name]
        for k in KS:
            for b in backends:
                row.append(fmt(data[b].get(f"{name}|{k}", {}).get("from_j", {}).get("ms")))
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    for b in backends:
        for key, entry in sorted(data[b].items()):
            if entry.get("nonconverged"):
                notes.append(f"{b} {key}: solver did not converge on this matrix")
            if entry.get("finite") is False:
                notes.append(f"{b} {key}: non-finite weights")
    if tj:
        for key, entry in sorted(tj.items()):
            if isinstance(entry, dict) and "error" in entry:
                notes.append(f"torchjd {key}: {entry['error']}")
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--budget", type=float, default=3.0,
                        help="seconds per timing at most (at least 3 calls)")
    parser.add_argument("--quick", action="store_true", help="5 repeats, 0.5 s budget")
    parser.add_argument("--no-torchjd", action="store_true")
    parser.add_argument("--out", help="also write the markdown report here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.budget = 5, 0.5

    if args.worker:
        if args.worker == "torchjd":
            result = run_torchjd(args.repeats, args.budget)
        else:
            result = run_backend(args.worker, args.repeats, args.budget)
        print(json.dumps(result))
        return

    data = {}
    workers = [b for b in args.backends.split(",") if b]
    if not args.no_torchjd:
        workers.append("torchjd")
    load_before = os.getloadavg()
    for worker in workers:
        env = dict(os.environ)
        if worker != "torchjd":
            env["KERAS_BACKEND"] = worker
        cmd = [sys.executable, __file__, "--worker", worker, "--repeats", str(args.repeats),
               "--budget", str(args.budget)]
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if result is not None:
            data[worker] = result
    load_after = os.getloadavg()

    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("keras", "tensorflow-cpu", "jax", "torch", "torchjd", "quadprog", "cvxpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    command = "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:])
    report = [
        "# Aggregator solver benchmark",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "  ",
        f"Problem: seeded task gradients with conflicts (a quarter of the tasks against a "
        f"shared direction) and norms over two orders of magnitude, P = {P:,}; "
        f"medians of up to {args.repeats} calls (at most {args.budget:g} s per timing) "
        "after a warm-up (compilation) call. torch runs eagerly.",
        "",
        tables(data),
        "",
    ]
    text = "\n".join(report)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
