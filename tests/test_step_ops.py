"""`multiloss.engine.ops` gives `keras.ops`'s results: the same values and
dtypes for float32 tensors (torch's direct calls) and for every other
argument (`keras.ops` itself).

On TensorFlow and JAX the functions are `keras.ops`'s own and `assign` and
`assign_add` are `keras.Variable`'s (the first test says so); comparing them with
themselves could not fail, so the comparisons run on torch only."""

import keras
import numpy as np
import pytest
from keras import ops

from conftest import BACKEND
from multiloss.engine import ops as step_ops

UNARY = ("log", "exp", "sqrt", "abs", "sign", "relu", "softmax", "log_softmax", "stop_gradient")

torch_only = pytest.mark.skipif(
    BACKEND != "torch", reason="engine.ops is keras.ops on this backend (see the first test)"
)


@pytest.mark.skipif(BACKEND == "torch", reason="torch has its own functions: compared below")
def test_engine_ops_are_keras_ops_where_the_step_is_traced():
    for name in step_ops.__all__:
        if name in ("assign", "assign_add"):
            continue
        assert getattr(step_ops, name) is getattr(ops, name), name
    assert step_ops.assign is keras.Variable.assign
    assert step_ops.assign_add is keras.Variable.assign_add


def _inputs():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 4)).astype("float32")
    values[0, 0] = 0.0
    return {
        "float32 tensor": ops.convert_to_tensor(values),
        "float32 vector": ops.convert_to_tensor(values[1]),
        "float16 tensor": ops.convert_to_tensor(values, "float16"),
        "int32 tensor": ops.convert_to_tensor(np.arange(-3, 5, dtype="int32")),
        "float64 numpy": values.astype("float64"),
        "python list": [0.5, 2.0, 3.0],
        "variable": keras.Variable(values),
    }


def _same(function, *args, **kwargs):
    """`step_ops.function` gives what `keras.ops.function` gives, or raises
    what it raises."""
    try:
        expected = getattr(ops, function)(*args, **kwargs)
    except Exception as error:
        with pytest.raises(type(error)):
            getattr(step_ops, function)(*args, **kwargs)
        return
    _same_value(getattr(step_ops, function)(*args, **kwargs), expected)


def _same_value(actual, expected):
    actual, expected = ops.convert_to_tensor(actual), ops.convert_to_tensor(expected)
    assert keras.backend.standardize_dtype(actual.dtype) == keras.backend.standardize_dtype(
        expected.dtype
    )
    assert tuple(actual.shape) == tuple(expected.shape)
    np.testing.assert_array_equal(ops.convert_to_numpy(actual), ops.convert_to_numpy(expected))


@torch_only
@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("kind", list(_inputs()))
def test_unary_ops_equal_keras_ops(name, kind):
    x = _inputs()[kind]
    if name in ("log", "sqrt"):
        x = ops.abs(ops.convert_to_tensor(x)) + 1 if kind != "variable" else x
    _same(name, x)


@torch_only
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("kind", ["float32 tensor", "int32 tensor", "float64 numpy"])
def test_sum_equals_keras_sum(axis, keepdims, kind):
    x = _inputs()[kind]
    if kind == "int32 tensor" and axis == 1:
        axis = 0
    _same("sum", x, axis=axis, keepdims=keepdims)


@torch_only
@pytest.mark.parametrize("axis", [0, 1])
def test_softmax_axis_equals_keras(axis):
    x = _inputs()["float32 tensor"]
    _same("softmax", x, axis=axis)
    _same("log_softmax", x, axis=axis)


@torch_only
@pytest.mark.parametrize(
    "parts",
    [
        ["float32 vector", "float32 vector"],
        ["float32 vector", "int32 tensor"],
        ["float32 vector", "float16 tensor"],
        ["python list", "float32 vector"],
    ],
)
def test_concatenate_equals_keras(parts):
    inputs = _inputs()
    xs = [inputs[p] if p != "float16 tensor" else ops.reshape(inputs[p], (-1,)) for p in parts]
    _same("concatenate", xs)
    rows = [ops.reshape(ops.convert_to_tensor(x), (1, -1))[:, :3] for x in xs]
    _same("concatenate", rows, axis=1)


def _gradient(fn, x):
    """d sum(fn(x)) / dx, the backend's way."""
    if BACKEND == "jax":
        import jax

        return jax.grad(lambda v: ops.sum(fn(v)))(x)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.Variable(x)
        with tf.GradientTape() as tape:
            total = ops.sum(fn(x))
        return tape.gradient(total, x)
    import torch

    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ops.sum(fn(x)), x)
    return grad


def test_stop_gradient_stops_the_gradient():
    x = _inputs()["float32 vector"]
    # d/dx sum(stop(x) * x) = x; without the stop it would be 2x.
    grad = _gradient(lambda v: step_ops.stop_gradient(v) * v, x)
    np.testing.assert_allclose(ops.convert_to_numpy(grad), ops.convert_to_numpy(x), rtol=1e-6)


@torch_only
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("kind", ["float32 tensor", "int32 tensor", "float16 tensor"])
def test_stack_equals_keras(axis, kind):
    x = ops.convert_to_tensor(_inputs()[kind])
    if len(x.shape) == 1:
        x = ops.reshape(x, (2, -1))
    _same("stack", [x, x * 2], axis=axis)
    _same("stack", [x, ops.cast(x, "float32")], axis=axis)


