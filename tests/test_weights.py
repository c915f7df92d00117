"""Changing task weights during training takes effect on every backend."""

import keras
import pytest

import multiloss
from helpers import copy_weights, max_weight_diff, regression_data, two_head

ML = multiloss.MultiLossModel
LOSS = {"a": "mse", "b": "mse"}


def _model(template=None, **compile_kwargs):
    model = two_head(ML)
    if template is not None:
        copy_weights(template, model)
    # Plain SGD keeps no state: a fresh run from the same weights is the same
    # optimisation problem, so it is an independent reference.
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSS, **compile_kwargs)
    return model


def _slice(data, start, stop):
    return {k: v[start:stop] for k, v in data.items()} if isinstance(data, dict) else data[start:stop]


def test_epoch_schedule_equals_a_fresh_run_started_with_the_new_weights():
    x, y = regression_data(n=64)
    initial = _model()
    scheduled = _model(initial)
    schedule = multiloss.callbacks.WeightSchedule(lambda epoch: {"b": 1.0 if epoch == 0 else 5.0})
    history = scheduled.fit(
        x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[schedule]
    ).history
    assert history["b_weight"] == pytest.approx([1.0, 5.0])

    first = _model(initial)
    first.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    fresh = _model(first, loss_weights={"b": 5.0})
    fresh.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert max_weight_diff(scheduled, fresh) < 1e-6

    unchanged = _model(first)
    unchanged.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert max_weight_diff(scheduled, unchanged) > 1e-3


def test_step_schedule_takes_effect_at_that_step():
    x, y = regression_data(n=64)
    initial = _model()
    scheduled = _model(initial)
    schedule = multiloss.callbacks.WeightSchedule(
        lambda step: [1.0, 0.1] if step < 3 else [0.2, 4.0], unit="step"
    )
    scheduled.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[schedule])

    first = _model(initial, loss_weights=[1.0, 0.1])
    first.fit(x[:24], _slice(y, 0, 24), batch_size=8, epochs=1, shuffle=False, verbose=0)
    fresh = _model(first, loss_weights=[0.2, 4.0])
    fresh.fit(x[24:], _slice(y, 24, 64), batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert max_weight_diff(scheduled, fresh) < 1e-6
    assert [step for step, _ in schedule.history] == list(range(8))


def test_assign_from_a_closure_is_not_lost_under_jit():
    # The callback holds `model` itself, never `callback.model` (which on JAX
    # writes the in-flight state back), and changes weights mid-epoch, where
    # JAX's fit keeps the state outside the Variables: assign must sync.
    x, y = regression_data(n=64)
    initial = _model()
    model = _model(initial)
    switch = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: model.balancer.assign({"a": 0.0})
        if batch == 3
        else None
    )
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[switch])

    first = _model(initial)
    first.fit(x[:24], _slice(y, 0, 24), batch_size=8, epochs=1, shuffle=False, verbose=0)
    fresh = _model(first, loss_weights={"a": 0.0})
    fresh.fit(x[24:], _slice(y, 24, 64), batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert max_weight_diff(model, fresh) < 1e-6


def test_assign_rejects_bad_weights_and_changes_nothing():
    model = _model(loss_weights={"a": 2.0})
    for bad, message in [
        ({"c": 1.0}, "unknown task"),
        ({"a": -1.0}, "'a'"),
        ({"a": 1.0, "b": float("nan")}, "'b'"),
        ([1.0], "2 tasks"),
        ([1.0, float("inf")], "'b'"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.balancer.assign(bad)
        assert model.balancer.get_task_weights() == {"a": 2.0, "b": 1.0}


def test_weight_schedule_rejects_an_unknown_unit():
    with pytest.raises(ValueError, match="'epoch' and 'step'"):
        multiloss.callbacks.WeightSchedule(lambda e: {}, unit="batch")
