"""multiloss: train one Keras 3 model on several losses, balanced.

- `MultiLossModel`: a `keras.Model` whose loss terms are named tasks.
- `CombinedLoss`: several losses on one output, each its own task.
- `multiloss.weighting`: balancers from loss values.
- `multiloss.aggregators`: balancers from per-task gradients.
- `multiloss.callbacks`: `WeightSchedule`.
- `multiloss.diagnose`: measure the domination effect.
- `multiloss.engine`: the backend-specific step and the custom-loop helpers.
"""

from multiloss import aggregators, balancer, callbacks, engine, weighting
from multiloss.diagnostics import diagnose
from multiloss.losses import CombinedLoss
from multiloss.model import MultiLossModel
from multiloss.tasks import ADDED_LOSS

__version__ = "0.1.0"

__all__ = [
    "ADDED_LOSS",
    "CombinedLoss",
    "MultiLossModel",
    "aggregators",
    "balancer",
    "callbacks",
    "diagnose",
    "engine",
    "weighting",
]
