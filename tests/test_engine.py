"""The engine: per-task gradients inside fit, aggregated, on every backend.

References are independent of the engine: each task's gradient comes from
Keras's own training of a plain `keras.Model` (one SGD step with lr 1 on
that task alone moves the weights by minus its gradient), and the
aggregators are transcribed in numpy.
"""

import keras
import numpy as np
import pytest
from keras import layers

import multiloss
from helpers import copy_weights, max_weight_diff, network_weights, regression_data, two_head

ML = multiloss.MultiLossModel
LOSS = {"a": "mse", "b": "mse"}


def _batch(n=16):
    x, y = regression_data(n=n)
    y["b"] = -3.0 * y["b"]  # make the tasks conflict on the trunk
    return x, y


def keras_task_gradients(template, x, y, loss=LOSS):
    """Per task, the gradient of its loss w.r.t. every network weight, from
    Keras: one step of SGD(lr=1) on that task alone."""
    before = network_weights(template)
    grads = {}
    for task in loss:
        reference = copy_weights(template, two_head(keras.Model, seed=9))
        reference.compile(
            keras.optimizers.SGD(1.0), loss=loss,
            loss_weights=[float(t == task) for t in sorted(loss)],
        )
        reference.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        grads[task] = [b - a for a, b in zip(network_weights(reference), before)]
    return grads


def _one_step(template, balancer, x, y, lr=0.1, **compile_kwargs):
    model = copy_weights(template, two_head(ML, seed=5))
    model.compile(keras.optimizers.SGD(lr), loss=LOSS, balancer=balancer, **compile_kwargs)
    history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return model, history.history


def _trunk(flat):
    return np.concatenate([g.ravel() for g in flat[:2]])  # trunk kernel and bias


def _expected_weights(template, grads, trunk_direction, lr, head_weights=(1.0, 1.0)):
    """Weights after one SGD step: the trunk moves along `trunk_direction`,
    each head along its own task's gradient."""
    before = network_weights(template)
    sizes = [w.size for w in before[:2]]
    pieces = np.split(trunk_direction, np.cumsum(sizes)[:-1])
    expected = [w - lr * p.reshape(w.shape) for w, p in zip(before[:2], pieces)]
    # Heads: a = weights[2:4], b = weights[4:6] (two_head's layer order).
    for (start, task), c in zip(((2, "a"), (4, "b")), head_weights):
        for i in (start, start + 1):
            expected.append(before[i] - lr * c * grads[task][i])
    return expected


def test_sum_inside_fit_equals_plain_keras_training():
    x, y = regression_data(n=64)
    ours = two_head(ML)
    theirs = copy_weights(ours, two_head(keras.Model, seed=1))
    for model, kwargs in ((ours, {"balancer": "sum"}), (theirs, {})):
        model.compile(keras.optimizers.Adam(0.01), loss={"a": "mse", "b": "mae"},
                      loss_weights={"a": 1.0, "b": 0.5}, **kwargs)
    h1 = ours.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history
    h2 = theirs.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history
    assert max_weight_diff(ours, theirs) < 1e-6
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)
    assert h1["b_weight"] == pytest.approx([0.5] * 3)


def np_mgda_two(g1, g2):
    """Sener & Koltun, Algorithm 1 for two tasks: the min-norm point of the
    segment [g1, g2] in closed form."""
    alpha = np.dot(g2 - g1, g2) / max(np.dot(g1 - g2, g1 - g2), 1e-20)
    alpha = np.clip(alpha, 0.0, 1.0)
    return np.array([alpha, 1.0 - alpha])


def np_pcgrad_two(g1, g2):
    """Yu et al., Algorithm 1 for two tasks (the order does not matter)."""
    out = []
    for gi, gj in ((g1, g2), (g2, g1)):
        dot = np.dot(gi, gj)
        out.append(gi - dot / np.dot(gj, gj) * gj if dot < 0 else gi)
    return out[0] + out[1]


