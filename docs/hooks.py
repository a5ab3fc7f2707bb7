"""MkDocs hook: the command table and the operator reference, made from the declarations."""
from __future__ import annotations

from typing import Any


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- emarray:" not in markdown:
        return markdown
    from emarray.spec import operators, reference, table_row
    ops = operators()
    table = "\n".join(["| command | what it does |", "|---|---|"]
                      + [table_row(op) for op in ops.values()])
    ref = "\n\n".join(reference(op) for op in ops.values())
    return (markdown.replace("<!-- emarray:commands -->", table)
            .replace("<!-- emarray:reference -->", ref))
