"""Store options are never written nor printed: the one place that hides their values.

A store option (``--storage-option KEY=VALUE``, a recipe's ``storage_options:``, a
``--set storage_options.KEY=VALUE``, or options given to :func:`emarray.storage.configure`) may
hold a credential. Every text emarray writes or prints that could carry one goes through here
first: the command line a lock records (:func:`command_line`), and any other text
(:func:`text`: lock holders, error lines, log records, warnings, a recipe's saved record and a
failed step's error), where each option's value shows as ``***``.

>>> command_line(["emarray", "--storage-option", "secret=abc123", "info", "s3://b/v.zarr"])
'emarray --storage-option secret=*** info s3://b/v.zarr'
>>> remember({"key": "AKIAEXAMPLE", "anon": False})
>>> text("signature of AKIAEXAMPLE does not match")
'signature of *** does not match'
"""
from __future__ import annotations

import html
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

HIDDEN = "***"
#: option values this short are hidden in command lines only (in free text they would hide
#: ordinary words: a value of ``lab`` or ``1``); numbers and true/false are never credentials
SHORTEST = 4
_VALUES: set[str] = set()
#: the flags whose next word (or ``=`` part) is ``KEY=VALUE`` with VALUE hidden
_OPTION = re.compile(r"(--storage-option(?:=|\s+))([^\s=]+)=(\S*)")
_SET = re.compile(r"(--set(?:=|\s+))(storage_options[^\s=]*)=(\S*)")
_RECIPE_KEY = "storage_options"


def remember(options: Mapping[str, Any] | None) -> None:
    """Hide every text value in ``options`` (nested mappings and lists included) from now on."""
    for value in _leaves(options or {}):
        if isinstance(value, str) and value:
            _VALUES.add(value)


def _leaves(value: Any) -> Iterable[Any]:
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def command_line(argv: Sequence[str] | None = None) -> str:
    """``argv`` (default: this process's) as one line, each store option's value hidden."""
    words = list(sys.argv if argv is None else argv)
    out = []
    for i, w in enumerate(words):
        before = words[i - 1] if i else ""
        if before == "--storage-option" or (before == "--set" and w.startswith(_RECIPE_KEY)):
            w = _hide_value(w)
        elif w.startswith("--storage-option=") or w.startswith(f"--set={_RECIPE_KEY}"):
            flag, _, rest = w.partition("=")
            w = f"{flag}={_hide_value(rest)}"
        out.append(w)
    return text(" ".join(out))


def _hide_value(assignment: str) -> str:
    key, sep, _ = assignment.partition("=")
    return f"{key}={HIDDEN}" if sep else assignment


def text(s: str) -> str:
    """``s`` with every remembered option value, and the value of every ``--storage-option
    KEY=VALUE`` and ``--set storage_options.KEY=VALUE`` in it, shown as ``***``; a value is
    also found JSON- or HTML-escaped (as a lock file or a report page holds it)."""
    s = _OPTION.sub(lambda m: f"{m.group(1)}{m.group(2)}={HIDDEN}", s)
    s = _SET.sub(lambda m: f"{m.group(1)}{m.group(2)}={HIDDEN}", s)
    for value in sorted(_VALUES, key=len, reverse=True):  # a value inside another: longest first
        if len(value) < SHORTEST:
            continue
        for form in {value, json.dumps(value)[1:-1], html.escape(value)}:
            if form in s:
                s = s.replace(form, HIDDEN)
    return s


class Filter(logging.Filter):
    """A logging filter that hides option values in each record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = text(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


def hide_in_logs(handlers: Iterable[logging.Handler] = ()) -> None:
    """Put :class:`Filter` on emarray's logger and on ``handlers`` (the root's, which other
    libraries' records reach), once each."""
    for target in (logging.getLogger("emarray"), *handlers):
        if not any(isinstance(f, Filter) for f in target.filters):
            target.addFilter(Filter())


hide_in_logs()