@pytest.mark.parametrize("method", ["pcgrad", "mgda"])
def test_aggregators_inside_fit_equal_numpy_on_the_same_task_gradients(method):
    x, y = _batch()
    template = two_head(ML, seed=3)
    grads = keras_task_gradients(template, x, y)
    g1, g2 = _trunk(grads["a"]), _trunk(grads["b"])
    assert np.dot(g1, g2) < 0, "the test needs conflicting task gradients"
    if method == "mgda":
        w = np_mgda_two(g1, g2)
        direction = w[0] * g1 + w[1] * g2
    else:
        direction = np_pcgrad_two(g1, g2)
    model, history = _one_step(template, method, x, y)
    expected = _expected_weights(template, grads, direction, lr=0.1)
    for got, want in zip(network_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    if method == "mgda":
        assert history["a_weight"][0] == pytest.approx(w[0], rel=1e-4)


def test_diagnostics_equal_numpy_on_the_task_gradients():
    x, y = _batch()
    template = two_head(ML, seed=3)
    grads = keras_task_gradients(template, x, y)
    g1, g2 = _trunk(grads["a"]), _trunk(grads["b"])
    n1, n2 = np.linalg.norm(g1), np.linalg.norm(g2)
    for balancer in ("sum", "static"):  # gradient level, and loss level opt-in
        _, history = _one_step(template, balancer, x, y, diagnostics=True)
        assert history["a_grad_norm"][0] == pytest.approx(n1, rel=1e-4)
        assert history["b_grad_norm"][0] == pytest.approx(n2, rel=1e-4)
        assert history["grad_cos_min"][0] == pytest.approx(np.dot(g1, g2) / (n1 * n2), rel=1e-4)
        assert history["grad_norm_ratio"][0] == pytest.approx(max(n1, n2) / min(n1, n2), rel=1e-4)


def test_compile_shared_overrides_the_automatic_split():
    # Only the trunk's kernel is balanced; its bias gets the plain sum.
    x, y = _batch()
    template = two_head(ML, seed=3)
    grads = keras_task_gradients(template, x, y)
    model = copy_weights(template, two_head(ML, seed=5))
    kernel = model.get_layer("trunk").kernel
    model.compile(keras.optimizers.SGD(0.1), loss=LOSS, balancer="mgda", shared=[kernel])
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    g1, g2 = grads["a"][0].ravel(), grads["b"][0].ravel()
    w = np_mgda_two(g1, g2)
    before = network_weights(template)
    got = network_weights(model)
    np.testing.assert_allclose(got[0].ravel(), before[0].ravel() - 0.1 * (w[0] * g1 + w[1] * g2),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[1], before[1] - 0.1 * (grads["a"][1] + grads["b"][1]),
                               rtol=1e-4, atol=1e-6)


def _variables(model):
    return [np.array(v) for v in model.variables] + [np.array(v) for v in model.optimizer.variables]


@pytest.mark.parametrize("balancer", ["static", "mgda"])
def test_skip_leaves_every_variable_bit_identical_and_counts(balancer):
    x, y = _batch(32)
    y["b"][20] = np.nan  # the second batch of 16 has a non-finite target
    model = two_head(ML, seed=3)
    model.compile(keras.optimizers.Adam(0.01), loss=LOSS, balancer=balancer, nonfinite="skip")
    model.fit(x[:16], {k: v[:16] for k, v in y.items()}, batch_size=16, epochs=1, verbose=0)
    before = _variables(model)
    history = model.fit(x[16:], {k: v[16:] for k, v in y.items()}, batch_size=16, epochs=1,
                        verbose=0).history
    after = _variables(model)
    assert history["skipped_steps"] == [1.0]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # A clean epoch afterwards trains and skips nothing.
    history = model.fit(x[:16], {k: v[:16] for k, v in y.items()}, batch_size=16, epochs=1,
                        verbose=0).history
    assert history["skipped_steps"] == [0.0]
    assert np.isfinite(history["loss"][0])


@pytest.mark.parametrize("balancer", ["static", "pcgrad", "famo"])
def test_raise_names_the_task_and_changes_nothing(balancer):
    x, y = _batch(64)
    y["b"][35] = np.inf  # the third batch of 16; a clean fourth follows
    model = two_head(ML, seed=3)
    model.compile(keras.optimizers.Adam(0.01), loss=LOSS, balancer=balancer)
    clean = {k: v[:16] for k, v in y.items()}
    model.fit(x[:16], clean, batch_size=16, epochs=1, verbose=0)
    before = _variables(model)  # the network, the balancer's state, the optimizer's
    with pytest.raises(FloatingPointError, match=r"task\(s\) \['b'\] at epoch 1, batch 2"):
        model.fit(x, y, batch_size=16, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    # Two clean steps ran; replaying them from `before` gives the state left.
    replay = two_head(ML, seed=3)
    replay.compile(keras.optimizers.Adam(0.01), loss=LOSS, balancer=balancer)
    replay.fit(x[:16], clean, batch_size=16, epochs=1, verbose=0)
    replay.fit(x[:32], {k: v[:32] for k, v in y.items()}, batch_size=16, epochs=2,
               initial_epoch=1, shuffle=False, verbose=0)
    assert len(before) == len(_variables(replay))
    for a, b in zip(_variables(replay), _variables(model)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="jit_compile on torch is torch.compile, not a compiled step")
def test_raise_under_xla_stops_and_changes_nothing():
    # XLA drops assertions: a compiled step must gate its update another way.
    x, y = _batch(32)
    y["b"][20] = np.nan  # the second batch
    model = two_head(ML, seed=3)
    model.compile(keras.optimizers.Adam(0.01), loss=LOSS, jit_compile=True)
    model.fit(x[:16], {k: v[:16] for k, v in y.items()}, batch_size=16, epochs=1, verbose=0)
    before = _variables(model)
    with pytest.raises(FloatingPointError, match=r"task\(s\) \['b'\] at epoch 0, batch 0"):
        model.fit(x[16:], {k: v[16:] for k, v in y.items()}, batch_size=16, epochs=1, verbose=0)
    for a, b in zip(before, _variables(model)):
        np.testing.assert_array_equal(a, b)


def _sqrt_head_model():
    """Head `b` ends in sqrt of a zero output: its loss is finite, its
    gradient (d sqrt / dt at 0) is not, for its head and for the trunk."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,))
    h = layers.Dense(8, activation="tanh", name="trunk")(inputs)
    a = layers.Dense(1, name="a")(h)
    b = layers.Dense(2, kernel_initializer="zeros", name="b_linear")(h)
    b = layers.Lambda(lambda t: keras.ops.sqrt(t), name="b")(b)
    return ML(inputs, {"a": a, "b": b})


@pytest.mark.parametrize("mode", ["parameters", "representation"])
@pytest.mark.parametrize("balancer", ["pcgrad", "mgda"])
def test_a_non_finite_gradient_under_finite_losses_names_its_task(balancer, mode):
    x, y = _batch(16)
    model = _sqrt_head_model()
    extra = {"representation": "trunk"} if mode == "representation" else {}
    model.compile(keras.optimizers.SGD(0.1), loss=LOSS, balancer=balancer, **extra)
    before = [np.array(v) for v in model.trainable_variables]
    assert np.isfinite(model.evaluate(x, y, verbose=0, return_dict=True)["b_loss"])
    with pytest.raises(FloatingPointError, match=r"task\(s\) \['b'\] at epoch 0, batch 0"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for a, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(a, np.array(v))


def test_a_task_without_gradient_path_is_named():
    inputs = keras.Input((4,))
    h = layers.Dense(3, name="trunk")(inputs)
    # "copy" passes the input through untrainable ops only.
    outputs = {"a": layers.Dense(1)(h), "copy": layers.Lambda(lambda t: t[:, :1] * 2.0)(inputs)}
    model = ML(inputs, outputs)
    model.compile("sgd", loss="mse", balancer="sum")
    x = np.ones((8, 4), "float32")
    with pytest.raises(ValueError, match=r"\['copy'\] have no gradient path"):
        model.fit(x, {"a": x[:, :1], "copy": x[:, :1]}, epochs=1, verbose=0)


def test_evaluation_of_an_aggregator_uses_the_fixed_weights():
    x, y = _batch()
    model = two_head(ML, seed=3)
    model.compile("sgd", loss=LOSS, loss_weights={"b": 0.5}, balancer="mgda")
    logs = model.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    assert logs["b_weight"] == pytest.approx(0.5)
    assert logs["loss"] == pytest.approx(logs["a_loss"] + 0.5 * logs["b_loss"], rel=1e-5)


def test_mixed_precision_representation_weights_match_float32():
    # The representation's gradients are float16 and carry the loss scale:
    # their Gram matrix must not overflow (MGDA would fall back to 1/K).
    x, y = _batch(16)
    y["b"] = 100.0 * y["b"]  # scales apart: MGDA's weights are far from 1/2

    def last_step_weights(policy):
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(policy)
        try:
            model = two_head(ML, seed=3)
            model.compile(keras.optimizers.SGD(0.0), loss=LOSS, balancer="mgda",
                          representation="trunk")
            # One step per epoch; the loss scale halves while float16
            # overflows (those steps are skipped by the optimizer).
            history = model.fit(x, y, batch_size=16, epochs=12, verbose=0).history
        finally:
            keras.config.set_dtype_policy(previous)
        return np.array([history["a_weight"][-1], history["b_weight"][-1]])

    reference = last_step_weights("float32")
    assert abs(reference[0] - 0.5) > 0.2
    np.testing.assert_allclose(last_step_weights("mixed_float16"), reference, atol=0.02)


def test_mixed_precision_trains_with_an_aggregator():
    x, y = _batch(32)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = two_head(ML, seed=3)
        model.compile(keras.optimizers.SGD(0.01), loss=LOSS, balancer="mgda")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    finally:
        keras.config.set_dtype_policy(previous)
    assert np.all(np.isfinite(history["loss"]))
    # The aggregator saw unscaled gradients: MGDA's weights sum to one.
    assert history["a_weight"][-1] + history["b_weight"][-1] == pytest.approx(1.0, abs=1e-3)
    assert history["skipped_steps"] == [0.0, 0.0]
