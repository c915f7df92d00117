"""Loss-level balancers: weights computed from the task loss values.

Each costs one backward pass, like plain training. Use one with
`model.compile(..., balancer=multiloss.weighting.X())` or its alias:

| class | alias | weights from | scale of the update |
|---|---|---|---|
| `Static` | `"static"` | fixed | free (as given) |
| `Uncertainty` | `"uncertainty"` | learned log-variances | free (~1 per weighted loss) |
| `IMTLL` | `"imtl_l"` | learned log-scales | free (~1 per weighted loss) |
| `DWA` | `"dwa"` | last two epochs' loss ratios | sum K |
| `RLW` | `"rlw"` | random, each step | sum 1 |
| `GeometricMean` | `"geometric_mean"` | the losses (GLS) | free |
| `ScaleNormalized` | `"scale_normalized"` | running mean of each loss | free (~1 per weighted loss) |
| `FAMO` | `"famo"` | adaptive logits | sum 1 |
| `STCH` | `"stch"` | smooth max of log losses | free |
| `MetricDriven` | `"metric_driven"` | validation metrics, each epoch | sum K (default rule) |
"""

from multiloss.weighting.base import Weighting
from multiloss.weighting.dwa import DWA
from multiloss.weighting.famo import FAMO
from multiloss.weighting.geometric_mean import GeometricMean
from multiloss.weighting.imtl_l import IMTLL
from multiloss.weighting.metric_driven import MetricDriven
from multiloss.weighting.rlw import RLW
from multiloss.weighting.scale_normalized import ScaleNormalized
from multiloss.weighting.static import Static
from multiloss.weighting.stch import STCH
from multiloss.weighting.uncertainty import Uncertainty

__all__ = [
    "Weighting",
    "Static",
    "Uncertainty",
    "IMTLL",
    "DWA",
    "RLW",
    "GeometricMean",
    "ScaleNormalized",
    "FAMO",
    "STCH",
    "MetricDriven",
]
