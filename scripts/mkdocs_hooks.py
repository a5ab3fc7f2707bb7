"""MkDocs hook: the command table, the operator reference, the Python API's operators and the
environment variables, made from the declarations."""
from __future__ import annotations

from typing import Any


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- emarray:" not in markdown:
        return markdown
    from emarray import environment
    from emarray.operator_commands import run_option_table
    from emarray.spec import operators, reference, table_row
    ops = operators()
    table = "\n".join(["| command | what it does |", "|---|---|"]
                      + [table_row(op, "") for op in ops.values()])
    ref = "\n\n".join(reference(op) for op in ops.values())
    python = "\n\n".join(f"::: {op.func.__module__}.{op.func.__name__}"
                           for op in ops.values() if op.func is not None)
    return (markdown.replace("<!-- emarray:commands -->", table)
            .replace("<!-- emarray:reference -->", ref)
            .replace("<!-- emarray:python -->", python)
            .replace("<!-- emarray:run-options -->", run_option_table())
            .replace("<!-- emarray:environment -->", environment.table()))


_ROLE = None


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Docstrings cross-reference with Sphinx roles (:func:`x`); show them as code."""
    import re
    global _ROLE
    if _ROLE is None:
        _ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj):\s*(<code>)~?")
    return _ROLE.sub(r"\1", html)
