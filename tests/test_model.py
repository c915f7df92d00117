"""MultiLossModel with static weights against Keras's own multi-output training."""

import keras
import numpy as np
import pytest
from keras import layers

import multiloss
from helpers import AddsLoss, copy_weights, max_weight_diff, regression_data, two_head

ML = multiloss.MultiLossModel


def _pair(dict_outputs=True):
    ours = two_head(ML, dict_outputs=dict_outputs)
    theirs = copy_weights(ours, two_head(keras.Model, dict_outputs=dict_outputs, seed=1))
    return ours, theirs


def _fit_both(ours, theirs, x, y, epochs=3, **compile_kwargs):
    for model in (ours, theirs):
        model.compile(optimizer=keras.optimizers.SGD(0.05), **compile_kwargs)
    h1 = ours.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    h2 = theirs.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return h1.history, h2.history


def test_dict_losses_with_loss_weights_equal_keras():
    x, y = regression_data()
    ours, theirs = _pair()
    h1, h2 = _fit_both(
        ours, theirs, x, y, loss={"a": "mse", "b": "mae"}, loss_weights={"a": 0.3, "b": 2.0}
    )
    assert max_weight_diff(ours, theirs) < 1e-6
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)
    np.testing.assert_allclose(h1["a_loss"], h2["a_loss"], rtol=1e-5)
    np.testing.assert_allclose(h1["b_loss"], h2["b_loss"], rtol=1e-5)
    assert h1["a_weight"] == pytest.approx([0.3] * 3)
    assert h1["b_weight"] == pytest.approx([2.0] * 3)


def test_list_losses_with_list_weights_equal_keras():
    x, y = regression_data()
    y_list = [y["a"], y["b"]]
    ours, theirs = _pair(dict_outputs=False)
    h1, h2 = _fit_both(
        ours, theirs, x, y_list, loss=["mse", "mae"], loss_weights=[1.5, 0.5]
    )
    assert ours.task_names == ("a", "b")
    assert max_weight_diff(ours, theirs) < 1e-6
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)
    assert h1["b_weight"] == pytest.approx([0.5] * 3)


def test_same_loss_on_two_outputs_is_summed_not_averaged():
    x, y = regression_data()
    ours, theirs = _pair()
    for model in (ours, theirs):
        model.compile("sgd", loss="mse")
    ours_logs = ours.evaluate(x, y, return_dict=True, verbose=0)
    keras_logs = theirs.evaluate(x, y, return_dict=True, verbose=0)
    pred = ours.predict(x, verbose=0)
    mse_a = np.mean((pred["a"] - y["a"]) ** 2)
    mse_b = np.mean((pred["b"] - y["b"]) ** 2)
    assert ours_logs["a_loss"] == pytest.approx(mse_a, rel=1e-5)
    assert ours_logs["b_loss"] == pytest.approx(mse_b, rel=1e-5)
    assert ours_logs["loss"] == pytest.approx(mse_a + mse_b, rel=1e-5)
    assert ours_logs["loss"] == pytest.approx(keras_logs["loss"], rel=1e-5)
    assert abs(ours_logs["loss"] - (mse_a + mse_b) / 2) > 0.1 * ours_logs["loss"]


def _model_with_added_losses(model_class, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = layers.Dense(8, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.01), name="trunk")(inputs)
    h = AddsLoss(0.5, name="adds")(h)
    return model_class(inputs, {"a": layers.Dense(1, name="a")(h), "b": layers.Dense(2, name="b")(h)})


def test_added_loss_is_a_task_with_its_own_weight():
    x, y = regression_data()
    model = _model_with_added_losses(ML)
    model.compile("sgd", loss="mse", loss_weights={"added_loss": 3.0})
    assert model.task_names == ("a", "b", "added_loss")
    logs = model.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    trunk = keras.Model(model.input, model.get_layer("trunk").output)
    h = trunk.predict(x, verbose=0)
    kernel = keras.ops.convert_to_numpy(model.get_layer("trunk").kernel)
    expected_added = 0.5 * np.mean(h**2) + 0.01 * np.sum(kernel**2)
    assert logs["added_loss_loss"] == pytest.approx(expected_added, rel=1e-5)
    assert logs["added_loss_weight"] == pytest.approx(3.0)
    assert logs["loss"] == pytest.approx(
        logs["a_loss"] + logs["b_loss"] + 3.0 * expected_added, rel=1e-5
    )


def test_added_loss_trains_like_keras():
    x, y = regression_data()
    ours = _model_with_added_losses(ML)
    theirs = copy_weights(ours, _model_with_added_losses(keras.Model, seed=1))
    h1, h2 = _fit_both(ours, theirs, x, y, loss={"a": "mse", "b": "mse"})
    assert max_weight_diff(ours, theirs) < 1e-6
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)


def test_single_output_model_trains_exactly_like_keras():
    x, y = regression_data()

    def build(cls):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((6,))
        h = layers.Dense(8, activation="relu")(inputs)
        return cls(inputs, layers.Dense(1, name="out")(h))

    ours = build(ML)
    theirs = copy_weights(ours, build(keras.Model))
    for model in (ours, theirs):
        model.compile(keras.optimizers.Adam(0.01), loss="mse")
    h1 = ours.fit(x, y["a"], batch_size=16, epochs=3, shuffle=False, verbose=0).history
    h2 = theirs.fit(x, y["a"], batch_size=16, epochs=3, shuffle=False, verbose=0).history
    assert ours.task_names == ("out",)
    assert max_weight_diff(ours, theirs) < 1e-6
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)
    np.testing.assert_allclose(h1["out_loss"], h2["loss"], rtol=1e-5)


