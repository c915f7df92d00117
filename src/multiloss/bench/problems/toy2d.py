"""`toy2d`: the two-objective problem of the CAGrad and Nash-MTL papers.

The whole problem is two numbers `x = (x1, x2)` and two losses. With
`LOWER = 5e-6`:

    f1    = log(max(|0.5(-x1 - 7) - tanh(-x2)|, LOWER)) + 6
    f2    = log(max(|0.5(-x1 + 3) + tanh(-x2) + 2|, LOWER)) + 6
    c1    = max(tanh(0.5 x2), 0)          c2 = max(tanh(-0.5 x2), 0)
    f1_sq = ((-x1 + 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
    f2_sq = ((-x1 - 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
    L1 = scale * (c1 f1 + c2 f1_sq)       L2 = c1 f2 + c2 f2_sq

Two variants: `cagrad` (scale 1, starts (-8.5, 7.5), (-8.5, -5), (9, 9),
100k Adam steps in the paper) and `nashmtl` (scale 0.1 on L1, starts
(-8.5, 7.5), (0, 0), (9, 9), (-7.5, -0.5), (9, -1), 35k steps in the
paper's code). Adam, lr 1e-3 (torch's Adam: eps 1e-8 after the square root).

The losses and their per-task gradients are written in `keras.ops` with
hand-derived gradients (checked in the tests against numpy and finite
differences), and the whole optimisation loop runs compiled, inside
`multiloss.engine.jit`, with `keras.ops.fori_loop`. The balancer is called
inside the loop under a `keras.StatelessScope` that maps its variables to
values carried in the loop state, so stateful balancers (FAMO, NashMTL,
GradVac, seeded PCGrad and RLW) keep their state correctly on every backend.

How a balancer moves `x`:

- a gradient-level balancer (`multiloss.aggregators`) gets the (2, 2)
  Jacobian `J` (rows: the task gradients) through
  `aggregate([J], losses)` and its direction is the update;
- a loss-level balancer (`multiloss.weighting`) gets the two losses through
  `combine(losses)`; the gradient of its total with respect to `x` is
  `sum_k w_k J[k]` with the weights it returns (the `Weighting` contract:
  the weights in force on the unweighted losses);
- a balancer with *trainable* variables (uncertainty weighting's
  log-variances) is trained alongside `x`, by a second Adam with the same
  learning rate, on the gradient of its total with respect to those
  variables at fixed losses. Keras has no backend-agnostic autodiff, so
  this gradient is a central finite difference (step `FD_STEP`), evaluated
  in scopes whose state updates are discarded. It is exact to O(h^2) for
  the smooth totals such methods use.

The Pareto set. On the lower half-plane (where every Pareto-optimal point
lies: the losses reach about -20 there and never below about -6 elsewhere)
`L_k = c2(x2) f_k_sq(x1, x2)`. A point is Pareto-stationary when some
`lam` in [0, 1] has `lam grad L1 + (1 - lam) grad L2 = 0`: the x1
component gives `lam = (x1 + 7) / 14` (so `|x1| <= 7`), the x2 component a
single `x2*(x1)` in [-12, -8], found here by bisection. The curve runs from
-8.3551 at x1 = 0 (the constant the papers' plots draw) to -8.4345 at
|x1| = 7, so a fixed band around -8.3552 would miss the ends of the set;
`on_pareto_set` measures the distance to the exact curve. Scaling L1
(the `nashmtl` variant) does not change the set.
"""

import numpy as np

__all__ = [
    "LOWER",
    "VARIANTS",
    "TASKS",
    "losses",
    "jacobian",
    "losses_numpy",
    "pareto_x2",
    "on_pareto_set",
    "PARETO_TOL",
    "make_chunk",
    "optimize",
    "Toy2D",
]

LOWER = 5e-6
TASKS = ("f1", "f2")
PARETO_TOL = 0.05
PARETO_CENTER = -8.3552  # the papers' constant: x2*(0)
ADAM = {"lr": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8}
FD_STEP = 1e-2
EPOCH_STEPS = 1000  # an "epoch" of toy2d: the balancer's epoch hooks run between them
RECORDS = 250  # about this many trajectory rows per start

