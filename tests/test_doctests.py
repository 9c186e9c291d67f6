"""The `Examples:` sections of the library's docstrings run and print what they show, and every
public function of pcjax, pcjax.ranking, pcjax.losses and pcjax.metrics has one."""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import pcjax

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(pcjax.__path__, "pcjax.")
    # Entry points run their command line when imported; the compiled solver is a plain shared
    # library (loaded with ctypes), not a Python module.
    if not info.name.endswith(("__main__", "._soft_op"))
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


@pytest.mark.parametrize("name", ["pcjax", "pcjax.ranking", "pcjax.losses", "pcjax.metrics"])
def test_every_public_function_has_examples(name):
    module = importlib.import_module(name)
    public = getattr(module, "__all__", [n for n in dir(module) if not n.startswith("_")])
    functions = [n for n in public
                 if inspect.isfunction(getattr(module, n, None))
                 and getattr(module, n).__module__.startswith("pcjax")]
    assert functions, name
    missing = [n for n in functions if "Examples:" not in (getattr(module, n).__doc__ or "")]
    assert not missing, f"{name}: no Examples section in {missing}"
