"""Property tests of every aggregator, on the active backend: finiteness,
non-conflict, permutation invariance, linearity under scaling, KKT
conditions of the solvers, reset, weighting/aggregation agreement, options,
configs, docstring examples, and a hypothesis fuzz of 500 matrices each.

Everything runs compiled (`multiloss.engine.jit`: tf.function, jax.jit,
eager torch) through the training path (`training=True`), the state passed
in and out with a `keras.StatelessScope` as the JAX trainer does, on two
matrix shapes only, (4, 6) and (5, 3) (K > P: rank-deficient), to limit
retracing.
"""

import inspect
import re
import textwrap

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from keras import ops

import multiloss
from multiloss import aggregators as A
from multiloss.engine import jit

FACTORIES = {
    "Sum": lambda: A.Sum(),
    "Mean": lambda: A.Mean(),
    "NormalizedSum": lambda: A.NormalizedSum(),
    "PCGrad": lambda: A.PCGrad(seed=3),
    "GradDrop": lambda: A.GradDrop(seed=3),
    "GradVac": lambda: A.GradVac(seed=3),
    "CAGrad": lambda: A.CAGrad(),
    "CAGrad_c1": lambda: A.CAGrad(c=1.0),
    "CAGrad_c2": lambda: A.CAGrad(c=2.0, rescale=0),
    "MGDA": lambda: A.MGDA(),
    "IMTLG": lambda: A.IMTLG(),
    "NashMTL": lambda: A.NashMTL(),
    "AlignedMTL": lambda: A.AlignedMTL(),
    "UPGrad": lambda: A.UPGrad(),
    "DualProj": lambda: A.DualProj(),
    "FairGrad": lambda: A.FairGrad(),
    "FairGrad_a2": lambda: A.FairGrad(alpha=2.0),
    "ConFIG": lambda: A.ConFIG(),
    "DBMTL": lambda: A.DBMTL(),
    "GradNorm": lambda: A.GradNorm(),
}
ALL = sorted(FACTORIES)
CLASSES = sorted({type(f()).__name__ for f in FACTORIES.values()})
NOT_WEIGHTINGS = {"GradDrop", "DBMTL"}
NON_CONFLICTING = ["MGDA", "UPGrad", "DualProj", "NashMTL", "FairGrad", "FairGrad_a2",
                   "CAGrad_c1", "CAGrad_c2"]
RANDOM = {"PCGrad", "GradDrop", "GradVac"}
SHAPES = ((4, 6), (5, 3))


def to_np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


# --------------------------------------------------------------------------
# Compiled, stateless runners (one per aggregator and shape)
# --------------------------------------------------------------------------

_RUNNERS = {}


class Runner:
    """`run(J, losses, state)` -> (direction, weights, new state), compiled,
    with the aggregator's Variables mapped to `state` (its initial values by
    default) through a StatelessScope. `step(J, losses)` runs it on the
    Variables' current values and assigns the new state to them."""

    def __init__(self, factory, shape, training=True):
        self.agg = factory()
        self.agg.build((shape[0],))
        if hasattr(self.agg, "build_state"):
            self.agg.build_state([keras.KerasTensor(shape[1:])])
        self.variables = list(self.agg.variables)
        self.initial = [ops.copy(ops.convert_to_tensor(v)) for v in self.variables]
        agg, variables = self.agg, self.variables

        def fn(values, matrix, losses):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                directions, weights = agg.aggregate([matrix], losses, training=training)
            new = []
            for var, old in zip(variables, values):
                cur = scope.get_current_value(var)
                new.append(old if cur is None else cur)
            return directions[0], weights, new

        self.fn = jit(fn)

    def __call__(self, matrix, losses=None, state=None):
        matrix = np.asarray(matrix, "float32")
        if losses is None:
            losses = np.ones(matrix.shape[0], "float32")
        d, w, new = self.fn(
            self.initial if state is None else state,
            ops.convert_to_tensor(matrix),
            ops.convert_to_tensor(np.asarray(losses, "float32")),
        )
        return to_np(d), to_np(w), new

    def step(self, matrix, losses=None):
        current = [ops.copy(ops.convert_to_tensor(v)) for v in self.variables]
        d, w, new = self(matrix, losses, current)
        for var, value in zip(self.variables, new):
            var.assign(value)
        return d, w

    def state_of(self, new, name):
        for var, value in zip(self.variables, new):
            if var.name == name:
                return to_np(value)
        raise KeyError(name)


