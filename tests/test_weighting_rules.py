"""Each loss-level balancer on fixed loss vectors, against an independent
NumPy transcription of its paper (or official code), in float64."""

import math

import keras
import numpy as np
import pytest

import multiloss
from multiloss import weighting as W


def _np(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor), "float64")


def _built(balancer, k, task_weights=None):
    balancer.setup([f"t{i}" for i in range(k)], task_weights)
    return balancer


def _combine(balancer, losses, training=True):
    total, weights = balancer.combine(keras.ops.convert_to_tensor(np.asarray(losses, "float32")), training=training)
    return float(_np(total)), _np(weights)


def _numeric_gradient(f, losses, h=1e-6):
    """Central differences of the float64 function f at `losses`."""
    losses = np.asarray(losses, "float64")
    grad = np.zeros_like(losses)
    for i in range(len(losses)):
        step = h * max(1.0, abs(losses[i]))
        up, down = losses.copy(), losses.copy()
        up[i] += step
        down[i] -= step
        grad[i] = (f(up) - f(down)) / (2 * step)
    return grad


def _softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


# -- Uncertainty, IMTL-L -----------------------------------------------------


@pytest.mark.parametrize("variant, half", [("standard", 1.0), ("regression", 0.5)])
def test_uncertainty_matches_kendall(variant, half):
    losses = np.array([0.3, 2.0, 5.0])
    s = np.array([-1.0, 0.5, 2.0])
    c = np.array([1.0, 0.5, 0.0])
    balancer = _built(W.Uncertainty(variant=variant), 3, c)
    balancer.log_variance.assign(s.astype("float32"))
    total, weights = _combine(balancer, losses)
    # Kendall et al.: L / (2 sigma^2) + log sigma with s = log sigma^2 is the
    # regression variant; the standard one doubles it.
    sigma2 = np.exp(s)
    kendall = np.sum(c * (losses / (2 * sigma2) + 0.5 * np.log(sigma2)))
    assert total == pytest.approx(kendall * (1.0 if variant == "regression" else 2.0), rel=1e-5)
    np.testing.assert_allclose(weights, c * half / sigma2, rtol=1e-5)
    # The minimiser in s is log L whatever the variant.
    balancer.log_variance.assign(np.log(losses).astype("float32"))
    _, weights = _combine(balancer, losses)
    np.testing.assert_allclose(weights, c * half / losses, rtol=1e-5)


def test_imtl_l_matches_numpy():
    losses = np.array([0.3, 2.0, 5.0])
    s = np.array([-1.0, 0.5, 2.0])
    c = np.array([2.0, 1.0, 0.0])
    balancer = _built(W.IMTLL(), 3, c)
    balancer.log_scale.assign(s.astype("float32"))
    total, weights = _combine(balancer, losses)
    assert total == pytest.approx(np.sum(c * (np.exp(s) * losses - s)), rel=1e-5)
    np.testing.assert_allclose(weights, c * np.exp(s), rtol=1e-5)


# -- GeometricMean -----------------------------------------------------------


def test_geometric_mean_matches_the_product_form_and_its_gradient():
    losses = np.array([0.5, 2.0, 8.0])
    balancer = _built(W.GeometricMean(), 3)
    total, weights = _combine(balancer, losses)

    def gls(values):  # Chennupati et al.: (prod L)^(1/K)
        return np.prod(values) ** (1 / len(values))

    assert total == pytest.approx(gls(losses), rel=1e-5)
    np.testing.assert_allclose(weights, _numeric_gradient(gls, losses), rtol=1e-4)


def test_geometric_mean_fixed_weights_are_exponents():
    losses = np.array([0.5, 2.0, 8.0])
    c = np.array([1.0, 3.0, 0.0])
    balancer = _built(W.GeometricMean(), 3, c)
    total, weights = _combine(balancer, losses)

    def weighted(values):
        return np.prod(values ** (c / c.sum()))

    assert total == pytest.approx(weighted(losses), rel=1e-5)
    np.testing.assert_allclose(weights, _numeric_gradient(weighted, losses), rtol=1e-4, atol=1e-9)


