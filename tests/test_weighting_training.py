"""Each loss-level balancer's defining behaviour inside `fit`, checked against
quantities computed independently of it (the data's noise, the logged
unweighted losses, a NumPy transcription driving a static-weight model)."""

import keras
import numpy as np
import pytest
from keras import layers

import multiloss
from helpers import copy_weights, max_weight_diff, regression_data, two_head
from multiloss import weighting as W
from test_weighting_rules import _NumpyFAMO, _NumpySTCH

ML = multiloss.MultiLossModel
LOSS = {"a": "mse", "b": "mse"}


def _noisy_regression(noise_a, noise_b, n=1024, seed=0):
    """Two linear targets of the same inputs with Gaussian noise of standard
    deviation `noise_a` and `noise_b`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y_a = x @ np.array([[1.0], [-2.0], [0.5], [0.0]]) + noise_a * rng.normal(size=(n, 1))
    y_b = x @ np.array([[0.5], [1.0], [-1.0], [2.0]]) + noise_b * rng.normal(size=(n, 1))
    return x, {"a": y_a.astype("float32"), "b": y_b.astype("float32")}


def _linear_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = layers.Dense(8, name="trunk")(inputs)
    return ML(inputs, {"a": layers.Dense(1, name="a")(h), "b": layers.Dense(1, name="b")(h)})


def _task_losses(model, x, y):
    """The unweighted MSE of each task, from the model's predictions."""
    pred = model(x)
    return np.array([
        np.mean((np.asarray(keras.ops.convert_to_numpy(pred[k]), "float64") - y[k]) ** 2)
        for k in ("a", "b")
    ])


def _slice(y, start, stop):
    return {k: v[start:stop] for k, v in y.items()}


def _np(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor), "float64")


# -- learned weights --------------------------------------------------------


def _adam():
    # A short memory of squared gradients (beta_2) lets the learned
    # log-variances follow the falling losses within a short run.
    return keras.optimizers.Adam(0.05, beta_2=0.9)


def test_uncertainty_weights_are_inverse_to_the_noise_variances():
    x, y = _noisy_regression(noise_a=0.1, noise_b=1.0)  # variances 0.01 and 1.0
    model = _linear_model()
    model.compile(_adam(), loss=LOSS, balancer=W.Uncertainty())
    history = model.fit(x, y, batch_size=128, epochs=20, verbose=0).history
    s = _np(model.balancer.log_variance)
    ratio = np.exp(s[1] - s[0])  # weight of a over weight of b
    assert 100 / 2 <= ratio <= 100 * 2, (s, ratio)
    # the logged weights are exp(-s)
    assert history["a_weight"][-1] / history["b_weight"][-1] == pytest.approx(ratio, rel=0.3)


def test_imtl_l_drives_every_scaled_loss_to_one():
    x, y = _noisy_regression(noise_a=2.0, noise_b=0.1)  # losses about 4 and 0.01
    model = _linear_model()
    model.compile(_adam(), loss=LOSS, balancer="imtl_l")
    model.fit(x, y, batch_size=128, epochs=20, verbose=0)
    losses = _task_losses(model, x, y)
    assert losses[0] / losses[1] > 100  # very different scales...
    scaled = np.exp(_np(model.balancer.log_scale)) * losses
    assert np.all((scaled > 0.6) & (scaled < 1.6)), scaled  # ...both scaled to about 1


# -- weights from the loss history --------------------------------------------


def test_dwa_in_fit_follows_the_logged_epoch_losses():
    x, y = regression_data(n=64)
    model = two_head(ML)
    model.compile(keras.optimizers.SGD(0.02), loss=LOSS, balancer="dwa")
    # Validation must not feed the averages (they are the training losses').
    h = model.fit(
        x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, validation_data=(x[:8], _slice(y, 0, 8))
    ).history
    a, b = np.array(h["a_loss"]), np.array(h["b_loss"])
    assert h["a_weight"][:2] == pytest.approx([1.0, 1.0]) and h["b_weight"][:2] == pytest.approx([1.0, 1.0])
    for epoch in (2, 3):
        ratios = np.array([a[epoch - 1] / a[epoch - 2], b[epoch - 1] / b[epoch - 2]])
        expected = 2 * np.exp(ratios / 2) / np.sum(np.exp(ratios / 2))
        np.testing.assert_allclose([h["a_weight"][epoch], h["b_weight"][epoch]], expected, rtol=1e-4)
        # The task whose loss fell slower gets the larger weight.
        slower = int(np.argmax(ratios))
        assert [h["a_weight"][epoch], h["b_weight"][epoch]][slower] > 1.0
    assert abs(h["a_weight"][3] - 1.0) > 1e-3  # the weights did move


def test_scale_normalized_makes_the_weighted_losses_comparable():
    x, y = regression_data(n=64)
    y = {"a": y["a"] * 0.05, "b": y["b"] * 30.0}  # losses about 1e-2 and 1e5
    static = two_head(ML)
    static.compile(keras.optimizers.Adam(0.01), loss=LOSS)
    hs = static.evaluate(x, y, verbose=0, return_dict=True)
    assert hs["b_loss"] / hs["a_loss"] > 1e4  # static weights: b dominates
    model = two_head(ML)
    model.compile(keras.optimizers.Adam(0.01), loss=LOSS, balancer=W.ScaleNormalized(warmup_steps=4))
    h = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history
    weighted = np.array([h["a_weight"][-1] * h["a_loss"][-1], h["b_weight"][-1] * h["b_loss"][-1]])
    # Each weighted loss is of order 1 (a falling loss sits below its running
    # mean, so below 1), within a factor 10 of each other.
    assert np.all((weighted > 0.1) & (weighted < 2.0)), weighted
    assert weighted.max() / weighted.min() < 10


