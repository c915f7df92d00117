"""The operations a balancer's rule runs at every training step: those of
`keras.ops`, with the same arguments and results, cheap in an eager step.

TensorFlow and JAX trace a step once, so what `keras.ops` does in Python
around each operation (convert and check the arguments, standardise
dtypes) is paid once; there these are `keras.ops`'s own functions. torch
runs every step eagerly, and on the K numbers a balancer handles that work
costs more than the operations: FAMO's rule took 157 us through
`keras.ops` and 83 us in the same torch calls (2 cores, K=2). There each
function calls torch directly when its tensor arguments are float32 and
`keras.ops` otherwise (`multiloss.engine.torch.step_ops`). `assign(variable,
value)` is `variable.assign(value)` and `assign_add(variable, value)`
`variable.assign_add(value)`, likewise (8.8 us through Keras on torch, of
which the copy takes 0.3); call them for their effect: what they return
differs between backends (on torch, `assign_add` returns nothing).

Balancers stay backend-free: they call `multiloss.engine.ops` for these
functions and `keras.ops` for the rest.

Example:

```python
import keras
from multiloss.engine import ops as step_ops
x = keras.ops.array([1.0, 2.0])
print(keras.ops.convert_to_numpy(step_ops.softmax(step_ops.log(x))))  # [1/3, 2/3]
```
"""

import keras
from keras import ops as _keras_ops

__all__ = [
    "sum", "log", "exp", "sqrt", "abs", "sign", "relu", "softmax", "log_softmax",
    "concatenate", "stack", "where", "stop_gradient", "assign", "assign_add",
]

_VARIABLE_METHODS = ("assign", "assign_add")

if keras.backend.backend() == "torch":
    from multiloss.engine.torch import step_ops as _step_ops

    _functions = _step_ops()
else:
    _functions = {
        name: getattr(keras.Variable if name in _VARIABLE_METHODS else _keras_ops, name)
        for name in __all__
    }

(
    sum, log, exp, sqrt, abs, sign, relu, softmax, log_softmax,
    concatenate, stack, where, stop_gradient, assign, assign_add,
) = (_functions[name] for name in __all__)
