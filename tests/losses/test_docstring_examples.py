"""The `Examples:` of the public losses' docstrings run and print what they say."""

import doctest
import importlib
import inspect

import pytest

import jaxseg.losses

PUBLIC = [getattr(jaxseg.losses, name) for name in jaxseg.losses.__all__]
MODULES = sorted({obj.__module__ for obj in PUBLIC if inspect.isfunction(obj)})


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = doctest.DocTestFinder().find(module, module_name)
    for test in tests:
        runner.run(test)
    assert sum(len(test.examples) for test in tests) > 0, f"{module_name} has no docstring examples"
    assert runner.failures == 0, f"{runner.failures} failing docstring examples in {module_name}"