def runner(name, shape, factory=None, training=True):
    key = (name, tuple(shape), training)
    if key not in _RUNNERS:
        _RUNNERS[key] = Runner(factory or FACTORIES[name], tuple(shape), training)
    return _RUNNERS[key]


_COMPILED = {}


def compiled(key, make):
    """A compiled function, made once per key."""
    if key not in _COMPILED:
        _COMPILED[key] = make()
    return _COMPILED[key]


def built(name, shape, factory=None):
    """One built aggregator per name and shape, for compiled pure calls."""
    def make():
        agg = (factory or FACTORIES[name])()
        agg.build((shape[0],))
        return agg
    return compiled(("agg", name, tuple(shape)), make)


# --------------------------------------------------------------------------
# Matrices
# --------------------------------------------------------------------------


def random_matrix(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def degenerate_cases():
    base = random_matrix((4, 6), 11)
    cases = {"random": base, "random_b": random_matrix((4, 6), 12),
             "wide_rank_deficient": random_matrix((5, 3), 13)}
    cases["zero"] = np.zeros((4, 6), "float32")
    m = base.copy(); m[1] = 0.0; cases["zero_row"] = m
    m = base.copy(); m[1] = 3.0 * m[0]; cases["parallel"] = m
    m = base.copy(); m[1] = -2.0 * m[0]; cases["antiparallel"] = m
    m = base.copy(); m[2] = m[1]; cases["duplicate"] = m
    rng = np.random.default_rng(14)
    cases["rank1"] = np.outer(rng.normal(size=4), rng.normal(size=6)).astype("float32")
    m = base.copy(); m[0] *= 1e-15; cases["tiny_row"] = m
    m = base.copy(); m[3] *= 1e15; cases["huge_row"] = m
    cases["all_tiny"] = (base * 1e-15).astype("float32")
    cases["all_huge"] = (base * 1e15).astype("float32")
    m = base.copy(); m[0] *= 1e15; m[1] *= 1e-15; cases["huge_and_tiny"] = m
    m = random_matrix((5, 3), 15); m[4] = -m[0]; cases["wide_antiparallel"] = m
    return cases


CASES = degenerate_cases()


def conflict_tolerance(matrix, weights, reg_eps=0.0, rtol=1e-4):
    """Float32 rounding and solver tolerance, relative to the largest squared
    gradient norm; plus what the ridge `reg_eps * I` on the normalised Gram
    matrix allows (the solvers guarantee `(G + eps tr(G) I) w >= 0`, so
    `J d >= -eps tr(G) w`)."""
    j = matrix.astype(np.float64)
    sq = np.sum(j * j, axis=1)
    rounding = rtol * np.max(sq) * max(np.sum(np.abs(weights)), 1.0)
    return rounding + 1.01 * reg_eps * np.sum(sq) * np.max(np.abs(weights))


def assert_nonconflicting(matrix, d, w, label, reg_eps=0.0):
    prod = matrix.astype(np.float64) @ d
    tol = conflict_tolerance(matrix, w, reg_eps)
    assert prod.min() >= -tol, f"{label}: J d = {prod} (tolerance {tol:.3g})"


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_finite_output_of_shape_p_on_random_and_degenerate_matrices(name):
    for label, matrix in CASES.items():
        d, w, _ = runner(name, matrix.shape)(matrix)
        assert d.shape == (matrix.shape[1],), label
        assert np.all(np.isfinite(d)), f"{name} on {label}: {d}"
        assert w.shape == (matrix.shape[0],), label
        assert np.all(np.isfinite(w)), f"{name} on {label}: weights {w}"


@pytest.mark.parametrize("name", NON_CONFLICTING)
def test_non_conflicting(name):
    for label, matrix in CASES.items():
        run = runner(name, matrix.shape)
        d, w, _ = run(matrix)
        assert_nonconflicting(matrix, d, w, f"{name} on {label}", getattr(run.agg, "reg_eps", 0.0))


def test_cagrad_below_c_1_can_conflict():
    """The property is specific to c >= 1: with c = 0 CAGrad is the mean."""
    matrix = np.array([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [-3.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                       [0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]],
                      "float32")
    d, _, _ = runner("CAGrad0", (4, 6), lambda: A.CAGrad(c=0.0))(matrix)
    np.testing.assert_allclose(d, matrix.mean(axis=0), rtol=1e-6)
    assert (matrix @ d).min() < 0
    d1, w1, _ = runner("CAGrad_c1", (4, 6))(matrix)
    assert_nonconflicting(matrix, d1, w1, "CAGrad(c=1)")


PERMUTATION_INVARIANT = ["Sum", "Mean", "NormalizedSum", "MGDA", "UPGrad", "DualProj",
                         "CAGrad", "CAGrad_c1", "IMTLG", "NashMTL", "FairGrad",
                         "AlignedMTL", "ConFIG", "DBMTL", "GradNorm"]


@pytest.mark.parametrize("name", PERMUTATION_INVARIANT)
def test_permutation_invariance(name):
    rng = np.random.default_rng(21)
    for label in ("random", "random_b", "wide_rank_deficient", "zero_row", "parallel"):
        matrix = CASES[label]
        losses = rng.uniform(0.5, 2.0, size=matrix.shape[0]).astype("float32")
        d, _, _ = runner(name, matrix.shape)(matrix, losses)
        perm = rng.permutation(matrix.shape[0])
        dp, _, _ = runner(name, matrix.shape)(matrix[perm], losses[perm])
        # The absolute tolerance is relative to the rows: d can be ~0.
        atol = 2e-5 * max(np.abs(d).max(), np.abs(matrix).max())
        np.testing.assert_allclose(dp, d, rtol=2e-4, atol=atol, err_msg=label)


LINEAR = {
    "Sum": lambda: A.Sum(),
    "Mean": lambda: A.Mean(),
    "UPGrad_exact": lambda: A.UPGrad(reg_eps=0.0),
    "ConFIG": lambda: A.ConFIG(),
    "PCGrad": lambda: A.PCGrad(seed=3),
}


@pytest.mark.parametrize("name", sorted(LINEAR))
def test_linear_under_positive_scaling(name):
    """A(diag(a c1 + b c2) J) = a A(diag(c1) J) + b A(diag(c2) J)."""
    rng = np.random.default_rng(31)
    shape = (2, 6) if name == "PCGrad" else (4, 6)
    run = runner(name + "_lin", shape, LINEAR[name])
    for trial in range(4):
        matrix = rng.normal(size=shape).astype("float32")
        if shape[0] == 2 and trial % 2 == 0:
            matrix[1] = -0.7 * matrix[0] + 0.3 * matrix[1]  # conflicting
        c1, c2 = rng.uniform(0.1, 3.0, size=(2, shape[0]))
        a, b = rng.uniform(0.1, 3.0, size=2)
        left, _, _ = run((a * c1 + b * c2)[:, None] * matrix)
        right = a * run(c1[:, None] * matrix)[0] + b * run(c2[:, None] * matrix)[0]
        np.testing.assert_allclose(left, right, rtol=1e-4, atol=1e-5 * np.abs(right).max())


def test_upgrad_default_regularisation_is_nearly_linear():
    rng = np.random.default_rng(32)
    run = runner("UPGrad", (4, 6))
    matrix = rng.normal(size=(4, 6)).astype("float32")
    c1, c2 = rng.uniform(0.5, 2.0, size=(2, 4))
    left, _, _ = run((c1 + c2)[:, None] * matrix)
    right = run(c1[:, None] * matrix)[0] + run(c2[:, None] * matrix)[0]
    np.testing.assert_allclose(left, right, rtol=2e-3, atol=2e-3 * np.abs(right).max())


def test_pcgrad_equals_upgrad_with_equal_preferences_for_two_tasks():
    rng = np.random.default_rng(41)
    pc = runner("PCGrad", (2, 6))
    up = runner("UPGrad_ones", (2, 6), lambda: A.UPGrad(pref_vector=[1.0, 1.0], reg_eps=0.0))
    conflicts = 0
    for trial in range(8):
        matrix = rng.normal(size=(2, 6)).astype("float32")
        if trial % 2:
            matrix[1] = -0.8 * matrix[0] + 0.2 * matrix[1]
        conflicts += float(matrix[0] @ matrix[1]) < 0
        dp, _, _ = pc(matrix)
        du, _, _ = up(matrix)
        np.testing.assert_allclose(du, dp, rtol=1e-4, atol=1e-5 * np.abs(dp).max())
    assert conflicts >= 4


def test_mgda_kkt_conditions():
    for label, matrix in CASES.items():
        agg = built("MGDA", matrix.shape)
        solve = compiled(("MGDA.solve", matrix.shape), lambda: jit(agg.solve))
        gram = matrix.astype(np.float64) @ matrix.T.astype(np.float64)
        w, converged = solve(ops.convert_to_tensor(gram.astype("float32")))
        w = to_np(w)
        s = gram.diagonal().max()
        h = (gram / s if s > 0 else gram) + agg.reg_eps * np.eye(len(w))
        assert bool(to_np(converged)), label
        assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5, label
        grad = h @ w
        value = w @ h @ w
        tol = 1e-4 * max(value, 1e-6) + 1e-6
        assert np.all(grad >= value - tol), f"{label}: {grad} < {value}"
        support = w > 1e-6
        np.testing.assert_allclose(grad[support], value, atol=tol, err_msg=label)


def test_upgrad_kkt_conditions():
    for pref in (None, (0.1, 0.4, 0.2, 0.3)):
        for label in ("random", "random_b", "zero_row", "parallel", "antiparallel",
                      "rank1", "duplicate", "tiny_row", "huge_row"):
            matrix = CASES[label]
            key = f"UPGrad{pref}"
            agg = built(key, matrix.shape, lambda: A.UPGrad(pref_vector=pref))
            projections = compiled((key, "projections"), lambda: jit(agg.projections))
            gram = matrix.astype(np.float64) @ matrix.T.astype(np.float64)
            v, converged = projections(ops.convert_to_tensor(gram.astype("float32")))
            v = to_np(v)
            assert bool(to_np(converged)), label
            u = np.full(4, 0.25) if pref is None else np.asarray(pref)
            trace = gram.trace()
            h = (gram / trace if trace > 0 else gram) + agg.reg_eps * np.eye(4)
            for i in range(4):
                lower = np.zeros(4)
                lower[i] = u[i]
                assert np.all(v[i] >= lower - 1e-7), (label, i)
                lam = h @ v[i]  # gradient of 0.5 v^T H v: the multipliers
                scale = np.abs(h).max() * np.abs(v[i]).max()
                assert np.all(lam >= -1e-5 * scale), (label, i, lam)
                np.testing.assert_allclose(lam * (v[i] - lower), 0.0, atol=1e-5 * scale * u.max())


@pytest.mark.parametrize("name", sorted(set(ALL) - NOT_WEIGHTINGS))
def test_weighting_of_the_gram_matrix_reproduces_the_aggregation(name):
    for label in ("random", "wide_rank_deficient", "parallel", "huge_row"):
        matrix = CASES[label]
        agg = built(name, matrix.shape)
        both = compiled((name, "weighting", matrix.shape), lambda: jit(
            lambda j, l: (agg.weighting(A.gram_matrix([j]), l, training=False),
                          agg(j, l, training=False))))
        losses = np.linspace(0.5, 1.5, matrix.shape[0]).astype("float32")
        w, d = both(ops.convert_to_tensor(matrix), ops.convert_to_tensor(losses))
        w, d = to_np(w), to_np(d)
        expected = w @ matrix.astype(np.float64)
        scale = np.abs(w).sum() * np.abs(matrix).max()
        np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6 * scale, err_msg=label)


@pytest.mark.parametrize("name", ["UPGrad", "MGDA", "IMTLG", "PCGrad", "NashMTL"])
def test_task_weights_scale_the_gradients_the_rule_sees(name):
    """With fixed task weights c, the update is the rule applied to
    diag(c) J, and the logged weights are those in force on J."""
    matrix = CASES["random"]
    c = np.array([2.0, 0.5, 1.0, 3.0], "float32")
    plain = runner(name, (4, 6), training=False)
    weighted = runner(name + "_weighted", (4, 6), FACTORIES[name], training=False)
    weighted.agg.assign(c)
    d_plain, _, _ = plain(c[:, None] * matrix)
    d, w, _ = weighted(matrix, state=[ops.convert_to_tensor(v) for v in weighted.variables])
    directions = [d]
    np.testing.assert_allclose(to_np(directions[0]), d_plain, rtol=1e-4,
                               atol=1e-5 * np.abs(d_plain).max())
    np.testing.assert_allclose(to_np(w) @ matrix, d_plain, rtol=1e-4,
                               atol=1e-5 * np.abs(d_plain).max())


STATEFUL = ["PCGrad", "GradDrop", "GradVac", "NashMTL", "GradNorm", "DBMTL", "MGDA",
            "CAGrad", "UPGrad", "FairGrad"]
MOVING = {"PCGrad", "GradDrop", "GradVac", "NashMTL", "GradNorm", "DBMTL"}


def fresh(name, shape=(4, 6), training=True):
    """The compiled runner of `name`, its Variables back at their initial
    values (runners are shared between tests)."""
    run = runner(name, shape, training=training)
    for var, value in zip(run.variables, run.initial):
        var.assign(value)
    return run


@pytest.mark.parametrize("name", STATEFUL)
def test_reset_restores_the_first_step_result(name):
    rng = np.random.default_rng(51)
    matrix = rng.normal(size=(4, 6)).astype("float32")
    matrix[1] = -0.9 * matrix[0] + 0.2 * matrix[1]
    losses = np.array([1.0, 2.0, 0.5, 1.5], "float32")
    run = fresh(name)
    first, _ = run.step(matrix, losses)
    state1 = [to_np(v) for v in run.variables]
    for _ in range(3):
        run.step(matrix, losses * rng.uniform(0.5, 1.0, size=4).astype("float32"))
    if name in MOVING:
        moved = any(not np.array_equal(a, to_np(b)) for a, b in zip(state1, run.variables))
        assert moved, "the state should move during training steps"
    run.agg.reset()
    for var, value in zip(run.variables, run.initial):
        np.testing.assert_array_equal(to_np(var), to_np(value), err_msg=var.path)
    again, _ = run.step(matrix, losses)
    np.testing.assert_allclose(again, first, rtol=1e-6, atol=1e-7 * np.abs(first).max())


def test_state_moves_only_in_training_steps():
    matrix = CASES["random"]
    for name in sorted(MOVING):
        run = fresh(name)
        run.step(matrix, np.ones(4, "float32"))
        before = [to_np(v) for v in run.variables]
        frozen = runner(name, (4, 6), training=False)
        assert frozen.variables is not run.variables
        _, _, new = frozen(matrix, np.full(4, 2.0, "float32"),
                           [ops.convert_to_tensor(v) for v in frozen.variables])
        for var, value in zip(frozen.variables, new):
            np.testing.assert_array_equal(to_np(var), to_np(value), err_msg=name)
        del before


def test_stateful_aggregators_resume_exactly_from_their_variables():
    """A run split in two, the state carried through the Variables' values
    (as saving and BackupAndRestore do), equals an uninterrupted run."""
    rng = np.random.default_rng(61)
    mats = [rng.normal(size=(4, 6)).astype("float32") for _ in range(4)]
    losses = [rng.uniform(0.5, 2.0, size=4).astype("float32") for _ in range(4)]
    for name in sorted(MOVING):
        run = fresh(name)
        straight = [run.step(m, l)[0] for m, l in zip(mats, losses)]
        run = fresh(name)
        for m, l in zip(mats[:2], losses[:2]):
            run.step(m, l)
        saved = [to_np(v) for v in run.variables]
        run = fresh(name)  # a new process, its Variables loaded
        for var, value in zip(run.variables, saved):
            var.assign(value)
        resumed = [run.step(m, l)[0] for m, l in zip(mats[2:], losses[2:])]
        for s, r in zip(straight[2:], resumed):
            np.testing.assert_allclose(r, s, rtol=1e-6, atol=1e-7 * np.abs(s).max(),
                                       err_msg=name)


def test_compiled_training_steps_equal_eager_ones_with_real_variables():
    """Two compiled stateless steps (state passed along) equal two eager
    steps of a fresh aggregator with its own Variables."""
    rng = np.random.default_rng(71)
    matrix = rng.normal(size=(4, 6)).astype("float32")
    losses = np.array([1.0, 2.0, 3.0, 0.5], "float32")
    names = ["PCGrad", "GradVac", "GradNorm", "GradDrop", "DBMTL"]
    if keras.backend.backend() != "jax":  # eager JAX re-traces every while loop
        names += ["NashMTL", "MGDA"]
    for name in names:
        run = runner(name, (4, 6))
        d1, _, state = run(matrix, losses)
        d2, _, _ = run(matrix, 0.5 * losses, state)
        agg = FACTORIES[name]()
        e1 = to_np(agg(matrix, losses))
        e2 = to_np(agg(matrix, 0.5 * losses))
        np.testing.assert_allclose(d1, e1, rtol=1e-5, atol=1e-6 * np.abs(e1).max(), err_msg=name)
        np.testing.assert_allclose(d2, e2, rtol=1e-5, atol=1e-6 * np.abs(e2).max(), err_msg=name)


def test_random_aggregators_are_seeded():
    rng = np.random.default_rng(81)
    matrix = rng.normal(size=(4, 6)).astype("float32")
    matrix[1] = -matrix[0] + 0.1 * matrix[1]
    for name in ("PCGrad", "GradDrop", "GradVac"):
        a, b = FACTORIES[name](), FACTORIES[name]()
        for _ in range(2):
            np.testing.assert_array_equal(to_np(a(matrix)), to_np(b(matrix)))


# --------------------------------------------------------------------------
# Non-convergence is counted, not hidden
# --------------------------------------------------------------------------

SOLVERS = {
    "MGDA": ("mgda_nonconverged", lambda: A.MGDA(max_iter=1)),
    "UPGrad": ("upgrad_nonconverged", lambda: A.UPGrad(max_iter=1)),
    "DualProj": ("dualproj_nonconverged", lambda: A.DualProj(max_iter=1)),
    "CAGrad": ("cagrad_nonconverged", lambda: A.CAGrad(max_iter=1, max_inner=1)),
    "NashMTL": ("nashmtl_nonconverged", lambda: A.NashMTL(max_iter=1)),
    "FairGrad": ("fairgrad_nonconverged", lambda: A.FairGrad(max_iter=1)),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_non_convergence_is_counted_in_the_logs(name):
    log_name, starved = SOLVERS[name]
    if name == "MGDA":  # the min-norm point leaves the third task out
        matrix = np.array([[1.0, 0.0, 0.1, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.1, 0.0, 0.0],
                           [2.0, 2.0, 0.0, 0.0, 0.1, 0.0], [-0.5, -0.4, 0.0, 0.0, 0.0, 0.3]],
                          "float32")
    else:
        matrix = np.array([[1.0, 0.2, 0.0, 0.0, 0.3, 0.0], [-1.0, 0.3, 0.1, 0.0, 0.0, 0.2],
                           [-0.6, -0.8, 0.5, 0.1, 0.0, 0.0], [0.2, -1.0, -0.7, 0.4, 0.1, 0.0]],
                          "float32")
    run = runner(name + "_starved", (4, 6), starved)
    assert run.agg.log_names == (log_name,)
    for var, value in zip(run.variables, run.initial):
        var.assign(value)
    run.step(matrix)
    d, _ = run.step(matrix)
    assert float(to_np(run.agg.logs()[log_name])) == 2.0
    assert np.all(np.isfinite(d))
    frozen = runner(name + "_starved", (4, 6), starved, training=False)
    _, _, new = frozen(matrix, state=[ops.convert_to_tensor(v) for v in frozen.variables])
    assert frozen.state_of(new, "nonconverged") == 0.0  # not counted outside training
    healthy = runner(name, (4, 6))
    _, _, state = healthy(matrix)
    _, _, state = healthy(matrix, state=state)
    assert healthy.state_of(state, "nonconverged") == 0.0


# --------------------------------------------------------------------------
# Options, configs, aliases, documentation
# --------------------------------------------------------------------------

INVALID = [
    (A.NormalizedSum, dict(target="median"), "target"),
    (A.PCGrad, dict(seed=-1), r"seed.*\[0, 2147483647\]"),
    (A.GradDrop, dict(leak=1.5), r"leak.*\[0\.0, 1\.0\]"),
    (A.GradDrop, dict(leak=[]), "leak"),
    (A.GradVac, dict(beta=2.0), r"beta.*\[0\.0, 1\.0\]"),
    (A.CAGrad, dict(c=-0.1), r"`c`.*\[0\.0, 100\.0\]"),
    (A.CAGrad, dict(rescale=3), "rescale"),
    (A.MGDA, dict(normalization="l1"), "normalization"),
    (A.MGDA, dict(max_iter=0), r"max_iter.*\[1, 10000\]"),
    (A.MGDA, dict(tol=0.0), r"tol.*\(0\.0, 0\.1\]"),
    (A.IMTLG, dict(rcond=1.0), r"rcond.*\(0\.0, 1\.0\)"),
    (A.NashMTL, dict(max_norm=-1.0), "max_norm"),
    (A.NashMTL, dict(update_weights_every=0), "update_weights_every"),
    (A.AlignedMTL, dict(scale_mode="max"), "scale_mode"),
    (A.AlignedMTL, dict(pref_vector=[1.0, -1.0]), "pref_vector"),
    (A.UPGrad, dict(reg_eps=2.0), r"reg_eps.*\[0\.0, 1\.0\]"),
    (A.UPGrad, dict(pref_vector=[0.0, 0.0]), "pref_vector"),
    (A.DualProj, dict(max_iter=1.5), "max_iter"),
    (A.FairGrad, dict(alpha=0.0), r"alpha.*\(0\.0, 100\.0\]"),
    (A.ConFIG, dict(pref_vector="ab"), "pref_vector"),
    (A.DBMTL, dict(beta=1.0), r"beta.*\[0\.0, 1\.0\)"),
    (A.GradNorm, dict(alpha=-1.0), r"alpha.*\[0\.0, 10\.0\]"),
    (A.GradNorm, dict(learning_rate=0.0), "learning_rate"),
]


@pytest.mark.parametrize("cls,kwargs,pattern", INVALID,
                         ids=[f"{c.__name__}-{list(k)[0]}" for c, k, _ in INVALID])
def test_invalid_options_fail_at_construction(cls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(**kwargs)


def test_preference_vectors_must_match_the_number_of_tasks():
    for cls in (A.UPGrad, A.DualProj, A.AlignedMTL, A.ConFIG):
        with pytest.raises(ValueError, match="pref_vector.*3 entries.*4 tasks"):
            cls(pref_vector=[1.0, 1.0, 1.0]).build((4,))
    with pytest.raises(ValueError, match="leak.*2 entries.*4 tasks"):
        A.GradDrop(leak=[0.1, 0.2]).build((4,))


@pytest.mark.parametrize("name", CLASSES)
def test_alias_config_round_trip(name):
    cls = getattr(A, name)
    assert cls.alias == name.lower()
    assert isinstance(multiloss.balancer.get(name.lower()), cls)
    agg = cls()
    config = agg.get_config()
    signature = inspect.signature(cls.__init__)
    for param in signature.parameters:
        if param not in ("self", "name", "kwargs"):
            assert param in config, f"{name}.get_config() lacks {param}"
    clone = cls.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(agg))
    assert type(revived) is cls and revived.get_config() == config


@pytest.mark.parametrize("name", CLASSES)
def test_docstring_states_formula_paper_defaults_scale_and_runs_its_example(name, capsys):
    cls = getattr(A, name)
    doc = inspect.getdoc(cls)
    assert "Scale of the update" in doc
    if name not in ("Sum", "Mean", "NormalizedSum"):
        assert re.search(r"\b(19|20)\d\d\b", doc), "the paper and its year"
        assert re.search(r"default|no hyperparameter", doc, re.IGNORECASE)
    examples = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)
    assert examples, "a runnable example"
    for example in examples:
        exec(compile(textwrap.dedent(example), f"<{name} example>", "exec"), {})
    assert capsys.readouterr().out.strip()


def test_docstring_examples_print_what_they_say():
    """The values quoted in the examples' comments."""
    j = np.array([[1.0, 0.0], [-1.0, 1.0]], "float32")
    np.testing.assert_allclose(to_np(A.PCGrad(seed=0)(j)), [0.5, 1.5], rtol=1e-6)
    np.testing.assert_allclose(to_np(A.UPGrad(reg_eps=0.0)(j)), [0.25, 0.75], rtol=1e-5)
    j = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    np.testing.assert_allclose(to_np(A.MGDA()(j)), [0.8, 0.4], rtol=1e-4)
    j = np.array([[1.0, 0.0], [-2.0, 1.0]], "float32")
    np.testing.assert_allclose(to_np(A.DualProj(reg_eps=0.0)(j)), [0.0, 0.5], atol=1e-6)
    j = np.array([[2.0, 0.0], [0.0, 1.0]], "float32")
    np.testing.assert_allclose(to_np(A.IMTLG()(j)), [2 / 3, 2 / 3], rtol=1e-5)
    j = np.array([[3.0, 0.0], [0.0, 1.0]], "float32")
    np.testing.assert_allclose(to_np(A.AlignedMTL()(j)), [1.0, 1.0], rtol=1e-5)
    j = np.array([[10.0, 0.0], [0.0, 0.1]], "float32")
    np.testing.assert_allclose(to_np(A.NormalizedSum()(j)), [5.05, 5.05], rtol=1e-5)
    j = np.array([[1.0, 0.0], [0.0, 10.0]], "float32")
    np.testing.assert_allclose(to_np(A.DBMTL()(j, np.array([1.0, 10.0], "float32"))),
                               [0.1, 0.1], rtol=1e-5)


def test_gradnorm_declares_its_gram_scope_and_needs_losses():
    assert A.GradNorm.gram_scope == "last_shared_layer"
    with pytest.raises(ValueError, match="needs the task losses"):
        A.GradNorm()(CASES["random"])
    with pytest.raises(ValueError, match="needs the task losses"):
        A.DBMTL()(CASES["random"])


def test_jacobian_aggregators_declare_it():
    assert A.GradDrop.needs == "jacobians" and A.DBMTL.needs == "jacobians"
    for name in set(CLASSES) - NOT_WEIGHTINGS:
        assert getattr(A, name).needs == "gram", name


def test_several_variables_combine_like_one_concatenated_matrix():
    """The per-variable path (Gram matrix summed over variables, one
    combination per variable) equals the aggregator on the concatenation."""
    rng = np.random.default_rng(101)
    parts = [rng.normal(size=(4, 2, 3)).astype("float32"),
             rng.normal(size=(4, 5)).astype("float32")]
    flat = np.concatenate([p.reshape(4, -1) for p in parts], axis=1)
    losses = np.array([1.0, 2.0, 0.5, 1.5], "float32")
    for name in ("UPGrad", "PCGrad", "GradDrop", "DBMTL", "ConFIG"):
        whole = FACTORIES[name]()
        whole.build((4,))
        agg = FACTORIES[name]()
        agg.build((4,))
        if name == "DBMTL":
            whole.build_state([keras.KerasTensor(flat.shape[1:])])
            agg.build_state([keras.KerasTensor(p.shape[1:]) for p in parts])
        expected = to_np(jit(lambda j, l: whole.aggregate([j], l, training=False)[0][0])(
            ops.convert_to_tensor(flat), ops.convert_to_tensor(losses)))
        directions = jit(lambda ps, l: agg.aggregate(ps, l, training=False)[0])(
            [ops.convert_to_tensor(p) for p in parts], ops.convert_to_tensor(losses))
        got = np.concatenate([to_np(d).reshape(-1) for d in directions])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max(),
                                   err_msg=name)