def test_geometric_mean_is_finite_for_100_tasks_of_extreme_scales():
    rng = np.random.default_rng(0)
    losses = np.logspace(-30, 30, 100)[rng.permutation(100)].astype("float32")
    with np.errstate(over="ignore", under="ignore"):
        assert not np.isfinite(np.prod(losses[losses > 1])) or np.prod(losses[losses < 1]) == 0
    balancer = _built(W.GeometricMean(), 100)
    total, weights = _combine(balancer, losses)
    shifted = losses.astype("float64") + 1e-8
    expected = math.exp(math.fsum(np.log(shifted)) / 100)
    assert total == pytest.approx(expected, rel=1e-4)
    assert np.all(np.isfinite(weights))
    np.testing.assert_allclose(weights, expected / (100 * shifted), rtol=1e-4)


def test_geometric_mean_with_every_task_switched_off_gives_zero_weights_when_compiled():
    # With every fixed weight 0 the norm is the tiny term alone; its product
    # with a loss at the floor (1e-30 * 1e-12) is a denormal, which a
    # compiled step (XLA, TensorFlow) flushes to 0, and 0 / 0 is NaN.
    balancer = _built(W.GeometricMean(epsilon=1e-12), 2, [0.0, 0.0])
    combine = multiloss.engine.jit(lambda losses: balancer.combine(losses))
    total, weights = combine(keras.ops.array([0.0, 2.0]))
    assert float(_np(total)) == 1.0  # exp(0 / tiny): no task, no total but 1
    np.testing.assert_array_equal(_np(weights), [0.0, 0.0])


# -- Bad input of the log-based methods ---------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: W.GeometricMean(**kw),
        lambda **kw: W.FAMO(**kw),
        lambda **kw: W.STCH(warmup_epochs=0, **kw),
    ],
    ids=["geometric_mean", "famo", "stch"],
)
def test_log_methods_clamp_non_positive_losses_and_shift_with_a_floor(make):
    losses = [-1.0, 0.0, 2.0]
    balancer = _built(make(), 3)
    for _ in range(2):
        total, weights = _combine(balancer, losses)
        assert math.isfinite(total) and np.all(np.isfinite(weights))
        assert weights[0] == 0.0 and weights[1] == 0.0 and weights[2] > 0.0
    if isinstance(balancer, W.STCH):
        balancer.on_epoch_end(0)
        total, weights = _combine(balancer, losses)
        assert math.isfinite(total) and np.all(np.isfinite(weights)) and weights[2] > 0
    shifted = _built(make(min_losses=[-2.0, -1.0, 0.0]), 3)
    total, weights = _combine(shifted, losses)
    assert math.isfinite(total) and np.all(weights > 0)


# -- FAMO ---------------------------------------------------------------------


class _NumpyFAMO:
    """The official FAMO (Cranial-XIX/FAMO, famo.py) in NumPy: softmax
    logits, torch.optim.Adam with L2 weight decay; the update is fed the
    next step's losses."""

    def __init__(self, k, w_lr=0.025, gamma=0.01, min_losses=0.0):
        self.w = np.zeros(k)
        self.m = np.zeros(k)
        self.v = np.zeros(k)
        self.t = 0
        self.w_lr, self.gamma, self.min_losses = w_lr, gamma, min_losses
        self.prev = None

    def get_weighted_loss(self, losses):
        self.prev = losses
        z = _softmax(self.w)
        d = losses - self.min_losses + 1e-8
        c = np.sum(z / d)
        return np.sum(np.log(d) * z / c), z / (c * d)

    def update(self, curr):
        delta = np.log(self.prev - self.min_losses + 1e-8) - np.log(curr - self.min_losses + 1e-8)
        z = _softmax(self.w)
        jacobian = np.diag(z) - np.outer(z, z)  # d softmax / d w
        grad = jacobian.T @ delta + self.gamma * self.w
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad**2
        m_hat = self.m / (1 - 0.9**self.t)
        v_hat = self.v / (1 - 0.999**self.t)
        self.w = self.w - self.w_lr * m_hat / (np.sqrt(v_hat) + 1e-8)

    def step(self, losses):
        if self.prev is not None:
            self.update(losses)
        return self.get_weighted_loss(losses)


