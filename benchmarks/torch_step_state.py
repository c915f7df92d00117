"""What a torch training step spends on the balancer's state outside its
rule: the copy of the state a skipped step would put back (taken at every
step under `nonfinite="skip"` or `"raise"`, the default) and
`engine.ops.assign_add`.

torch runs each step eagerly, so these per-step Python costs are paid at
every step; they are tens of microseconds, below what a step-time ratio
on a shared machine resolves, hence timed here on their own: microseconds
per call, the median of 15 interleaved rounds of 2000 calls
(`common.time_compiled_steps`).

    python benchmarks/torch_step_state.py
    python benchmarks/torch_step_state.py --methods static dwa famo --out results.md
"""

import argparse
import os
import statistics
import sys

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import weighting_overhead  # noqa: E402


def repeated(function):
    """`run(n)`: `n` calls of `function`."""
    def run(n):
        for _ in range(n):
            function()
    return run


def snapshot_function():
    """The engine's copy of the step state; before c1595b7 the engine took
    it inline, as the fallback does."""
    from multiloss.engine import torch as engine

    inline = lambda model: [(v, v.value.detach().clone()) for v in model._step_state()]  # noqa: E731
    return getattr(engine, "_snapshot", inline)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--methods", nargs="+",
                        default=["static", "dwa", "famo", "scale_normalized", "metric_driven"])
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()

    import keras
    import numpy as np

    from multiloss.engine import ops as step_ops

    snapshot = snapshot_function()
    x, y = common.regression_data(args.tasks, steps=1)
    runs, copied = {}, {}
    for name, model in weighting_overhead._models(args.tasks, args.methods).items():
        model.fit(x, y, batch_size=256, epochs=1, verbose=0)
        copied[name] = len(snapshot(model))
        runs[name] = repeated(lambda m=model: snapshot(m))
    vector = keras.Variable(np.zeros(args.tasks, "float32"), trainable=False)
    counter = keras.Variable(0.0, trainable=False)
    added = keras.ops.ones((args.tasks,))
    runs["assign_add tensor"] = repeated(lambda: step_ops.assign_add(vector, added))
    runs["assign_add number"] = repeated(lambda: step_ops.assign_add(counter, 1.0))
    us = {name: statistics.median(values)
          for name, values in common.time_compiled_steps(runs, rounds=15, steps=2000).items()}
    rows = [(name, [str(copied[name]), f"{us[name]:.1f}"]) for name in copied]
    lines = [
        f"Measured {common.machine_line()}, torch, K={args.tasks} (`torch_step_state.py`): "
        "us per call, median of 15 interleaved rounds of 2000 calls.",
        "",
        *common.markdown_table("method", ["Variables copied", "copy of the step state, us"], rows),
        "",
        f"`engine.ops.assign_add`: a ({args.tasks},) float32 tensor "
        f"{us['assign_add tensor']:.1f} us, "
        f"the Python number 1.0 {us['assign_add number']:.1f} us.",
    ]
    common.report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
