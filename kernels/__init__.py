"""CUDA C sources of emarray's kernels, shipped inside the wheel as ``emarray.kernels``."""
from __future__ import annotations

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
