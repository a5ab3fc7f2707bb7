"""Every module's docstring examples run and give what they show: the modules are found by
walking the package, not listed by hand; every declared operator has an example."""
from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import emarray
from emarray.spec import operators

MODULES = sorted(m.name for m in pkgutil.walk_packages(emarray.__path__, "emarray.")
                 if not m.name.endswith("__main__"))


def test_the_walk_finds_the_package():
    assert len(MODULES) > 60 and "emarray.ops.smooth" in MODULES and "emarray.engine.contract" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


@pytest.mark.parametrize("name", sorted(operators()))
def test_every_operator_has_a_running_example(name):
    """Its function's docstring has an example that test_docstring_examples runs (its module's
    doctests find it; running it here again cost 20 s a suite)."""
    op = operators()[name]
    assert ">>> " in (op.call.__doc__ or ""), name
    mod = importlib.import_module(op.call.__module__)
    assert mod.__name__ in MODULES
    found = [t.name for t in doctest.DocTestFinder().find(mod) if t.examples]
    assert f"{mod.__name__}.{op.call.__name__}" in found, found


def test_look_calls_reduction_a_factor_as_mesh_declares_it():
    from pathlib import Path
    look = (Path(__file__).resolve().parents[1] / "docs" / "look.md").read_text()
    said = look.split("`--reduction", 1)[1].split(")", 1)[0]
    assert "factor" in said and "fraction" not in said and "1/F" in said
    assert "1/reduction" in operators()["mesh"].param("reduction").help


def test_the_python_api_page_lists_every_operator_from_the_registry():
    """docs/python.md is made from the declarations: every operator's function appears, so one
    added later needs no edit there (and none is listed by hand)."""
    import importlib.util

    from emarray.spec import operators
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("hooks", root / "scripts" / "mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (root / "docs" / "python.md").read_text()
    assert "::: emarray.ops." not in page  # nothing by hand
    made = hooks.on_page_markdown(page, None, None, None)
    for name, op in operators().items():
        assert f"::: {op.func.__module__}.{name}\n" in made + "\n", name