@pytest.mark.parametrize("options", [{}, {"w_lr": 0.1, "gamma": 0.0, "min_losses": 0.05}])
def test_famo_matches_the_official_update(options):
    rng = np.random.default_rng(1)
    sequence = np.exp(rng.normal(size=(8, 3)) - np.linspace(0, 2, 8)[:, None]) + 0.1
    balancer = _built(W.FAMO(**options), 3)
    reference = _NumpyFAMO(3, **options)
    for losses in sequence:
        total, weights = _combine(balancer, losses)
        expected_total, expected_weights = reference.step(losses)
        assert total == pytest.approx(expected_total, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(weights, expected_weights, rtol=1e-5)
        np.testing.assert_allclose(_np(balancer.logits), reference.w, rtol=1e-4, atol=1e-6)
    assert abs(reference.w).max() > 0.02  # the logits did move
    # evaluate: weights from the current logits, no update.
    before = _np(balancer.logits)
    _, weights = _combine(balancer, sequence[0], training=False)
    np.testing.assert_array_equal(_np(balancer.logits), before)
    z = _softmax(reference.w)
    d = sequence[0] - options.get("min_losses", 0.0) + 1e-8
    np.testing.assert_allclose(weights, z / d / np.sum(z / d), rtol=1e-5)


def test_famo_weights_sum_to_one_and_fixed_weights_scale_them():
    balancer = _built(W.FAMO(), 3, [1.0, 2.0, 0.0])
    total, weights = _combine(balancer, [1.0, 2.0, 3.0])
    z = np.full(3, 1 / 3)
    c = np.array([1.0, 2.0, 0.0])
    d = np.array([1.0, 2.0, 3.0]) + 1e-8
    norm = np.sum(c * z / d)
    np.testing.assert_allclose(weights, c * z / (norm * d), rtol=1e-5)
    assert weights.sum() == pytest.approx(1.0, rel=1e-5)
    assert total == pytest.approx(np.sum(c * z * np.log(d)) / norm, rel=1e-5)


# -- STCH ---------------------------------------------------------------------


class _NumpySTCH:
    """STCH as in the official code (Xi-L/STCH, STCH_MTL, LibMTL's STCH.py):
    sum of logs while warming up, the nadir averaged over the epoch
    `warmup_epoch`, then mu * K * logsumexp of the log-normalised losses
    (the official value drops the detached max; add it back)."""

    def __init__(self, k, mu=1.0, warmup_epoch=4):
        self.k, self.mu, self.warmup = k, mu, warmup_epoch
        self.sum, self.count = 0.0, 0

    def objective(self, epoch, losses):
        if epoch <= self.warmup:
            return np.sum(np.log(losses + 1e-20))
        nadir = self.sum / self.count
        logs = np.log(losses / nadir + 1e-20)
        top = np.max(logs)
        official = self.mu * np.log(np.sum(np.exp((logs - top) / self.mu))) * self.k
        return official + self.k * top

    def step(self, epoch, losses):
        if epoch == self.warmup:
            self.sum = self.sum + losses
            self.count += 1
        total = self.objective(epoch, losses)
        return total, _numeric_gradient(lambda v: self.objective(epoch, v), losses)


@pytest.mark.parametrize("mu", [1.0, 0.3])
def test_stch_matches_the_official_code(mu):
    rng = np.random.default_rng(2)
    epochs = [2, 3, 3, 2]  # steps per epoch; warm-up 1, nadir epoch 1, STCH after
    balancer = _built(W.STCH(mu=mu, warmup_epochs=1), 3)
    reference = _NumpySTCH(3, mu=mu, warmup_epoch=1)
    phases = []
    for epoch, steps in enumerate(epochs):
        for _ in range(steps):
            losses = np.exp(rng.normal(size=3)) * np.array([0.1, 1.0, 10.0])
            total, weights = _combine(balancer, losses)
            expected_total, expected_weights = reference.step(epoch, losses)
            assert total == pytest.approx(expected_total, rel=1e-5, abs=1e-5)
            np.testing.assert_allclose(weights, expected_weights, rtol=1e-4)
            phases.append(epoch > 1)
        # evaluate in between: no change to the nadir
        _combine(balancer, [5.0, 5.0, 5.0], training=False)
        balancer.on_epoch_end(epoch)
    assert any(phases) and not all(phases)
    # The sum and the count, each as documented (not only their ratio).
    np.testing.assert_allclose(_np(balancer.nadir_sum), reference.sum, rtol=1e-5)
    assert float(_np(balancer.nadir_steps)) == reference.count


def test_stch_weights_the_task_furthest_above_its_nadir_most():
    balancer = _built(W.STCH(mu=0.01, warmup_epochs=0), 2)
    _combine(balancer, [1.0, 1.0])
    balancer.on_epoch_end(0)
    _, weights = _combine(balancer, [0.5, 2.0])  # task 1 fell, task 2 rose
    assert weights[1] * 2.0 > 100 * weights[0] * 0.5  # nearly all on task 2 (mu small)


@pytest.mark.parametrize("losses", [[0.5, 2.0, 1.0], [1e-6, 1e6, 3.0], [2.0, 2.0, 2.0]])
@pytest.mark.parametrize("mu", [0.01, 1.0, 50.0])
def test_stch_total_is_mu_k_logsumexp_when_one_task_dominates(mu, losses):
    """The STCH value, mu K logsumexp(log(D / n + eps) / mu), in float64 with
    the maximum taken out: exact also where the softmax of all but one task
    underflows to 0 (mu small, losses far apart)."""
    balancer = _built(W.STCH(mu=mu, warmup_epochs=0), 3)
    _combine(balancer, [1.0, 1.0, 1.0])
    balancer.on_epoch_end(0)  # nadir [1, 1, 1]
    total, weights = _combine(balancer, losses)
    x = np.log(np.asarray(losses, "float64") + 1e-20) / mu
    expected = mu * 3 * (x.max() + np.log(np.sum(np.exp(x - x.max()))))
    assert total == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert np.all(np.isfinite(weights))


# -- DWA ----------------------------------------------------------------------


def test_dwa_matches_liu_et_al():
    epochs = [
        [[1.0, 4.0], [0.8, 3.6]],
        [[0.5, 3.5], [0.4, 3.3]],
        [[0.3, 3.4], [0.25, 3.2]],
        [[0.2, 3.0], [0.2, 3.1]],
    ]
    balancer = _built(W.DWA(), 2)
    averages = []
    for epoch, steps in enumerate(epochs):
        _, weights = _combine(balancer, [9.0, 9.0], training=False)  # evaluate: not averaged
        if epoch < 2:
            expected = np.ones(2)
        else:
            # Liu et al. eq. (7): w_k(t-1) = L_k(t-1) / L_k(t-2),
            # lambda_k(t) = K exp(w_k(t-1)/T) / sum_i exp(w_i(t-1)/T), T = 2.
            w = averages[-1] / averages[-2]
            expected = 2 * np.exp(w / 2) / np.sum(np.exp(w / 2))
        np.testing.assert_allclose(weights, expected, rtol=1e-5)
        for losses in steps:
            total, weights = _combine(balancer, losses)
            np.testing.assert_allclose(weights, expected, rtol=1e-5)
            assert total == pytest.approx(float(np.dot(expected, losses)), rel=1e-5)
        averages.append(np.mean(steps, axis=0))
        balancer.on_epoch_end(epoch)
        # The epoch averages it keeps (t-2, t-1) are the plain means, not
        # only in their ratio (which alone sets the weights).
        before = averages[-2] if len(averages) > 1 else np.zeros(2)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(balancer.epoch_averages), [before, averages[-1]], rtol=1e-6
        )
    # Task 2's loss fell slower: it weighs more.
    _, weights = _combine(balancer, [1.0, 1.0], training=False)
    assert weights[1] > weights[0]


