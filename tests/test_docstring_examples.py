"""Every example in a public docstring runs (on the backends it is for).

A block whose first line is `# not run` (a full benchmark, say) is skipped.
"""

import importlib
import inspect
import pkgutil
import re

import pytest

import multiloss
from conftest import BACKEND

FRAMEWORKS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _docstrings():
    for info in pkgutil.walk_packages(multiloss.__path__, "multiloss."):
        last = info.name.split(".")[-1]
        # An engine module of another backend does not import here.
        if last.startswith("_") or ".engine." in info.name and last in FRAMEWORKS and last != BACKEND:
            continue
        module = importlib.import_module(info.name)
        yield info.name, module.__doc__
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            yield f"{info.name}.{name}", obj.__doc__
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and callable(member):
                        yield f"{info.name}.{name}.{attr}", member.__doc__
    yield "multiloss", multiloss.__doc__


def _examples():
    examples = []
    for where, doc in _docstrings():
        for i, code in enumerate(BLOCK.findall(inspect.cleandoc(doc or ""))):
            if code.lstrip().startswith("# not run"):  # e.g. a full benchmark
                continue
            needs = {f for f in FRAMEWORKS if re.search(rf"\bimport {f}\b|engine\.{f}\b", code)}
            if needs and needs != {BACKEND}:
                continue
            examples.append(pytest.param(code, id=f"{where}[{i}]"))
    return examples


@pytest.mark.parametrize("code", _examples())
def test_docstring_example_runs(code, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    exec(compile(code, "<docstring example>", "exec"), {"__name__": "__example__"})
