"""YAML files a user writes (training configs, pipeline recipes): read one, change a key."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError


def read_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (``what`` names it in errors: "training config").

    >>> read_mapping("/no/such.yaml", "pipeline recipe")
    Traceback (most recent call last):
    ...
    emarray.errors.InvalidArgumentError: no pipeline recipe at '/no/such.yaml'
    """
    import yaml
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError(f"no {what} at {os.fspath(path)!r}")
    try:
        given = yaml.load(p.read_text(), Loader=_unique_keys_loader()) or {}
    except _DuplicateKey as exc:
        raise InvalidArgumentError(f"{os.fspath(path)}: {exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidArgumentError(f"{os.fspath(path)} is not valid YAML: "
                                   f"{str(exc).splitlines()[0]}") from None
    if not isinstance(given, dict):
        raise InvalidArgumentError(f"{os.fspath(path)} must hold a mapping of keys, not "
                                   f"{type(given).__name__}")
    return given


class _DuplicateKey(Exception):
    pass


def _unique_keys_loader() -> Any:
    """PyYAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the
    last: two steps of one name would be one step, silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                line = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: PyYAML refuses it itself
                continue
            if line != key_node.start_mark.line:
                raise _DuplicateKey(f"the key {key!r} is given twice (lines {line + 1} and "
                                    f"{key_node.start_mark.line + 1}); give each key once")
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def split_assignment(assignment: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> ``(["a", "b"], 3)`` (the value read as YAML; a mapping or list only when
    written as one, in braces or brackets: ``40:50,:,:`` stays text).

    >>> split_assignment("validation.region=40:50,:,:")
    (['validation', 'region'], '40:50,:,:')
    """
    import yaml
    if "=" not in assignment:
        raise InvalidArgumentError(f"--set takes KEY=VALUE, got {assignment!r}")
    key, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text  # not YAML: the text itself (a region such as 40:50,:,:)
    if isinstance(value, (dict, list)) and not text.lstrip().startswith(("{", "[")):
        value = text  # "40:50,:,:" is a region, not the mapping YAML reads in it
    return key.strip().split("."), value


def set_value(cfg: dict[str, Any], assignment: str) -> None:
    """Apply ``--set section.key=value`` (the value read as YAML).

    >>> cfg = {"a": {"b": 1}}
    >>> set_value(cfg, "a.b=0.5"); cfg
    {'a': {'b': 0.5}}
    """
    (*parents, leaf), value = split_assignment(assignment)
    d = cfg
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise InvalidArgumentError(f"--set {assignment.split('=')[0]}: {p!r} is not a section")
    d[leaf] = value
