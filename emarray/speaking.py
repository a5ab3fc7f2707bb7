"""Where the running job's values were given — keyword arguments, command-line options or a
recipe step's keys — so that a message advising a value names it as the user gave it."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

#: where the running job's values were given: "python" (keyword arguments), "cli" (options) or
#: "recipe" (a step's keys), and the step
_WHERE: ContextVar[tuple[str, str]] = ContextVar("emarray_where", default=("python", ""))


@contextlib.contextmanager
def speaking(where: str, step: str = "") -> Iterator[None]:
    """Within, messages name values as the user gave them ``where``: ``"cli"`` (options),
    ``"recipe"`` (the keys of ``step``) or ``"python"`` (keyword arguments, the default)."""
    token = _WHERE.set((where, step))
    try:
        yield
    finally:
        _WHERE.reset(token)


def current_step() -> str:
    """The recipe step whose values the running job has ("" outside a recipe)."""
    where, step = _WHERE.get()
    return step if where == "recipe" else ""


def given(name: str, value: str = "") -> str:
    """How the user gives parameter ``name`` (with ``value``; none for a flag) where the running
    job's values came from, for messages that advise one.

    >>> given("voxel_size", "z,y,x"), given("label_first")
    ('voxel_size=z,y,x', 'label_first=True')
    >>> with speaking("cli"):
    ...     given("voxel_size", "z,y,x"), given("label_first")
    ('--voxel-size z,y,x', '--label-first')
    >>> with speaking("recipe", "raw"):
    ...     given("voxel_size", "z,y,x")
    "voxel_size: z,y,x in step 'raw'"
    """
    where, step = _WHERE.get()
    if where == "cli":
        return "--" + name.replace("_", "-") + (f" {value}" if value else "")
    if where == "recipe":
        return f"{name}: {value or 'true'}" + (f" in step {step!r}" if step else "")
    return f"{name}={value or 'True'}"