VARIANTS = {
    "cagrad": {
        "scale": 1.0,
        "starts": ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)),
        "paper_steps": 100_000,
        "source": "CAGrad (Liu et al., 2021), toy example",
    },
    "nashmtl": {
        "scale": 0.1,
        "starts": ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)),
        "paper_steps": 35_000,
        "source": "Nash-MTL (Navon et al., 2022), toy example, L1 scaled by 0.1",
    },
}


# -- the problem in keras.ops ------------------------------------------------


def _parts(x1, x2):
    from keras import ops

    t = ops.tanh(x2)  # tanh(-x2) = -t
    a = -0.5 * x1 - 3.5 + t  # 0.5(-x1 - 7) - tanh(-x2)
    b = -0.5 * x1 + 3.5 - t  # 0.5(-x1 + 3) + tanh(-x2) + 2
    abs_a, abs_b = ops.abs(a), ops.abs(b)
    f1 = ops.log(ops.maximum(abs_a, LOWER)) + 6.0
    f2 = ops.log(ops.maximum(abs_b, LOWER)) + 6.0
    h = ops.tanh(0.5 * x2)
    c1 = ops.maximum(h, 0.0)
    c2 = ops.maximum(-h, 0.0)
    q = 0.1 * ops.square(x2 + 8.0)
    f1_sq = (ops.square(7.0 - x1) + q) / 10.0 - 20.0
    f2_sq = (ops.square(-x1 - 7.0) + q) / 10.0 - 20.0
    return locals()


def losses(x, scale=1.0):
    """The (2,) losses `(L1, L2)` at `x` (shape (2,))."""
    from keras import ops

    p = _parts(x[0], x[1])
    l1 = p["c1"] * p["f1"] + p["c2"] * p["f1_sq"]
    l2 = p["c1"] * p["f2"] + p["c2"] * p["f2_sq"]
    return ops.stack([scale * l1, l2])


def jacobian(x, scale=1.0):
    """The (2, 2) Jacobian: row k is the gradient of L_k at `x`.

    Derived by hand, with torch's convention for `clamp`, which the papers'
    code uses: the gradient of `max(u, c)` is that of `u` where `u >= c`
    (boundary included) and 0 below. So at x2 = 0 both `c1` and `c2` pass
    their slopes (+-0.5): a start at (0, 0) moves, as in the Nash-MTL paper.
    """
    from keras import ops

    x1, x2 = x[0], x[1]
    p = _parts(x1, x2)
    a, b, t, h = p["a"], p["b"], p["t"], p["h"]
    sech2 = 1.0 - ops.square(t)  # d tanh(x2) / dx2
    sech2_half = 0.5 * (1.0 - ops.square(h))  # d tanh(0.5 x2) / dx2
    # d log|a| / da = 1 / a, zero where the clamp holds.
    live_a, live_b = p["abs_a"] >= LOWER, p["abs_b"] >= LOWER
    inv_a = ops.where(live_a, 1.0 / ops.where(live_a, a, 1.0), 0.0)
    inv_b = ops.where(live_b, 1.0 / ops.where(live_b, b, 1.0), 0.0)
    df1_dx1, df1_dx2 = -0.5 * inv_a, sech2 * inv_a
    df2_dx1, df2_dx2 = -0.5 * inv_b, -sech2 * inv_b
    dc1 = ops.where(x2 >= 0.0, sech2_half, 0.0)
    dc2 = ops.where(x2 <= 0.0, -sech2_half, 0.0)
    dsq_dx2 = 0.02 * (x2 + 8.0)
    df1sq_dx1 = (x1 - 7.0) / 5.0
    df2sq_dx1 = (x1 + 7.0) / 5.0
    c1, c2 = p["c1"], p["c2"]
    g1 = ops.stack([
        c1 * df1_dx1 + c2 * df1sq_dx1,
        dc1 * p["f1"] + c1 * df1_dx2 + dc2 * p["f1_sq"] + c2 * dsq_dx2,
    ])
    g2 = ops.stack([
        c1 * df2_dx1 + c2 * df2sq_dx1,
        dc1 * p["f2"] + c1 * df2_dx2 + dc2 * p["f2_sq"] + c2 * dsq_dx2,
    ])
    return ops.stack([scale * g1, g2])