def test_dwa_averages_the_unweighted_losses():
    plain = _built(W.DWA(), 2)
    weighted = _built(W.DWA(), 2, [1.0, 1.0])
    for epoch, losses in enumerate([[1.0, 1.0], [0.5, 0.9]]):
        if epoch == 1:
            weighted.assign([1.0, 10.0])  # a schedule: not a change of the loss
        _combine(plain, losses)
        _combine(weighted, losses)
        plain.on_epoch_end(epoch)
        weighted.on_epoch_end(epoch)
    _, w_plain = _combine(plain, [1.0, 1.0], training=False)
    _, w_weighted = _combine(weighted, [1.0, 1.0], training=False)
    np.testing.assert_allclose(w_weighted, w_plain * np.array([1.0, 10.0]), rtol=1e-5)


# -- ScaleNormalized -----------------------------------------------------------


def test_scale_normalized_matches_a_running_mean_with_warmup():
    rng = np.random.default_rng(3)
    sequence = np.exp(rng.normal(size=(7, 2))) * np.array([1000.0, 0.01])
    c = np.array([1.0, 2.0])
    balancer = _built(W.ScaleNormalized(decay=0.5, warmup_steps=3), 2, c)
    # Before any training step, evaluate normalises by the losses themselves.
    _, weights = _combine(balancer, sequence[0], training=False)
    np.testing.assert_allclose(weights, c / (sequence[0] + 1e-8), rtol=1e-5)
    seen = []
    mean = None
    for t, losses in enumerate(sequence, start=1):
        seen.append(losses)
        if t <= 3:
            mean = np.mean(seen, axis=0)
        else:
            mean = 0.5 * mean + 0.5 * losses
        total, weights = _combine(balancer, losses)
        np.testing.assert_allclose(weights, c / (mean + 1e-8), rtol=1e-5)
        assert total == pytest.approx(float(np.sum(c * losses / (mean + 1e-8))), rel=1e-5)
        # comparable: each normalised loss is of order 1, whatever its scale
        assert np.all((losses / mean > 0.05) & (losses / mean < 20))
    _combine(balancer, [1.0, 1.0], training=False)
    np.testing.assert_allclose(_np(balancer.running_mean), mean, rtol=1e-5)