# --------------------------------------------------------------------------
# Hypothesis fuzz: 500 matrices per aggregator
# --------------------------------------------------------------------------

_SCALES = [0.0, 1e-15, 1e-6, 1e-3, 1.0, 1.0, 1.0, 1e3, 1e6, 1e15]


@st.composite
def fuzz_matrices(draw):
    shape = draw(st.sampled_from(SHAPES))
    k, p = shape
    base = draw(arrays(np.float32, shape,
                       elements=st.floats(-8, 8, width=32, allow_subnormal=False)))
    scales = np.array(draw(st.lists(st.sampled_from(_SCALES), min_size=k, max_size=k)))
    mode = draw(st.sampled_from(["plain", "plain", "duplicate", "negate", "rank1", "scaled"]))
    m = base.astype(np.float64)
    # Entries whose square underflows float32 make the Gram matrix itself
    # meaningless; the row scales below still reach 1e-15 and 1e15.
    m[np.abs(m) < 1e-3] = 0.0
    if mode == "duplicate":
        m[1] = m[0]
    elif mode == "negate":
        m[1] = -m[0]
    elif mode == "rank1":
        m = np.outer(m[:, 0], m[0])
    if mode == "scaled" or draw(st.booleans()):
        m = m * scales[:, None]
    losses = np.array(draw(st.lists(st.floats(1e-3, 1e3), min_size=k, max_size=k)), "float32")
    return m.astype("float32"), losses


@pytest.mark.parametrize("name", ALL)
def test_fuzz_500_matrices(name):
    checks_conflict = name in NON_CONFLICTING
    reg_eps = getattr(FACTORIES[name](), "reg_eps", 0.0)
    seen = []

    @settings(max_examples=500, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzz_matrices())
    def check(case):
        matrix, losses = case
        seen.append(matrix.shape)
        d, w, _ = runner(name, matrix.shape)(matrix, losses)
        assert d.shape == (matrix.shape[1],)
        assert np.all(np.isfinite(d)), (matrix, d)
        assert np.all(np.isfinite(w)), (matrix, w)
        if checks_conflict:
            assert_nonconflicting(matrix, d, w, name, reg_eps)

    check()
    assert len(seen) >= 500 and len(set(seen)) == len(SHAPES)
