"""Benchmark problems, by the name used on the command line.

Each name maps to one or more problem instances (variants): `toy2d` runs
the CAGrad and the Nash-MTL variants, `scales` the T = 2 and T = 10 ones.
"""

__all__ = ["FAMILIES", "QUICK", "names", "get"]

FAMILIES = ("toy2d", "scales", "multidigits", "multimnist", "qm9")
QUICK = ("toy2d", "scales", "multidigits")  # the demo's suite


def names():
    """The problem names, in the order of the full suite."""
    return list(FAMILIES)


def get(name):
    """The problem instances for a name (a list: one per variant)."""
    if name == "toy2d":
        from multiloss.bench.problems.toy2d import Toy2D

        return [Toy2D("cagrad"), Toy2D("nashmtl")]
    if name == "scales":
        from multiloss.bench.problems.scales import Scales

        return [Scales(2), Scales(10)]
    if name == "multidigits":
        from multiloss.bench.problems.multidigits import MultiDigits

        return [MultiDigits()]
    if name == "multimnist":
        from multiloss.bench.problems.multimnist import MultiMNIST

        return [MultiMNIST()]
    if name == "qm9":
        from multiloss.bench.problems.qm9 import QM9

        return [QM9()]
    raise ValueError(f"Unknown benchmark problem {name!r}; valid names: {names()}.")
