"""Rewrite the README's command table from the operators' declarations (emarray.spec).

    python scripts/update_readme.py          # a test fails while the table is stale
"""
from __future__ import annotations

from pathlib import Path

from emarray.spec import update_readme

if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "README.md"
    print(f"{target}: {'updated' if update_readme(str(target)) else 'already current'}")
