"""What XLA makes of each loss-level method's train step on JAX: how many
operations the compiled step runs, and how many of them must finish before
the backward pass of the shared layers can start.

XLA:CPU runs a compiled step as a graph of small compiled kernels, each
dispatched on its own (a "thunk"), independent ones on different cores.
With `Static` weights, the backward pass needs only the model's outputs;
the K loss reductions and the logs run beside it. A method whose weights
read this step's losses makes the whole backward pass wait for those
reductions and for its own rule. Counting is deterministic, unlike the
step's time on a shared 2-core machine, and tells these apart:

- `thunks`: the kernels of the step's entry computation (not parameters,
  tuples, bitcasts or constants); a `conditional` (the non-finite guard
  around the optimizer's update) counts as one, its branches' kernels
  not at all;
- `before backward`: those the backward pass of the shared layers waits
  for (its first kernel's ancestors);
- `chain`: the longest chain of dependent kernels in the step.

The text format read here is XLA's HLO dump (`compiled.as_text()`), which
may change between XLA versions; the numbers are for the version in the
table's heading.

    python benchmarks/jax_step_graph.py
    python benchmarks/jax_step_graph.py --tasks 8 --methods static famo
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import weighting_overhead  # noqa: E402

# Instructions that launch no kernel.
_FREE = {"parameter", "get-tuple-element", "bitcast", "tuple", "constant"}
# `name = type opcode(operands), attributes`; a type may be a tuple.
_INSTRUCTION = re.compile(
    r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(?:\(.*?\)|\S+)\s+([\w\-]+)\((.*)$"
)


def parse_entry(hlo):
    """{name: (opcode, operand names, the line)} of the HLO's entry
    computation."""
    entry = hlo[hlo.index("ENTRY"):]
    entry = entry[: entry.index("\n}")]
    graph = {}
    for line in entry.splitlines()[1:]:
        match = _INSTRUCTION.match(line)
        if match is None:
            raise ValueError(f"not an HLO instruction: {line.strip()[:120]}")
        name, opcode, rest = match.groups()
        operands = rest.split(")", 1)[0]
        graph[name] = (opcode, re.findall(r"%([\w.\-]+)", operands), line)
    return graph


def _kernels(graph, names):
    return sum(1 for name in names if graph[name][0] not in _FREE)


def ancestors(graph, name):
    seen, stack = set(), [name]
    while stack:
        for operand in graph[stack.pop()][1]:
            if operand in graph and operand not in seen:
                seen.add(operand)
                stack.append(operand)
    return seen


def longest_chain(graph):
    """The most kernels on one path of dependencies."""
    depth = {}
    for name in graph:
        opcode, operands, _ = graph[name]
        operands = [o for o in operands if o in graph]
        if any(o not in depth for o in operands):
            raise ValueError(f"{name} is listed before its operands: not an HLO schedule")
        below = max((depth[o] for o in operands), default=0)
        depth[name] = below + (opcode not in _FREE)
    return max(depth.values())


def step_counts(hlo, shared_layers=("trunk_1", "trunk_2")):
    graph = parse_entry(hlo)
    backward = [
        name for name, (opcode, _, line) in graph.items()
        if opcode not in _FREE
        and any(f"transpose(jvp({layer})" in line for layer in shared_layers)
    ]
    return {
        "thunks": _kernels(graph, graph),
        "before_backward": min(_kernels(graph, ancestors(graph, b)) for b in backward),
        "chain": longest_chain(graph),
    }


def worker(args):
    import jax

    results = {}
    for k in args.tasks:
        x, y = common.regression_data(k, steps=1)
        results[str(k)] = {}
        for name, model in weighting_overhead._models(k, args.methods).items():
            model.fit(x, y, batch_size=256, epochs=1, verbose=0)
            step, state, data = common.jax_step(model, common.first_batch(x, y))
            hlo = step.lower(state, data).compile().as_text()
            results[str(k)][name] = step_counts(hlo)
    results["jax"] = jax.__version__
    print(json.dumps(results))


def _cell(counts):
    return f"{counts['thunks']} / {counts['before_backward']} / {counts['chain']}"


def table(result, tasks):
    lines = [
        f"Measured {common.machine_line()}, jax {result['jax']}: kernels of the compiled "
        "train step (`jax_step_graph.py`).",
        "",
    ]
    lines += common.markdown_table(
        "method",
        [f"K={k}: thunks / before backward / chain" for k in tasks],
        [(name, [_cell(result[str(k)][name]) for k in tasks]) for name in result[str(tasks[0])]],
    )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--methods", nargs="+", default=list(weighting_overhead.METHODS))
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    passthrough = ["--tasks", *map(str, args.tasks), "--methods", *args.methods]
    result = common.run_worker(os.path.abspath(__file__), passthrough, "jax", KERAS_BACKEND="jax")
    common.report(table(result, args.tasks), args.out)
    return None


if __name__ == "__main__":
    main()