def test_metric_driven_sets_next_epochs_weights_from_the_validation_losses():
    x, y = regression_data(n=64)
    xv, yv = regression_data(n=32, seed=1)
    model = two_head(ML)
    model.compile(keras.optimizers.SGD(0.02), loss=LOSS, balancer="metric_driven")
    h = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, validation_data=(xv, yv)).history
    assert h["a_weight"][0] == pytest.approx(1.0) and h["b_weight"][0] == pytest.approx(1.0)
    for epoch in (1, 2):
        inverse = 1 / np.array([h["val_a_loss"][epoch - 1], h["val_b_loss"][epoch - 1]])
        np.testing.assert_allclose(
            [h["a_weight"][epoch], h["b_weight"][epoch]], 2 * inverse / inverse.sum(), rtol=1e-4
        )
    without_validation = two_head(ML)
    without_validation.compile("sgd", loss=LOSS, balancer="metric_driven")
    with pytest.raises(ValueError, match=r"\['val_a_loss', 'val_b_loss'\].*validation_data"):
        without_validation.fit(x, y, epochs=1, verbose=0)


# -- randomness ------------------------------------------------------------------


def test_rlw_with_a_seed_repeats_its_training_run():
    x, y = regression_data(n=64)
    runs = []
    for _ in range(2):
        model = two_head(ML)
        model.compile(keras.optimizers.SGD(0.05), loss=LOSS, balancer=W.RLW(seed=5))
        runs.append((model, model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history))
    (m1, h1), (m2, h2) = runs
    assert max_weight_diff(m1, m2) == 0.0
    assert h1["a_weight"] == h2["a_weight"]
    assert h1["a_weight"][0] != pytest.approx(0.5, abs=1e-3)  # random, not uniform
    np.testing.assert_allclose(np.add(h1["a_weight"], h1["b_weight"]), 1.0, rtol=1e-5)


# -- the update a log-based method applies is its formula's -----------------------


def _static_reference(template):
    reference = copy_weights(template, two_head(ML, seed=7))
    reference.compile(keras.optimizers.SGD(0.01), loss=LOSS)
    return reference


@pytest.mark.parametrize("method", ["geometric_mean", "famo", "stch"])
def test_log_based_update_equals_the_numpy_weights_applied_to_a_static_model(method):
    """Each step of the balanced model equals a step of a static-weight model
    whose weights a NumPy transcription computed from the same losses."""
    x, y = regression_data(n=32)
    make = {
        "geometric_mean": lambda: W.GeometricMean(),
        "famo": lambda: W.FAMO(w_lr=0.2),
        "stch": lambda: W.STCH(warmup_epochs=1),
    }[method]
    model = two_head(ML)
    reference = _static_reference(model)
    model.compile(keras.optimizers.SGD(0.01), loss=LOSS, balancer=make())
    epochs, batch = 3, 16
    # Validation each epoch must change no state (FAMO's logits and previous
    # losses, STCH's nadir): the transcription below never sees it.
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0,
              validation_data=(x[:8], _slice(y, 0, 8)))

    famo = _NumpyFAMO(2, w_lr=0.2)
    stch = _NumpySTCH(2, warmup_epoch=1)
    for epoch in range(epochs):
        for start in range(0, len(x), batch):
            xb, yb = x[start:start + batch], _slice(y, start, start + batch)
            losses = _task_losses(reference, xb, yb)
            if method == "geometric_mean":
                weights = np.sqrt(np.prod(losses)) / (2 * losses)
            elif method == "famo":
                weights = famo.step(losses)[1]
            else:
                weights = stch.step(epoch, losses)[1]
            reference.balancer.assign(weights)
            reference.fit(xb, yb, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    assert max_weight_diff(model, reference) < 1e-5
    untouched = two_head(ML)
    assert max_weight_diff(model, untouched) > 1e-3
    if method == "famo":
        np.testing.assert_allclose(_np(model.balancer.logits), famo.w, rtol=1e-3, atol=1e-5)


# -- a non-finite step leaves the balancer's state alone -------------------------


@pytest.mark.parametrize("method", ["famo", "dwa", "scale_normalized", "stch", "rlw"])
def test_a_skipped_non_finite_step_leaves_the_balancer_state_as_it_was(method):
    """With compile(nonfinite="skip"), a batch whose loss is NaN is skipped,
    the balancer's per-step state included: the run equals one without it."""
    x, y = regression_data(n=48)
    bad = {k: v.copy() for k, v in y.items()}
    bad["b"][16:24] = np.nan  # the third batch of 8
    keep = np.r_[0:16, 24:48]
    balancers = {
        "famo": lambda: W.FAMO(w_lr=0.2),
        "dwa": lambda: W.DWA(),
        "scale_normalized": lambda: W.ScaleNormalized(warmup_steps=2),
        "stch": lambda: W.STCH(warmup_epochs=1),
        "rlw": lambda: W.RLW(seed=3),
    }
    runs = []
    for xs, ys in ((x, bad), (x[keep], {k: v[keep] for k, v in y.items()})):
        model = two_head(ML)
        model.compile(keras.optimizers.SGD(0.01), loss=LOSS, balancer=balancers[method](),
                      nonfinite="skip")
        # Two epochs: DWA and STCH fold each epoch's sums into their state.
        model.fit(xs, ys, batch_size=8, epochs=2, shuffle=False, verbose=0)
        runs.append(model)
    skipped, clean = runs
    states = [[_np(v) for v in run.balancer.non_trainable_variables] for run in runs]
    assert len(states[0]) > 1
    for got, expected in zip(*states):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    if method == "famo":
        assert int(_np(skipped.balancer.steps)) == int(_np(clean.balancer.steps)) == 10
    assert max_weight_diff(skipped, clean) < 1e-6