# -- numpy, for plots and the Pareto set --------------------------------------


def losses_numpy(x1, x2, scale=1.0):
    """`(L1, L2)` for arrays `x1`, `x2` (any matching shapes), in numpy."""
    x1, x2 = np.asarray(x1, "float64"), np.asarray(x2, "float64")
    f1 = np.log(np.maximum(np.abs(0.5 * (-x1 - 7) - np.tanh(-x2)), LOWER)) + 6
    f2 = np.log(np.maximum(np.abs(0.5 * (-x1 + 3) + np.tanh(-x2) + 2), LOWER)) + 6
    c1 = np.maximum(np.tanh(0.5 * x2), 0)
    c2 = np.maximum(np.tanh(-0.5 * x2), 0)
    f1_sq = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    f2_sq = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    return scale * (c1 * f1 + c2 * f1_sq), c1 * f2 + c2 * f2_sq


def _stationarity(x1, x2):
    """d/dx2 of lam L1 + (1 - lam) L2 with lam = (x1 + 7) / 14, on x2 < 0."""
    lam = (x1 + 7.0) / 14.0
    q = 0.1 * (x2 + 8.0) ** 2
    g = lam * (((7 - x1) ** 2 + q) / 10 - 20) + (1 - lam) * (((x1 + 7) ** 2 + q) / 10 - 20)
    c2 = np.tanh(-0.5 * x2)
    dc2 = -0.5 / np.cosh(0.5 * x2) ** 2
    return dc2 * g + c2 * 0.02 * (x2 + 8.0)


def pareto_x2(x1):
    """x2 of the Pareto set at `x1` (|x1| <= 7; clipped there), by bisection."""
    x1 = np.clip(np.asarray(x1, "float64"), -7.0, 7.0)
    lo = np.full_like(x1, -12.0)  # stationarity < 0 here
    hi = np.full_like(x1, -8.0)  # > 0 here
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        positive = _stationarity(x1, mid) > 0
        hi = np.where(positive, mid, hi)
        lo = np.where(positive, lo, mid)
    return 0.5 * (lo + hi)


def pareto_distance(x):
    """|x2 - x2*(x1)| for a point `(x1, x2)`, or inf if |x1| > 7."""
    x1, x2 = float(x[0]), float(x[1])
    if not (np.isfinite(x1) and np.isfinite(x2)) or abs(x1) > 7.0:
        return float("inf")
    return abs(x2 - float(pareto_x2(x1)))


def on_pareto_set(x, tol=PARETO_TOL):
    """Whether the point `x = (x1, x2)` is within `tol` (in x2) of the
    Pareto set: |x1| <= 7 and |x2 - x2*(x1)| <= tol."""
    return pareto_distance(x) <= tol


# -- the compiled optimisation loop -------------------------------------------


def _adam(param, grad, m, v, t):
    from keras import ops

    b1, b2 = ADAM["beta_1"], ADAM["beta_2"]
    m = b1 * m + (1.0 - b1) * grad
    v = b2 * v + (1.0 - b2) * ops.square(grad)
    m_hat = m / (1.0 - ops.power(b1, t))
    v_hat = v / (1.0 - ops.power(b2, t))
    return param - ADAM["lr"] * m_hat / (ops.sqrt(v_hat) + ADAM["epsilon"]), m, v


def _kind(balancer):
    from multiloss import aggregators, weighting

    if isinstance(balancer, aggregators.Aggregator):
        return "aggregator"
    if isinstance(balancer, weighting.Weighting):
        return "weighting"
    raise TypeError(
        f"{type(balancer).__name__} is neither a multiloss Weighting nor an Aggregator."
    )


