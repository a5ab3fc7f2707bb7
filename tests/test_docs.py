"""Every public function's docstring example runs and gives what it shows."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["emarray.volume", "emarray.ops.threshold", "emarray.ops.rescale", "emarray.ops.sweep",
           "emarray.ingest", "emarray.export", "emarray.info", "emarray.datasets",
           "emarray._normalize", "emarray.engine.memory", "emarray.sources",
           "emarray.ops.label", "emarray.ops.objects", "emarray.ops.predict", "emarray.models",
           "emarray.training.config", "emarray._yaml", "emarray.engine.slurm",
           "emarray.engine.options", "emarray.pipeline.execute"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name != "emarray.sources":
        assert result.attempted > 0