@torch_only
@pytest.mark.parametrize(
    "branches",
    [
        ["float32 tensor", "float32 tensor"],
        ["float32 tensor", "python float"],
        ["python float", "float32 tensor"],
        ["int32 tensor", "float32 tensor"],
        ["float16 tensor", "float16 tensor"],
        ["float64 numpy", "float32 tensor"],
    ],
)
def test_where_equals_keras_where(branches):
    inputs = {**_inputs(), "python float": 0.25}
    x1, x2 = (inputs[b] for b in branches)
    if branches[0] == "int32 tensor":
        x1 = ops.reshape(ops.convert_to_tensor(x1)[:4], (1, 4))
    if branches == ["float32 tensor", "float32 tensor"]:
        x2 = -ops.exp(x2)  # another tensor: a swap of the branches shows
    condition = ops.convert_to_tensor(_inputs()["float32 tensor"]) > 0
    _same("where", condition, x1, x2)
    _same("where", ops.cast(condition, "int32"), x1, x2)  # not a bool: keras.ops's path


@torch_only
def test_where_broadcasts_a_scalar_condition_as_keras_does():
    # ScaleNormalized's evaluation: one step count for K means.
    mean, observed = ops.convert_to_tensor([1.0, 2.0]), ops.convert_to_tensor([5.0, 7.0])
    for steps in (0.0, 3.0):
        condition = ops.convert_to_tensor(steps) > 0
        _same("where", condition, mean, observed)
        chosen = ops.convert_to_numpy(step_ops.where(condition, mean, observed))
        np.testing.assert_array_equal(chosen, [1.0, 2.0] if steps else [5.0, 7.0])


@torch_only
@pytest.mark.parametrize("kind", ["float32 tensor", "float16 tensor", "float64 numpy"])
def test_assign_equals_keras_assign(kind):
    value = _inputs()[kind]
    ours = keras.Variable(np.zeros((3, 4), "float32"))
    theirs = keras.Variable(np.zeros((3, 4), "float32"))
    step_ops.assign(ours, value)
    theirs.assign(value)
    _same_value(ours.value, theirs.value)
    counter = keras.Variable(0, dtype="int32", trainable=False)
    expected = keras.Variable(0, dtype="int32", trainable=False)
    step_ops.assign(counter, ops.convert_to_tensor(2.7))
    expected.assign(ops.convert_to_tensor(2.7))
    _same_value(counter.value, expected.value)
    step_ops.assign(counter, ops.convert_to_tensor(7, "int32"))  # the copy's own path
    expected.assign(ops.convert_to_tensor(7, "int32"))
    _same_value(counter.value, expected.value)


@torch_only
@pytest.mark.parametrize("kind", ["float32 tensor", "float16 tensor", "float64 numpy"])
def test_assign_add_equals_keras_assign_add(kind):
    value = _inputs()[kind]
    start = np.arange(12, dtype="float32").reshape(3, 4)
    ours, theirs = keras.Variable(start), keras.Variable(start)
    step_ops.assign_add(ours, value)
    theirs.assign_add(value)
    _same_value(ours.value, theirs.value)
    counter = keras.Variable(3.0, trainable=False)
    expected = keras.Variable(3.0, trainable=False)
    step_ops.assign_add(counter, 1.0)  # a Python number, as DWA's step count
    expected.assign_add(1.0)
    _same_value(counter.value, expected.value)
    count = keras.Variable(3, dtype="int32", trainable=False)
    expected_count = keras.Variable(3, dtype="int32", trainable=False)
    step_ops.assign_add(count, 2)
    expected_count.assign_add(2)
    _same_value(count.value, expected_count.value)
    step_ops.assign_add(count, 2.5)  # torch's add_ would refuse a float into an int
    expected_count.assign_add(2.5)
    _same_value(count.value, expected_count.value)


@torch_only
@pytest.mark.parametrize("trainable", [False, True])
@pytest.mark.parametrize("method", ["assign", "assign_add"])
def test_assign_of_a_value_with_a_gradient_keeps_the_variable_a_leaf(method, trainable):
    import torch

    variable = keras.Variable(np.ones((2,), "float32"), trainable=trainable)
    source = torch.tensor([1.0, 2.0], requires_grad=True)
    getattr(step_ops, method)(variable, source * 3)
    stored = variable.value
    expected = [3.0, 6.0] if method == "assign" else [4.0, 7.0]
    np.testing.assert_array_equal(ops.convert_to_numpy(stored), expected)
    assert stored.grad_fn is None
    assert stored.requires_grad is trainable


@torch_only
def test_assign_of_another_shape_raises_and_changes_nothing():
    variable = keras.Variable(np.ones((2,), "float32"))
    with pytest.raises(ValueError, match="shape"):
        step_ops.assign(variable, ops.zeros((3,)))
    with pytest.raises(ValueError, match="shape"):
        step_ops.assign(variable, ops.zeros((1,)))  # torch's copy_ would broadcast it
    np.testing.assert_array_equal(ops.convert_to_numpy(variable), [1.0, 1.0])


@torch_only
def test_assign_in_a_stateless_scope_is_recorded_not_made():
    variable = keras.Variable(np.ones((2,), "float32"))
    with keras.StatelessScope() as scope:
        step_ops.assign(variable, ops.convert_to_tensor([5.0, 6.0]))
        recorded = scope.get_current_value(variable)
    np.testing.assert_array_equal(ops.convert_to_numpy(recorded), [5.0, 6.0])
    for added in (ops.convert_to_tensor([5.0, 6.0]), 2.0):
        with keras.StatelessScope() as scope:
            step_ops.assign_add(variable, added)
            recorded = scope.get_current_value(variable)
        expected = 1.0 + np.broadcast_to(ops.convert_to_numpy(added), (2,))
        np.testing.assert_array_equal(ops.convert_to_numpy(recorded), expected)
    np.testing.assert_array_equal(ops.convert_to_numpy(variable), [1.0, 1.0])