def make_chunk(balancer, chunk, scale=1.0, stride=1):
    """A compiled function running `chunk` Adam steps of the toy problem
    with `balancer` (built for 2 tasks):

        run(x, m, v, values, bm, bv, offset)
            -> (x, m, v, values, bm, bv, record, loss_sum)

    `x` and its Adam moments `m`, `v`; `values`: the balancer's variable
    values (in `balancer.variables` order); `bm`, `bv`: Adam moments of its
    trainable variables; `offset`: the steps done before (float32 scalar).
    `record` has a row every `stride` steps, `(step, x1, x2, L1, L2, w1,
    w2)` before that step's update; `loss_sum`: the sum of the losses over
    the chunk.
    """
    import keras
    from keras import ops

    from multiloss import engine

    kind = _kind(balancer)
    # State sized by the parameters (DB-MTL's buffer) exists before tracing:
    # here the one parameter is x, two numbers.
    balancer.build_state([np.zeros((2,), "float32")])
    variables = list(balancer.variables)
    trainable_ids = {id(v) for v in balancer.trainable_variables}
    trainable_index = [i for i, v in enumerate(variables) if id(v) in trainable_ids]
    if sum(int(np.prod(variables[i].shape)) for i in trainable_index) > 64:
        raise ValueError(
            "toy2d trains a balancer's trainable variables by finite differences: "
            "at most 64 scalars."
        )
    chunk = int(chunk)
    stride = max(1, int(stride))
    rows = (chunk - 1) // stride + 1

    def direction(x, values):
        """(losses, update direction, weights, new balancer values) at x."""
        L = losses(x, scale)
        J = jacobian(x, scale)
        with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
            if kind == "weighting":
                _, w = balancer.combine(L, training=True)
                w = ops.cast(w, "float32")
                g = ops.matmul(ops.expand_dims(w, 0), J)[0]
            else:
                directions, w = balancer.aggregate([J], L, training=True)
                g = ops.cast(directions[0], "float32")
                w = ops.cast(w, "float32")
        new_values = [scope.get_current_value(v) for v in variables]
        return L, g, w, new_values

    def total_at(L, values, index, delta):
        shifted = list(values)
        shifted[index] = ops.add(values[index], ops.cast(delta, values[index].dtype))
        # Its own scope: the state updates of these evaluations are dropped.
        with keras.StatelessScope(state_mapping=list(zip(variables, shifted))):
            total, _ = balancer.combine(L, training=True)
        return ops.cast(total, "float32")

    def balancer_grads(L, values):
        """Central finite differences of the total w.r.t. the trainable
        variables, at fixed losses."""
        grads = []
        for index in trainable_index:
            shape = tuple(variables[index].shape)
            size = int(np.prod(shape))
            parts = []
            for e in range(size):
                unit = np.zeros(size, "float32")
                unit[e] = FD_STEP
                unit = unit.reshape(shape)
                up = total_at(L, values, index, unit)
                down = total_at(L, values, index, -unit)
                parts.append((up - down) / (2.0 * FD_STEP))
            grads.append(ops.reshape(ops.stack(parts), shape))
        return grads

    def body(i, carry):
        x, m, v, values, bm, bv, record, loss_sum, offset = carry
        L, g, w, new_values = direction(x, values)
        step = offset + ops.cast(i, "float32")
        t = step + 1.0
        if trainable_index and kind == "weighting":
            bgrads = balancer_grads(L, values)
            bm, bv = list(bm), list(bv)
            for j, index in enumerate(trainable_index):
                param = ops.cast(new_values[index], "float32")
                updated, bm[j], bv[j] = _adam(param, bgrads[j], bm[j], bv[j], t)
                new_values[index] = ops.cast(updated, variables[index].dtype)
        x_new, m, v = _adam(x, g, m, v, t)
        row = ops.concatenate([ops.reshape(step, (1,)), x, L, w])
        slot = ops.cast(i // stride, "int32")
        updated = ops.slice_update(record, (slot, 0), ops.expand_dims(row, 0))
        record = ops.where(ops.equal(i % stride, 0), updated, record)
        return x_new, m, v, new_values, bm, bv, record, loss_sum + L, offset

    def run(x, m, v, values, bm, bv, offset):
        record = ops.full((rows, 7), float("nan"), "float32")
        loss_sum = ops.zeros((2,), "float32")
        carry = (x, m, v, list(values), list(bm), list(bv), record, loss_sum, offset)
        x, m, v, values, bm, bv, record, loss_sum, _ = ops.fori_loop(0, chunk, body, carry)
        return x, m, v, values, bm, bv, record, loss_sum

    return engine.jit(run, xla=True)


def initial_state(balancer):
    """The loop state of a fresh balancer: its variables' values and zero
    Adam moments for its trainable ones."""
    return _read(balancer), *_zero_moments(balancer)


def _read(balancer):
    from keras import ops

    # Through numpy: a fresh tensor, never an alias of the Variable's buffer
    # (torch) nor a tensor that tracks gradients.
    return [
        ops.convert_to_tensor(ops.convert_to_numpy(v.value), v.dtype) for v in balancer.variables
    ]


def _write(balancer, values):
    from keras import ops

    for variable, value in zip(balancer.variables, values):
        variable.assign(ops.convert_to_numpy(value))


def _zero_moments(balancer):
    from keras import ops

    trainable = balancer.trainable_variables
    return (
        [ops.zeros(v.shape, "float32") for v in trainable],
        [ops.zeros(v.shape, "float32") for v in trainable],
    )


def schedule(steps):
    """`(chunk, chunks)`: the loop runs in chunks of `chunk` steps (an
    "epoch": the balancer's epoch hooks run between chunks); `steps` is
    rounded up to a whole number of chunks."""
    steps = max(1, int(steps))
    chunk = min(steps, EPOCH_STEPS)
    return chunk, -(-steps // chunk)


def optimize(balancer, starts, steps, scale=1.0, records=RECORDS, on_chunk=None):
    """Runs the loop from each start with a fresh copy of the balancer's
    state; returns one dict per start (final point, losses, weights, whether
    it reached the Pareto set, and the recorded trajectory).

    The balancer's epoch hooks (`on_epoch_begin`, `on_epoch_end`) run
    between chunks of `EPOCH_STEPS` steps, on its Variables, which hold the
    loop's state for the call; `on_chunk()` is called after each chunk.
    """
    from keras import ops

    chunk, chunks = schedule(steps)
    stride = max(1, (chunk * chunks) // max(1, records))
    stride = min(stride, chunk)
    run = make_chunk(balancer, chunk, scale=scale, stride=stride)
    fresh = _read(balancer)
    out = []
    for start in starts:
        _write(balancer, fresh)
        values = list(fresh)
        bm, bv = _zero_moments(balancer)
        x = ops.convert_to_tensor(np.asarray(start, "float32"))
        m = ops.zeros((2,), "float32")
        v = ops.zeros((2,), "float32")
        rows = []
        for epoch in range(chunks):
            _write(balancer, values)
            balancer.on_epoch_begin(epoch)
            values = _read(balancer)
            offset = ops.convert_to_tensor(float(epoch * chunk), "float32")
            x, m, v, values, bm, bv, record, loss_sum = run(x, m, v, values, bm, bv, offset)
            record = ops.convert_to_numpy(record).astype("float64")
            rows.append(record[np.isfinite(record[:, 0])])
            mean = ops.convert_to_numpy(loss_sum) / chunk
            _write(balancer, values)
            # The problem has no data: its validation loss is its loss.
            logs = {"loss": float(mean.sum())}
            for task, value in zip(TASKS, mean):
                logs[f"{task}_loss"] = float(value)
            logs.update({f"val_{key}": value for key, value in list(logs.items())})
            balancer.on_epoch_end(epoch, logs)
            values = _read(balancer)
            if on_chunk is not None:
                on_chunk()
        _write(balancer, fresh)
        record = np.concatenate(rows)
        final = ops.convert_to_numpy(x).astype("float64")
        final_losses = np.array(losses_numpy(final[0], final[1], scale), "float64")
        distance = pareto_distance(final)
        out.append({
            "start": [float(s) for s in start],
            "steps": chunk * chunks,
            "final_x": final.tolist(),
            "final_losses": dict(zip(TASKS, final_losses.tolist())),
            # The weights in force at the last recorded step.
            "final_weights": dict(zip(TASKS, record[-1, 5:7].tolist())),
            "pareto_distance": distance,
            "on_pareto_set": bool(distance <= PARETO_TOL),
            "finite": bool(np.all(np.isfinite(final))),
            "trajectory": {
                "step": record[:, 0].astype(int).tolist(),
                "x1": record[:, 1].tolist(),
                "x2": record[:, 2].tolist(),
                "L1": record[:, 3].tolist(),
                "L2": record[:, 4].tolist(),
                "w1": record[:, 5].tolist(),
                "w2": record[:, 6].tolist(),
            },
        })
    return out


# -- the benchmark problem -----------------------------------------------------


class Toy2D:
    """The `toy2d` benchmark, one variant (`cagrad` or `nashmtl`)."""

    family = "toy2d"
    tasks = TASKS
    metric = "pareto"
    higher_is_better = True
    baselines = False
    quick_steps = 10_000

    def __init__(self, variant="cagrad"):
        if variant not in VARIANTS:
            raise ValueError(f"toy2d variants: {sorted(VARIANTS)}, got {variant!r}.")
        self.variant = variant
        spec = VARIANTS[variant]
        self.scale = spec["scale"]
        self.starts = spec["starts"]
        self.default_steps = spec["paper_steps"]
        self.name = f"toy2d-{variant}"
        self.title = f"toy2d ({variant} variant)"
        scaled = "L1 scaled by 0.1, " if self.scale != 1.0 else ""
        self.description = (
            f"The two-objective problem of {spec['source']}: {scaled}"
            f"{len(self.starts)} starts, Adam (lr 1e-3). A run reaches the Pareto set when "
            f"|x1| <= 7 and x2 is within {PARETO_TOL} of the exact Pareto curve x2*(x1) "
            "(from -8.3552 at x1 = 0 to -8.4345 at |x1| = 7)."
        )

    def prepare(self):
        return None

    def units(self, steps):
        return schedule(steps)[1] * len(self.starts)

    def settings(self, steps):
        chunk, chunks = schedule(steps)
        return {
            "steps": chunk * chunks,
            "paper_steps": VARIANTS[self.variant]["paper_steps"],
            "scale_L1": self.scale,
            "starts": [list(s) for s in self.starts],
            "optimizer": "Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8), compiled loop",
            "epoch_steps": chunk,
            "pareto_tolerance_x2": PARETO_TOL,
        }

    def run(self, method, seed, steps, advance=None):
        import time

        import keras

        from multiloss import balancer as balancer_module

        keras.utils.set_random_seed(seed)
        balancer = balancer_module.get(method)
        balancer.setup(TASKS)
        start = time.perf_counter()
        results = optimize(
            balancer, self.starts, steps, scale=self.scale,
            on_chunk=(lambda: advance(1)) if advance is not None else None,
        )
        finite = all(r["finite"] for r in results)
        return {
            "status": "ok" if finite else "diverged",
            "seconds": time.perf_counter() - start,
            "steps": results[0]["steps"],
            "starts": results,
        }

    def summarize(self, run):
        out = {"pareto_reached": float(sum(r["on_pareto_set"] for r in run["starts"]))}
        for i, r in enumerate(run["starts"]):
            out[f"start{i}/L1"] = r["final_losses"]["f1"]
            out[f"start{i}/L2"] = r["final_losses"]["f2"]
        return out