def test_scale_normalized_step_count_stops_at_2_to_the_24_and_the_average_stays_exponential():
    # The count is a float32: 2^24 + 1 is not one. The warm-up ends before
    # (warmup_steps < 2^24), so the rate there is 1 - decay.
    balancer = _built(W.ScaleNormalized(decay=0.75, warmup_steps=2**24 - 1), 2)
    balancer.steps.assign(2.0**24 - 1)
    balancer.running_mean.assign([4.0, 8.0])
    for losses in ([8.0, 0.0], [0.0, 16.0]):
        before = _np(balancer.running_mean)
        _combine(balancer, losses)
        np.testing.assert_allclose(
            _np(balancer.running_mean), 0.75 * before + 0.25 * np.array(losses), rtol=1e-6
        )
        assert float(_np(balancer.steps)) == 2.0**24
    # One step earlier the same count is the warm-up's last step: a plain average.
    warm = _built(W.ScaleNormalized(decay=0.5, warmup_steps=4), 2)  # EMA: [6, 4]
    warm.steps.assign(3.0)
    warm.running_mean.assign([4.0, 8.0])
    _combine(warm, [8.0, 0.0])
    np.testing.assert_allclose(_np(warm.running_mean), [5.0, 6.0], rtol=1e-6)


# -- RLW ----------------------------------------------------------------------


def _rlw_draws(seed, n, k=4):
    balancer = _built(W.RLW(seed=seed), k)
    return np.stack([_combine(balancer, np.ones(k))[1] for _ in range(n)])


