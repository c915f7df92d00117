"""Loss-level balancers: weights computed from the task loss values.

Each costs one backward pass, like plain training. Use one with
`model.compile(..., balancer=multiloss.weighting.X())` or its alias.
"""

from multiloss.weighting.base import Weighting
from multiloss.weighting.static import Static

__all__ = ["Weighting", "Static"]