def test_validation_logs_hold_each_task():
    x, y = regression_data()
    model = two_head(ML)
    model.compile("sgd", loss={"a": "mse", "b": "mae"}, loss_weights={"b": 0.25})
    val = (x[:16], {"a": y["a"][:16], "b": y["b"][:16]})
    history = model.fit(x, y, epochs=1, verbose=0, validation_data=val).history
    for key in ("val_loss", "val_a_loss", "val_b_loss", "val_a_weight", "val_b_weight"):
        assert key in history, key
    logs = model.evaluate(*val, return_dict=True, verbose=0)
    assert history["val_a_loss"][0] == pytest.approx(logs["a_loss"], rel=1e-5)
    assert history["val_b_weight"][0] == pytest.approx(0.25)
    assert logs["loss"] == pytest.approx(logs["a_loss"] + 0.25 * logs["b_loss"], rel=1e-5)


class SubclassedTwoHead(ML):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.trunk = layers.Dense(8, activation="tanh")
        self.adds = AddsLoss(0.1)
        self.head_a = layers.Dense(1)
        self.head_b = layers.Dense(2)

    def call(self, x):
        h = self.adds(self.trunk(x))
        return {"a": self.head_a(h), "b": self.head_b(h)}


def test_subclassed_model_resolves_tasks_at_first_fit():
    x, y = regression_data()
    model = SubclassedTwoHead()
    model.compile("adam", loss={"a": "mse", "b": "mae"}, loss_weights={"b": 2.0})
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0).history
    assert model.task_names == ("a", "b", "added_loss")
    assert model.balancer.get_task_weights() == {"a": 1.0, "b": 2.0, "added_loss": 1.0}
    assert {"a_loss", "b_loss", "added_loss_loss", "b_weight"} <= set(history)
    logs = model.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    pred = model.predict(x, verbose=0)
    assert logs["a_loss"] == pytest.approx(np.mean((pred["a"] - y["a"]) ** 2), rel=1e-5)
    assert logs["b_loss"] == pytest.approx(np.mean(np.abs(pred["b"] - y["b"])), rel=1e-5)


def test_tensorboard_receives_task_logs(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    x, y = regression_data()
    model = two_head(ML)
    model.compile("sgd", loss={"a": "mse", "b": "mae"})
    model.fit(
        x, y, epochs=2, verbose=0, validation_split=0.25,
        callbacks=[keras.callbacks.TensorBoard(str(tmp_path))],
    )
    for run in ("train", "validation"):
        acc = event_accumulator.EventAccumulator(str(tmp_path / run))
        acc.Reload()
        tags = set(acc.Tags().get("tensors", [])) | set(acc.Tags().get("scalars", []))
        for tag in ("epoch_loss", "epoch_a_loss", "epoch_b_loss", "epoch_a_weight", "epoch_b_weight"):
            assert tag in tags, (run, tag, tags)


class _EpochLogs(keras.callbacks.Callback):
    """Records each epoch's logs; reads no batch logs."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(dict(logs))


class _BatchLogs(_EpochLogs):
    """Records each batch's logs too."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(dict(logs))


def test_batch_logs_hold_each_task_as_numbers():
    # The step returns the task entries packed in one vector; callbacks, the
    # progress bar and `train_on_batch` must still see each entry by name.
    x, y = regression_data()
    model = two_head(ML)
    model.compile("sgd", loss={"a": "mse", "b": "mae"}, loss_weights={"b": 0.25})
    recorder = _BatchLogs()
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[recorder]).history
    expected = {"loss", "a_loss", "b_loss", "a_weight", "b_weight", "skipped_steps"}
    assert len(recorder.batches) == 4
    for logs in recorder.batches:
        assert set(logs) == expected
        assert all(isinstance(value, float) for value in logs.values())
    # The last batch's running means are the epoch's.
    for key in expected:
        assert recorder.batches[-1][key] == pytest.approx(history[key][0], rel=1e-6)
    assert recorder.batches[0]["b_weight"] == pytest.approx(0.25)

    pred = model.predict(x, verbose=0)  # the weights train_on_batch computes its losses with
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == expected
    assert float(logs["a_loss"]) == pytest.approx(np.mean((pred["a"] - y["a"]) ** 2), rel=1e-5)
    assert float(logs["b_loss"]) == pytest.approx(np.mean(np.abs(pred["b"] - y["b"])), rel=1e-5)
    assert float(logs["loss"]) == pytest.approx(
        float(logs["a_loss"]) + 0.25 * float(logs["b_loss"]), rel=1e-5
    )


def test_epoch_logs_hold_every_task_when_no_callback_reads_batches():
    # Without a reader of batch logs (verbose=0, epoch-level callbacks only),
    # `fit` leaves the task entries out of each batch's logs; the epoch's
    # logs must still hold them all, as in a run whose callback reads every
    # batch.
    x, y = regression_data()
    runs = []
    for batch_reader in (False, True):
        model = two_head(ML)
        model.compile("sgd", loss={"a": "mse", "b": "mae"}, loss_weights={"b": 0.25})
        recorder = _BatchLogs() if batch_reader else _EpochLogs()
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[recorder],
                            validation_data=(x, y)).history
        runs.append((history, recorder.epochs))
    (history, epochs), (reference, reference_epochs) = runs
    names = {"a_loss", "b_loss", "a_weight", "b_weight", "skipped_steps"}
    expected = {"loss"} | names | {f"val_{name}" for name in {"loss"} | names}
    assert set(history) == expected == set(reference)
    for key in expected:
        assert history[key] == pytest.approx(reference[key], rel=1e-6), key
    assert [set(logs) for logs in epochs] == [expected, expected]
    assert epochs[1]["a_loss"] == pytest.approx(reference_epochs[1]["a_loss"], rel=1e-6)