def test_rlw_is_a_softmax_of_standard_normals_and_reproducible():
    draws = _rlw_draws(seed=11, n=400)
    np.testing.assert_allclose(draws.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(draws > 0)
    assert len(np.unique(draws, axis=0)) == len(draws)  # fresh each step
    # log w_k - mean_j log w_j = z_k - mean(z): mean 0, variance 1 - 1/K.
    centred = np.log(draws) - np.log(draws).mean(axis=1, keepdims=True)
    assert abs(centred.mean()) < 0.05
    assert centred.std() == pytest.approx(math.sqrt(1 - 1 / 4), rel=0.08)
    np.testing.assert_array_equal(_rlw_draws(seed=11, n=5), draws[:5])
    assert not np.allclose(_rlw_draws(seed=12, n=5), draws[:5])


def test_rlw_uses_the_draw_made_one_step_before():
    """Step 1's z is numpy's draw for the seed; step t+1's is keras.random's
    t-th draw from a SeedGenerator with that seed."""
    k, seed = 5, 7
    draws = _rlw_draws(seed=seed, n=3, k=k)
    first = np.random.default_rng(seed).standard_normal(k)
    np.testing.assert_allclose(draws[0], np.exp(first) / np.exp(first).sum(), rtol=1e-5)
    generator = keras.random.SeedGenerator(seed)
    for later in draws[1:]:
        z = _np(keras.random.normal((k,), seed=generator))
        np.testing.assert_allclose(later, np.exp(z) / np.exp(z).sum(), rtol=1e-5)


def test_rlw_weighs_the_losses_and_evaluates_with_the_expected_weights():
    c = np.array([1.0, 1.0, 2.0, 0.0])
    losses = np.array([1.0, 2.0, 3.0, 4.0])
    balancer = _built(W.RLW(seed=0), 4, c)
    total, weights = _combine(balancer, losses)  # a training draw
    assert total == pytest.approx(float(np.dot(weights, losses)), rel=1e-5)
    assert weights[3] == 0.0 and np.all(weights[:3] > 0)
    state, held = _np(balancer.seed_generator.state), _np(balancer.draw)
    total, weights = _combine(balancer, losses, training=False)
    np.testing.assert_allclose(weights, [0.25, 0.25, 0.5, 0.0], rtol=1e-6)
    assert total == pytest.approx(0.25 + 0.5 + 1.5, rel=1e-6)
    np.testing.assert_array_equal(_np(balancer.seed_generator.state), state)
    np.testing.assert_array_equal(_np(balancer.draw), held)


# -- MetricDriven ---------------------------------------------------------------


def test_metric_driven_default_rule_is_inverse_to_the_scores():
    balancer = _built(W.MetricDriven(), 3, [1.0, 1.0, 3.0])
    logs = {"val_t0_loss": 0.5, "val_t1_loss": 2.0, "val_t2_loss": 8.0, "loss": 1.0}
    balancer.on_epoch_end(0, logs)
    _, weights = _combine(balancer, [1.0, 1.0, 1.0])
    inverse = 1 / np.array([0.5, 2.0, 8.0])
    np.testing.assert_allclose(weights, np.array([1, 1, 3]) * 3 * inverse / inverse.sum(), rtol=1e-5)


def test_metric_driven_custom_rule_and_monitor():
    seen = []

    def rule(scores, epoch):
        seen.append((epoch, scores))
        return {"t1": scores["t1"] * 10}

    balancer = _built(W.MetricDriven(rule=rule, monitor={"t0": "val_t0_acc", "t1": "val_t1_acc"}), 2)
    balancer.on_epoch_end(4, {"val_t0_acc": 0.9, "val_t1_acc": 0.2})
    assert seen == [(4, {"t0": 0.9, "t1": 0.2})]
    _, weights = _combine(balancer, [1.0, 1.0])
    np.testing.assert_allclose(weights, [1.0, 2.0], rtol=1e-6)


def test_metric_driven_names_what_is_missing_or_wrong():
    balancer = _built(W.MetricDriven(), 2)
    with pytest.raises(ValueError, match=r"\['val_t0_loss', 'val_t1_loss'\].*\['loss', 't0_loss'\]"):
        balancer.on_epoch_end(0, {"loss": 1.0, "t0_loss": 1.0})
    bad = _built(W.MetricDriven(rule=lambda s, e: {"t1": -1.0}), 2)
    with pytest.raises(ValueError, match="'t1'.*>= 0"):
        bad.on_epoch_end(0, {"val_t0_loss": 1.0, "val_t1_loss": 1.0})
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['t9'\]"):
        _built(W.MetricDriven(rule=lambda s, e: {"t9": 1.0}), 2).on_epoch_end(
            0, {"val_t0_loss": 1.0, "val_t1_loss": 1.0}
        )
    with pytest.warns(UserWarning, match=r"\['t1'\]"):
        balancer.on_epoch_end(0, {"val_t0_loss": 1.0, "val_t1_loss": float("nan")})
    np.testing.assert_array_equal(_np(balancer.metric_weights), [1.0, 1.0])


# -- Static stays Keras's weighted sum -------------------------------------------


def test_every_method_returns_a_finite_total_and_k_weights():
    losses = [0.5, 1.5, 3.0]
    for alias in multiloss.balancer.available():
        balancer = _built(multiloss.balancer.get(alias), 3)
        for training in (True, False):
            total, weights = _combine(balancer, losses, training=training)
            assert math.isfinite(total), alias
            assert weights.shape == (3,) and np.all(np.isfinite(weights)) and np.all(weights >= 0), alias
