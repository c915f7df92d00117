"""Every stateful loss-level balancer keeps its state: a run interrupted and
resumed with BackupAndRestore, and a model saved to `.keras` and loaded, end
exactly where an uninterrupted run ends. (That validation changes no state
is checked in test_weighting_training.py, where a changed state shows.)"""

import keras
import numpy as np
import pytest

import multiloss
from helpers import max_weight_diff, regression_data, two_head
from multiloss import weighting as W

ML = multiloss.MultiLossModel
LOSS = {"a": "mse", "b": "mse"}
EPOCHS = 4
BATCH = 8

STATEFUL = {
    "uncertainty": lambda: W.Uncertainty(),
    "imtl_l": lambda: W.IMTLL(),
    "dwa": lambda: W.DWA(),
    "scale_normalized": lambda: W.ScaleNormalized(warmup_steps=3, decay=0.8),
    "famo": lambda: W.FAMO(w_lr=0.1),
    # Warm-up epoch 0, nadir epoch 1, STCH from epoch 2: the interruption
    # falls in an STCH epoch, which needs the saved nadir.
    "stch": lambda: W.STCH(warmup_epochs=1),
    # The training losses: the runs below that resume have no validation.
    "metric_driven": lambda: W.MetricDriven(monitor="{task}_loss"),
    "rlw": lambda: W.RLW(seed=3),
}


class _Crash(Exception):
    pass


class _CrashAt(keras.callbacks.Callback):
    """Raises in the middle of an epoch, after the balancer changed its
    state in that epoch's steps (which the resumed run must not see)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch = epoch, batch
        self._current = None

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self._current == self.epoch and batch == self.batch:
            raise _Crash()


def _data():
    return regression_data(n=32)


def _model(name):
    model = two_head(ML)
    model.compile(keras.optimizers.Adam(0.01), loss=LOSS, balancer=STATEFUL[name]())
    return model


def _fit(model, data, epochs, callbacks=(), **kwargs):
    x, y = data
    return model.fit(
        x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
        callbacks=list(callbacks), **kwargs,
    )


def _state(balancer):
    """The balancer's variables, its seed generator's state included."""
    state = {v.name: np.array(keras.ops.convert_to_numpy(v)) for v in balancer.weights}
    generator = getattr(balancer, "seed_generator", None)
    if generator is not None:
        state["seed"] = np.array(keras.ops.convert_to_numpy(generator.state))
    return state


def _assert_same_state(b1, b2, atol=1e-6):
    s1, s2 = _state(b1), _state(b2)
    assert sorted(s1) == sorted(s2)
    for key in s1:
        np.testing.assert_allclose(s1[key], s2[key], rtol=0, atol=atol, err_msg=key)


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_state_survives_keras_files_and_backup_and_restore(tmp_path, name):
    """The uninterrupted reference trains 4 epochs, saved to .keras after 2.
    A model loaded from that file trains epoch 2 with BackupAndRestore and
    crashes mid-epoch 3; a fresh model resumes from the backup. It must end
    where the reference ends."""
    data = _data()
    reference = _model(name)
    _fit(reference, data, 2)
    path = str(tmp_path / "half.keras")
    reference.save(path)
    saved = _state(reference.balancer)
    _fit(reference, data, EPOCHS, initial_epoch=2)
    fresh = STATEFUL[name]()
    fresh.setup(["a", "b"])
    initial = _state(fresh)
    assert any(not np.array_equal(saved[k], initial[k]) for k in saved), (
        f"{name}: the state did not change in training; the test would prove nothing"
    )

    loaded = keras.saving.load_model(path)
    assert type(loaded.balancer) is type(reference.balancer)
    assert loaded.balancer.get_config() == reference.balancer.get_config()
    for key, value in _state(loaded.balancer).items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)
    backup = str(tmp_path / "backup")
    with pytest.raises(_Crash):
        _fit(loaded, data, EPOCHS, [keras.callbacks.BackupAndRestore(backup), _CrashAt(3, 2)],
             initial_epoch=2)

    resumed = _model(name)
    history = _fit(resumed, data, EPOCHS, [keras.callbacks.BackupAndRestore(backup)]).history
    assert len(history["loss"]) == 1  # it resumed at epoch 3
    assert max_weight_diff(resumed, reference) < 1e-6
    _assert_same_state(resumed.balancer, reference.balancer)
